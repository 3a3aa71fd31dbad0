"""The demo's policies in the real simulator, from the same held-out starts as in imagination.

A converted demo episode records its source file (`episode_<i>.hdf5`, simulated with seed
`(dataset_seed, i)`), and frame k of it is simulator step `k * fps_downsample`. `toyenv.replay`
brings the simulator to that step; the policy then drives it chunk by chunk, each of its rows the
target of `fps_downsample` simulator steps, and sees rendered frames at the dataset's size. The
result is an `ImaginedEpisode` of real frames, so the same success test judges both.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldtune.data.toyenv import replay
from worldtune.data.toyenv_world import POSE_DIM
from worldtune.systems.ctrl_world.imagine import ImaginedEpisode, Observation, start_policy


@dataclass
class SimulatorSettings:
    """How the demo simulated and converted its episodes (`run_demo`'s arguments)."""

    image_size: int = 16
    cameras: list[str] = field(default_factory=lambda: ["cam_high", "cam_left_wrist"])
    fps_downsample: int = 3
    supersample: int = 4
    table: str = "gradient"
    rotation: float = 0.0
    num_objects: int | None = None
    dataset_seed: int = 0


def source_index(annotation: dict[str, Any]) -> int:
    """The simulated episode's index from a converted annotation's `source` (`episode_<i>.hdf5`)."""
    match = re.fullmatch(r"episode_(\d+)\.hdf5", str(annotation.get("source", "")))
    if match is None:
        raise ValueError(f"annotation source {annotation.get('source')!r} is not a simulated episode_<i>.hdf5")
    return int(match.group(1))


def _observation(env, settings: SimulatorSettings, instruction: str, step: int, rows: int) -> Observation:
    frames = env.render()
    return Observation(np.stack([frames[c] for c in settings.cameras]), env.qpos.astype(np.float64),
                       instruction, step, list(settings.cameras), rows)


def run_in_simulator(policy: Any, annotation: dict[str, Any], start: int, chunks: int, rows_per_chunk: int,
                     settings: SimulatorSettings, instruction: str | None = None) -> tuple[ImaginedEpisode, Any]:
    """Run `policy` (a callable or a class, as in `policy_eval`) in the simulator from frame `start` of
    a converted episode; returns its frames as an `ImaginedEpisode` and the simulator at the end."""
    index = source_index(annotation)
    env = replay((settings.dataset_seed, index), start * settings.fps_downsample, settings.image_size,
                 settings.cameras, num_objects=settings.num_objects, rotation=settings.rotation,
                 supersample=settings.supersample, table=settings.table)
    text = instruction if instruction is not None else (annotation.get("texts") or [""])[0]
    observation = _observation(env, settings, text, 0, rows_per_chunk)
    agent = start_policy(policy, observation)
    frames, states, chunk_starts = [observation.frames], [observation.state], []
    for _ in range(chunks):
        rows = np.asarray(agent(observation), dtype=np.float64)
        if rows.shape != (rows_per_chunk, POSE_DIM):
            raise ValueError(f"the policy must return ({rows_per_chunk}, {POSE_DIM}) rows, got {rows.shape}")
        chunk_starts.append(len(frames))
        for row in rows:
            for _ in range(settings.fps_downsample):
                env.step(row)
            observation = _observation(env, settings, text, len(frames), rows_per_chunk)
            frames.append(observation.frames)
            states.append(observation.state)
    episode = ImaginedEpisode(np.stack(frames), np.stack(states), text, list(settings.cameras),
                              annotation.get("episode_id"), start, chunk_starts)
    return episode, env


def gripper_over_block(env, colour: str) -> bool:
    """The simulator's own answer: is the gripper's centre over the block of `colour`?"""
    tcp = env.qpos[:2]
    return any(b.name == colour and np.abs(tcp - b.xy).max() < b.half for b in env.world.blocks)


def rank_policies(run_dir: str | Path, policies: dict[str, Any], success: Any, settings: SimulatorSettings, *,
                  episodes: int = 8, starts: int = 2, chunks: int = 6, split: str = "val",
                  video_dir: Path | None = None) -> dict[str, Any]:
    """Each policy's success rate in imagination and in the simulator, from the same held-out starts
    (`starts` per episode, spread over its first half), judged by the same `success` on frames; the
    simulator's own state-based answer (`gripper_over_block`) is reported beside it."""
    from worldtune.systems.ctrl_world.dataset import load_episode
    from worldtune.systems.ctrl_world.demo_policies import FIXED_VIEW, target_colour
    from worldtune.systems.ctrl_world.evaluate import split_episode_ids
    from worldtune.systems.ctrl_world.imagine import WorldModelEnv
    from worldtune.systems.ctrl_world.policy_eval import run_episode, write_imagined_video
    from worldtune.systems.ctrl_world.recipe import RECIPE
    from worldtune.train.run import load_run

    run = load_run(run_dir, RECIPE)
    cfg = run.cfg
    env = WorldModelEnv(run.model(), cfg, view_names=list(settings.cameras))
    report: dict[str, Any] = {"episodes": 0, "chunks": chunks, "frames": 1 + chunks * env.rows_per_chunk}
    rows: dict[str, dict[str, list[float]]] = {name: {"imagined": [], "real": [], "real_state": []}
                                               for name in policies}
    imagining_s, imagined_count = 0.0, 0
    for episode_id in split_episode_ids(cfg, split)[:episodes]:
        episode = load_episode(cfg.data.dataset_root, episode_id, cfg.data.views, cfg.data.layout, split=split)
        for start in np.linspace(0, (len(episode.latents) - 1) // 2, starts).round().astype(int).tolist():
            report["episodes"] += 1
            for name, policy in policies.items():
                clock = time.perf_counter()
                imagined = run_episode(env, policy, episode, start, chunks)
                imagining_s += time.perf_counter() - clock
                imagined_count += 1
                real, sim = run_in_simulator(policy, episode.annotation, start, chunks, env.rows_per_chunk, settings)
                colour = target_colour(real.instruction, real.frames[0][real.views.index(FIXED_VIEW)])
                rows[name]["imagined"].append(float(success(imagined)))
                rows[name]["real"].append(float(success(real)))
                rows[name]["real_state"].append(float(gripper_over_block(sim, colour)))
                if video_dir is not None and report["episodes"] == 1:
                    write_imagined_video(video_dir / f"{name}_imagined.mp4", imagined, 4, 2)
                    write_imagined_video(video_dir / f"{name}_real.mp4", real, 4, 2)
    report["success"] = {name: {k: float(np.mean(v)) for k, v in row.items()} for name, row in rows.items()}
    report["imagined_episodes_per_minute"] = round(imagined_count * 60 / max(imagining_s, 1e-9), 1)
    return report
