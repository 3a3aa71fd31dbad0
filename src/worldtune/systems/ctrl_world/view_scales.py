"""Per-view magnification of frame changes (`model.normalise_views` / `model.view_scales`).

A fixed camera over a still table changes by a few hundredths between frames; a wrist camera's whole
image moves. Trained on both at once, a residual model's loss is almost all the wrist view's, and its
output errors, of about the same size everywhere in its own space, swamp the fixed view's small
changes: it then predicts a hazy still background and loses to repeating the last frame (measured on
the demo: fixed camera 26.8 dB against 26.6 for repeating; with the changes of every view brought to
`sigma_data`, 29.7). The factors live in the model (`CtrlWorldModel.view_scales`), so every
checkpoint and export carries the ones it was trained with.
"""

from __future__ import annotations

import json

import numpy as np

from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
from worldtune.systems.ctrl_world.dataset import load_stats, meta_info_path
from worldtune.systems.ctrl_world.episode_files import load_episode
from worldtune.utils.logging import get_logger

log = get_logger()


def view_scales(cfg: CtrlWorldRunConfig) -> list[float] | None:
    """`model.view_scales`, else with `model.normalise_views` `sigma_data / latent_delta_rms` of each view
    in `data.views`; None when neither is set (the model keeps its own, ones for a new model)."""
    m, views = cfg.model, list(cfg.data.views)
    if m.view_scales:
        if len(m.view_scales) != len(views) or min(m.view_scales) <= 0:
            raise ValueError(f"model.view_scales: expected {len(views)} positive factors (one per data.views), "
                             f"got {m.view_scales}")
        scales = list(m.view_scales)
    elif m.normalise_views:
        scales = [m.sigma_data / max(rms, 1e-6) for rms in delta_rms(cfg)]
    else:
        return None
    if not m.residual:
        raise ValueError("model.normalise_views / model.view_scales scale frame changes: they need model.residual")
    return scales


def delta_rms(cfg: CtrlWorldRunConfig) -> list[float]:
    """RMS one-frame latent change of each view in `data.views`: stat.json's `latent_delta_rms` (the
    converter writes it), else measured on the train split's episodes."""
    meta = meta_info_path(cfg.data)
    stored = load_stats(meta).get("latent_delta_rms")
    views = list(cfg.data.views)
    if stored is not None:
        if max(views) >= len(stored):
            raise ValueError(f"{meta / 'stat.json'}: latent_delta_rms has {len(stored)} views, data.views is {views}")
        return [float(stored[v]) for v in views]
    log.info("%s has no latent_delta_rms (converted by an older worldtune): measuring it on the train episodes",
             meta / "stat.json")
    return measured_delta_rms(cfg)


def measured_delta_rms(cfg: CtrlWorldRunConfig, max_episodes: int = 64) -> list[float]:
    """RMS one-frame latent change of each view, over up to `max_episodes` train episodes."""
    samples = json.loads((meta_info_path(cfg.data) / "train_sample.json").read_text())
    ids = list(dict.fromkeys(s["episode_id"] for s in samples))[:max_episodes]
    if not ids:
        raise ValueError(f"{meta_info_path(cfg.data)}: no train episodes to measure latent changes on")
    sumsq, count = np.zeros(len(cfg.data.views)), np.zeros(len(cfg.data.views))
    for episode_id in ids:
        episode = load_episode(cfg.data.dataset_root, episode_id, cfg.data.views, cfg.data.layout, split="train")
        change = (episode.latents[1:] - episode.latents[:-1]).double()
        for v, part in enumerate(change.chunk(len(cfg.data.views), dim=2)):
            sumsq[v] += float(part.pow(2).sum())
            count[v] += part.numel()
    return np.sqrt(sumsq / np.maximum(count, 1)).tolist()
