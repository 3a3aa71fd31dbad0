"""A policy in the loop of the world model: Ctrl-World as the policy's environment ("imagination").

`WorldModelEnv` is a gym-like environment whose frames come from the world model: `reset` starts from
a real frame of a recording (with its real history), `step(rows)` takes the policy's conditioning rows
for the next chunk and returns the imagined frames. A policy sees an `Observation` (the current frame
of every view as uint8, the current state, the instruction) and returns one row per new frame of the
chunk, in the data's raw units and `data.action_key` convention (`states`: the pose each new frame
should show; `actions`: the command after each frame). The world model predicts frames only, so the
state after `reset` is the policy's own last row, as a robot's commanded pose.

A policy server fits the same loop: wrap its client in a callable (or drive `WorldModelEnv` directly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldtune.models.encoders.latent_spaces import decode_frames, frames_to_uint8
from worldtune.systems.ctrl_world import world_edm
from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
from worldtune.systems.ctrl_world.dataset import (
    CtrlWorldEpisode,
    action_bounds,
    load_stats,
    meta_info_path,
    normalise_actions,
)
from worldtune.systems.ctrl_world.recipe import latent_space
from worldtune.systems.ctrl_world.rollout import fill_strided


@dataclass
class Observation:
    """What a policy sees at each chunk."""

    frames: np.ndarray  # uint8 [V, H, W, 3]: every view's current frame (real at reset, imagined after)
    state: np.ndarray  # [A] raw row of the current frame: recorded at reset, then the policy's last row
    instruction: str
    step: int  # frames since reset
    views: list[str]  # camera names (or view numbers) of `frames`
    rows_per_chunk: int  # how many rows `step` expects: one per new frame


@dataclass
class ImaginedEpisode:
    """A finished imagined episode: frame 0 is the real start frame."""

    frames: np.ndarray  # uint8 [T, V, H, W, 3]
    states: np.ndarray  # [T, A] raw rows (row 0: the recording's)
    instruction: str
    views: list[str]
    episode_id: Any
    start: int
    chunk_starts: list[int] = field(default_factory=list)  # frame index where each chunk's frames begin


def start_policy(policy: Any, observation: Observation) -> Any:
    """The agent for one episode: a class is instantiated (a fresh state per episode), and an object
    with `reset(observation)` is reset."""
    agent = policy() if isinstance(policy, type) else policy
    if hasattr(agent, "reset"):
        agent.reset(observation)
    return agent


class WorldModelEnv:
    """The world model as an environment (see the module docstring); `seed` fixes the sampler's noise;
    `view_names` (default: each episode's camera names) label the views of an `Observation`."""

    def __init__(self, model: torch.nn.Module, cfg: CtrlWorldRunConfig, *, seed: int = 0,
                 view_names: list[str] | None = None) -> None:
        self.model, self.cfg, self.seed = model, cfg, seed
        self.space = latent_space(cfg)
        meta = meta_info_path(cfg.data)
        self.bounds = action_bounds(load_stats(meta), cfg.data.action_key, meta / "stat.json")
        self._view_names = view_names  # None: the episode's camera names at each reset
        self.views = view_names or [f"view {v}" for v in cfg.data.views]
        d = cfg.data
        self.rows_per_chunk = (d.num_frames - 1) * max(d.frame_stride, 1)
        if self.rows_per_chunk < 1:
            raise ValueError("data.num_frames must be >= 2 for imagined rollouts (a chunk predicts no new frame)")
        self._latents: list[torch.Tensor] = []
        self._rows: list[np.ndarray] = []

    # ------------------------------------------------------------------------------------- episode

    def reset(self, episode: CtrlWorldEpisode, start: int, instruction: str | None = None) -> Observation:
        """Start at real frame `start` of `episode` (its history frames are real too)."""
        d = self.cfg.data
        if not d.num_history * d.history_stride <= start < len(episode.latents):
            raise ValueError(f"episode {episode.episode_id}: start {start} needs {d.num_history} history frames "
                             f"{d.history_stride} apart inside its {len(episode.latents)} frames")
        raw = episode.states if d.action_key == "states" else episode.actions
        if raw is None:
            raise ValueError(f"episode {episode.episode_id}: no {d.action_key!r} in its annotation")
        self.views = self._view_names or episode.views or self.views
        self._latents = list(episode.latents[: start + 1].float())
        self._rows = [np.asarray(r, dtype=np.float64) for r in raw[: start + 1]]
        self._instruction = instruction if instruction is not None else episode.text
        self._episode_id, self._start, self._chunk_starts = episode.episode_id, start, []
        self._generator = torch.Generator().manual_seed(self.seed)
        self._frames = [self._decode(self._latents[-1])]
        return self.observation()

    def step(self, rows: np.ndarray | torch.Tensor | list) -> Observation:
        """Imagine the next chunk from `rows` `[rows_per_chunk, A]` (raw units); returns the new observation."""
        rows = np.asarray(rows, dtype=np.float64)
        width = len(self.bounds[0])
        if rows.shape != (self.rows_per_chunk, width) or not np.isfinite(rows).all():
            raise ValueError(f"the policy must return finite rows of shape ({self.rows_per_chunk}, {width}), "
                             f"got {rows.shape}")
        self._rows.extend(rows)
        d = self.cfg.data
        now, stride = len(self._latents) - 1, max(d.frame_stride, 1)
        ids = [max(now - i * d.history_stride, 0) for i in range(d.num_history, 0, -1)]
        ids += [now + i * stride for i in range(d.num_frames)]
        history = torch.stack([self._latents[i] for i in ids[: d.num_history + 1]])[None]
        table = torch.as_tensor(normalise_actions(np.stack([self._rows[i] for i in ids]), *self.bounds),
                                dtype=torch.float32)[None]
        future = world_edm.sample(self.model, self.cfg.model, d.num_history, history, table,
                                  generator=self._generator)[0]
        self._chunk_starts.append(len(self._latents) - self._start)
        new = fill_strided(self._latents[-1], future[1:], stride)
        self._latents.extend(new)
        self._frames.extend(self._decode(z) for z in new)
        return self.observation()

    def observation(self) -> Observation:
        return Observation(self._frames[-1], self._rows[-1].copy(), self._instruction,
                           len(self._latents) - 1 - self._start, list(self.views), self.rows_per_chunk)

    def record(self) -> ImaginedEpisode:
        """The episode so far, from the real start frame."""
        return ImaginedEpisode(np.stack(self._frames), np.stack(self._rows[self._start:]), self._instruction,
                               list(self.views), self._episode_id, self._start, list(self._chunk_starts))

    def _decode(self, latent: torch.Tensor) -> np.ndarray:
        """One latent frame (views stacked along height) -> uint8 [V, H, W, 3]."""
        frame = frames_to_uint8(decode_frames(self.space, latent[None].cpu()))[0]
        return np.stack(np.split(frame, len(self.cfg.data.views), axis=0))
