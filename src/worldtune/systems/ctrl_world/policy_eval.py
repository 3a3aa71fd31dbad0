"""`worldtune eval ctrl-world RUN --policy module:callable [--success module:callable]`: a policy run
in imagination from held-out starts, its imagined rollouts written as mp4 and, given a success
function, its imagined success rate.

A policy is a callable `policy(observation) -> rows` (`imagine.Observation`, rows `[rows_per_chunk, A]`);
a class is instantiated once per episode, so it may keep state, and an object with `reset(observation)`
is reset at each episode's start. A success function is `success(episode) -> bool | float`
(`imagine.ImaginedEpisode`). `module:callable` names either, `path/to/file.py:callable` too.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from worldtune.systems.ctrl_world.dataset import load_episode
from worldtune.systems.ctrl_world.evaluate import split_episode_ids
from worldtune.systems.ctrl_world.imagine import ImaginedEpisode, WorldModelEnv, start_policy
from worldtune.systems.ctrl_world.recipe import RECIPE
from worldtune.train.run import load_run


def load_callable(spec: str) -> Any:
    """`package.module:name` or `path/to/file.py:name` -> the object; errors say what is missing."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{spec!r}: expected module:callable (e.g. mypolicies:Reach) or file.py:callable")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: policy file not found")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise ValueError(f"{spec!r}: cannot import {module_name!r} ({err})") from err
    if not hasattr(module, name):
        raise ValueError(f"{spec!r}: {module_name} has no {name!r}")
    target = getattr(module, name)
    if not callable(target):
        raise ValueError(f"{spec!r}: {name!r} is not callable")
    return target


def run_episode(env: WorldModelEnv, policy: Any, episode, start: int, chunks: int) -> ImaginedEpisode:
    """One imagined episode: `chunks` times policy -> world model."""
    observation = env.reset(episode, start)
    agent = start_policy(policy, observation)
    for _ in range(chunks):
        observation = env.step(agent(observation))
    return env.record()


def write_imagined_video(path: Path, imagined: ImaginedEpisode, fps: float, upscale: int) -> Path:
    """Views side by side, every pixel repeated `upscale` times each way."""
    from worldtune.data.video_write import write_video

    frames = np.concatenate(list(imagined.frames.transpose(1, 0, 2, 3, 4)), axis=2)  # [T, H, V*W, 3]
    frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return write_video(path, frames, fps=fps)


def evaluate_policy(run_dir: str | Path, policy: Any, *, success: Any = None, episodes: int = 8, chunks: int = 4,
                    split: str = "val", starts: int = 1, seed: int = 0, video_dir: str | Path | None = None,
                    upscale: int = 4, name: str | None = None) -> dict[str, Any]:
    """Run `policy` in imagination from `starts` frames of each of `episodes` episodes of `split`; returns
    the report (success rate when `success` is given) and writes one mp4 per imagined episode."""
    run = load_run(run_dir, RECIPE)
    cfg = run.cfg
    env = WorldModelEnv(run.model(), cfg, seed=seed)
    ids = split_episode_ids(cfg, split)[:episodes]
    if not ids:
        raise ValueError(f"{cfg.data.dataset_root}: no {split} episodes to start from")
    video_dir = Path(video_dir) if video_dir is not None else Path(run_dir) / "eval" / "imagined"
    results, clock = [], time.perf_counter()
    for episode_id in ids:
        episode = load_episode(cfg.data.dataset_root, episode_id, cfg.data.views, cfg.data.layout, split=split)
        first = cfg.data.num_history * cfg.data.history_stride
        for start in _starts(first, len(episode.latents), starts):
            imagined = run_episode(env, policy, episode, start, chunks)
            video = write_imagined_video(video_dir / f"episode_{episode_id}_start_{start}.mp4", imagined,
                                         cfg.validation.fps, upscale)
            row = {"episode_id": episode_id, "start": start, "video": str(video)}
            if success is not None:
                row["success"] = float(success(imagined))
            results.append(row)
    minutes = (time.perf_counter() - clock) / 60
    report: dict[str, Any] = {"split": split, "policy": name or _name(policy), "chunks": chunks,
                              "frames_per_episode": 1 + chunks * env.rows_per_chunk,
                              "imagined_episodes": len(results),
                              "imagined_episodes_per_minute": round(len(results) / max(minutes, 1e-9), 2)}
    if success is not None:
        report["success_rate"] = float(np.mean([r["success"] for r in results]))
    report["episodes"] = results
    return report


def _starts(first: int, length: int, count: int) -> list[int]:
    """`count` start frames spread over an episode (1: its first frame with a full history)."""
    if count <= 1:
        return [first]
    return sorted({int(round(x)) for x in np.linspace(first, length - 1, count)})


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def policy_table(report: dict[str, Any]) -> str:
    lines = [f"{report['split']} split: policy {report['policy']}, {report['imagined_episodes']} imagined episodes "
             f"of {report['chunks']} chunks ({report['imagined_episodes_per_minute']} episodes a minute)"]
    if "success_rate" in report:
        lines.append(f"imagined success rate {report['success_rate']:.3f}")
    videos = {str(Path(r["video"]).parent) for r in report["episodes"]}
    lines.append("videos: " + ", ".join(sorted(videos)))
    return "\n".join(lines)
