"""`worldtune generate vace-e`: a demonstration (an episode folder, or its files named one by one)
-> the generated video, from `vace_e.pt`, a run directory or a config.

`vace_e.pt` carries the run's config, so `--checkpoint vace_e.pt --base Wan2.1-VACE-1.3B` is
enough; the base (and the encoders) come from `model.ckpt_dir` unless `--base` / `--set` say.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worldtune.config import ConfigError, build_config, load_config, parse_overrides, read_yaml
from worldtune.data.formats.vace_e import VaceEDataset, VaceEEpisode, collate_vace_e, episode_videos
from worldtune.systems.vace_e.config import VaceERunConfig
from worldtune.systems.vace_e.recipe import RECIPE
from worldtune.train.recipe import Parts
from worldtune.utils.device import default_device
from worldtune.utils.weight_files import CheckpointError


@dataclass
class OpenedVaceE:
    cfg: VaceERunConfig
    parts: Parts
    device: torch.device


def export_weights_of(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(config YAML, weights under the model's names) from a `vace_e.pt` export."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(Path(path), f"cannot read ({err})") from err
    if not isinstance(payload, dict) or "vace_e_state_dict" not in payload or "config_yaml" not in payload:
        raise CheckpointError(Path(path), "not a VACE-E export (expected vace_e_state_dict and config_yaml)")
    weights = {f"vace_e.{k}": v for k, v in payload["vace_e_state_dict"].items()}
    weights.update(payload.get("dit_state_dict", {}))
    return payload["config_yaml"], weights


def open_vace_e(*, run: str | None = None, checkpoint: str | None = None, config: str | None = None,
                overrides: list[str] | None = None, device: torch.device | None = None) -> OpenedVaceE:
    """The model and encoders from a run directory, a `vace_e.pt` or a config file (plus overrides)."""
    from omegaconf import OmegaConf

    overrides = list(overrides or [])
    weights: Any = None
    if run:
        from worldtune.train.run import load_run

        loaded = load_run(run, RECIPE, overrides=overrides)
        cfg, weights = loaded.cfg, loaded.weights()
    elif checkpoint:
        text, weights = export_weights_of(checkpoint)
        tree = OmegaConf.merge(OmegaConf.create(text), parse_overrides(overrides))
        cfg = build_config(VaceERunConfig, tree, source=f"{checkpoint} (config_yaml)")
    elif config:
        tree = read_yaml(config)
        if str(tree.get("recipe", "vace_e")) != "vace_e":
            raise ConfigError(f"{config}: recipe is {tree.get('recipe')!r}, not vace_e")
        cfg = load_config(config, ["recipe=vace_e", *overrides], schema_of=lambda _: VaceERunConfig)
    else:
        raise ConfigError("generate vace-e: give --checkpoint vace_e.pt, --run RUN_DIR or --config FILE")
    device = device or default_device()
    parts = RECIPE.build_models(cfg, dit_weights=weights)
    parts.model.to(device).eval()
    for module in parts.frozen.values():
        module.to(device)
    return OpenedVaceE(cfg, parts, device)


def explicit_episode(args, cfg: VaceERunConfig) -> VaceEEpisode:
    """An episode from `--episode DIR`, with any of its files replaced by the explicit flags."""
    if args.episode:
        ep_dir = Path(args.episode)
        dataset = VaceEDataset(_with_fallback(cfg), episode_dirs=[ep_dir])
        ep = dataset.episodes[0]
    else:
        if not (args.control and args.mask):
            raise ConfigError("generate vace-e: give --episode DIR, or at least --control and --mask videos")
        ep = VaceEEpisode("", Path(args.control).parent, 0, None, None, None, Path(args.control),
                          Path(args.control), Path(args.mask))
    replace = {"hands": args.hand_motion, "objects": args.objects, "embodiment_image": args.embodiment_image,
               "control": args.control, "mask": args.mask}
    fields = {**ep.__dict__, **{k: Path(v) for k, v in replace.items() if v}}
    if not args.episode:
        fields["target"] = fields["control"]  # nothing to compare with: the control stands in
    fields["prompt"] = args.prompt if args.prompt is not None else ep.prompt
    for key in ("hands", "objects", "embodiment_image", "control", "mask"):
        if fields[key] is not None and not Path(fields[key]).is_file():
            raise FileNotFoundError(f"{fields[key]}: no such file (--{key})")
    return VaceEEpisode(**fields)


def _with_fallback(cfg: VaceERunConfig):
    import dataclasses

    return dataclasses.replace(cfg.data, fallback_to_video_only=True, dataset_base_path=".")


@torch.no_grad()
def generate(opened: OpenedVaceE, episode: VaceEEpisode, out: str | Path, seed: int = 0,
             progress: bool = True) -> Path:
    """The episode's video generated (first `data.num_frames` frames) and written as mp4."""
    from worldtune.data.video_write import write_video
    from worldtune.train.data import move_to_device

    cfg = opened.cfg
    if not episode.prompt and episode.task == "":
        episode = VaceEEpisode(**{**episode.__dict__, "prompt": "Robot manipulation task"})
    dataset = VaceEDataset.of_episodes(_with_fallback(cfg), [episode])
    if episode.dir.is_dir() and cfg.data.task_metadata_path:
        from worldtune.data.formats.vace_e_files import load_task_metadata

        dataset.metadata = load_task_metadata(cfg.data.task_metadata_path)
    batch = move_to_device(collate_vace_e([dataset[0]]), opened.device)
    parts = opened.parts
    with torch.autocast(opened.device.type, dtype=torch.bfloat16, enabled=opened.device.type == "cuda"):
        enc = RECIPE.encode(parts, batch)
        latents = RECIPE.generate(parts, enc, enc.condition, seed=seed, progress=progress)
    with RECIPE.encoders(parts, opened.device) as encoders:
        video = encoders["vae"].decode(latents.float())[0]
    return write_video(out, video.cpu(), fps=cfg.validation.fps)


__all__ = ["OpenedVaceE", "episode_videos", "explicit_episode", "export_weights_of", "generate", "open_vace_e"]
