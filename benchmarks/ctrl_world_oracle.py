"""How large can a world model's margin over "another episode's actions" be? A perfect model's, measured.

`eval ctrl-world` compares a model driven by the true actions with the same model driven by another
episode's actions. How far apart the two can be depends on the world: where the actions move only a
few pixels, even a perfect model gains little. This replays the pushing worlds' simulator
(`data/pushworld`, as `worldtune demo --world W` simulates and converts them) to each rollout start
and branches it: one branch follows the episode's own commands, the other the next episode's pose
changes applied to the current pose (what relative actions give the world model). Both branches are
rendered without camera noise (a perfect model predicts the mean over the noise) every
`fps_downsample`-th step, and compared with the recorded, noisy frames. Prints per view the PSNR of
repeating the last frame, of the perfect model with the true and with the other actions, and the
margins, over 2 and 4 chunks; the same starts and frames as `eval ctrl-world --starts 6`.

    .venv/bin/python benchmarks/ctrl_world_oracle.py --worlds textured,clutter

A world without camera noise checks the replay: its true branch must equal the recording exactly.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldtune.data.pushworld import PushEnv, simulate_push_episode
from worldtune.data.pushworld_render import to_uint8
from worldtune.eval.metrics import psnr

CAMERAS = ("cam_high", "cam_left_wrist")
RELATIVE_DIMS = slice(0, 6)  # the demo's relative_action_dims; the gripper stays absolute


def clean_frames(env: PushEnv) -> dict[str, np.ndarray]:
    """The current frame of every camera without sensor noise or flicker (the mean a model predicts)."""
    shapes = env.shapes()
    return {cam: to_uint8(env.renderer.render(cam, env.world.pusher, shapes), None, 0.0, 0.0) for cam in env.cameras}


def replay(seed: tuple[int, int], args: argparse.Namespace, commands: np.ndarray, steps: int) -> PushEnv:
    """The world of episode `seed` after its first `steps` commands."""
    env = PushEnv(seed, world=args.world, image_size=args.image_size, cameras=CAMERAS, supersample=args.supersample)
    for command in commands[:steps]:
        env.step(command.astype(np.float64))
    return env


def branch(env: PushEnv, targets: np.ndarray, every: int) -> list[dict[str, np.ndarray]]:
    """Step `env` through `targets` (absolute poses), keeping every `every`-th clean frame."""
    kept = []
    for step, target in enumerate(targets, start=1):
        env.step(target.astype(np.float64))
        if step % every == 0:
            kept.append(clean_frames(env))
    return kept


def as_video(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).float() / 127.5 - 1.0


def measure(args: argparse.Namespace, chunks: int) -> dict[str, list[float]]:
    every, frames_ahead = args.fps_downsample, 2 * chunks  # the demo's chunks add 2 frames each
    episodes = [simulate_push_episode((0, i), args.episode_steps, args.image_size, CAMERAS, world=args.world,
                                      supersample=args.supersample) for i in range(args.episodes)]
    kept = args.episode_steps // every
    starts = np.linspace(0, kept - 1 - frames_ahead, args.starts).round().astype(int)
    scores: dict[str, list[list[float]]] = {k: [[] for _ in CAMERAS] for k in ("repeat", "true", "other")}
    for i, episode in enumerate(episodes):
        other = episodes[(i + 1) % len(episodes)]
        for start in starts:
            s0 = start * every
            steps = frames_ahead * every
            truth = [{c: episode.frames[c][s0 + m * every] for c in CAMERAS} for m in range(1, frames_ahead + 1)]
            true_env = replay((0, i), args, episode.action, s0)
            other_env = true_env.copy()
            true_branch = branch(true_env, episode.action[s0 : s0 + steps], every)
            moved = other.qpos[s0 + 1 : s0 + steps + 1] - other.qpos[s0]
            targets = np.repeat(episode.qpos[s0][None], steps, axis=0)
            targets[:, RELATIVE_DIMS] += moved[:, RELATIVE_DIMS]
            targets[:, 6] = other.qpos[s0 + 1 : s0 + steps + 1, 6]
            other_branch = branch(other_env, targets, every)
            for v, cam in enumerate(CAMERAS):
                target = as_video([t[cam] for t in truth])
                if args.check_replay:
                    assert np.array_equal(np.stack([f[cam] for f in true_branch]), np.stack([t[cam] for t in truth]))
                scores["repeat"][v].append(psnr(as_video([episode.frames[cam][s0]] * frames_ahead), target))
                scores["true"][v].append(psnr(as_video([f[cam] for f in true_branch]), target))
                scores["other"][v].append(psnr(as_video([f[cam] for f in other_branch]), target))
    return {k: [float(np.mean(v)) for v in per_view] for k, per_view in scores.items()}


def views(values: list[float]) -> str:
    return " / ".join(f"{x:5.2f}" for x in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="textured,clutter")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--starts", type=int, default=6)
    parser.add_argument("--episode-steps", type=int, default=120)
    parser.add_argument("--fps-downsample", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--supersample", type=int, default=2)
    args = parser.parse_args()
    for world in args.worlds.split(","):
        args.world = world
        args.check_replay = world == "textured"  # no camera noise: the replay must be exact
        for chunks in (2, 4):
            r = measure(args, chunks)
            over_repeat = [t - p for t, p in zip(r["true"], r["repeat"], strict=True)]
            over_other = float(np.mean(r["true"]) - np.mean(r["other"]))
            print(f"{world:<9} {chunks} chunks (fixed / wrist)  repeat {views(r['repeat'])}  perfect, true actions "
                  f"{views(r['true'])}  perfect, other actions {views(r['other'])}  ->  over repeat "
                  f"{' / '.join(f'{m:+.2f}' for m in over_repeat)}, over other actions {over_other:+.2f}", flush=True)


if __name__ == "__main__":
    main()
