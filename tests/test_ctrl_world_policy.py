"""Policies in imagination: the world model as an environment, `eval ctrl-world --policy`, the demo
world's scripted policies in the real simulator, and the labelled comparison video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from worldtune.cli import main
from worldtune.data.toyenv import generate_dataset, replay, simulate_episode
from worldtune.data.video import probe_video
from worldtune.data.video_panels import comparison_panel
from worldtune.systems import load_config, train_run
from worldtune.systems.ctrl_world.dataset import load_episode
from worldtune.systems.ctrl_world.demo_policies import (
    ReachBlock,
    ReachNearby,
    ReachRandom,
    reached_block,
    reached_block_wrist,
    target_colour,
)
from worldtune.systems.ctrl_world.demo_simulator import (
    SimulatorSettings,
    gripper_over_block,
    run_in_simulator,
)
from worldtune.systems.ctrl_world.imagine import WorldModelEnv
from worldtune.systems.ctrl_world.policy_eval import load_callable
from worldtune.systems.ctrl_world.recipe import RECIPE

TINY = REPO / "configs" / "ctrl_world" / "tiny.yaml"
CAMERAS = ["cam_high", "cam_left_wrist"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A converted 16 px toy dataset and a run trained for two steps (the mechanics, not the quality)."""
    root = tmp_path_factory.mktemp("imagine")
    generate_dataset(root / "raw", 4, seed=0, image_size=16, num_steps=24, cameras=CAMERAS, show_progress=False)
    assert main(["prepare", "ctrl-world", "--input_dir", str(root / "raw"), "--output_dir", str(root / "data"),
                 "--latent_space", "space_to_depth", "--factor", "4", "--height", "16", "--width", "16",
                 "--cameras", *CAMERAS, "--dataset_name", "sim", "--num_history", "1", "--num_frames", "3",
                 "--val_ratio", "0.5", "--no_progress"]) == 0
    train_run(load_config(TINY, [f"data.dataset_root={root / 'data'}", f"output_dir={root / 'run'}",
                                 "data.num_history=1", "train.max_steps=2", "train.batch_size=2",
                                 "checkpoint.every_steps=2", "model.num_inference_steps=2"]))
    return root / "run"


def _env(run: Path, seed: int = 0):
    from worldtune.train.run import load_run

    loaded = load_run(run, RECIPE)
    env = WorldModelEnv(loaded.model(), loaded.cfg, seed=seed, view_names=CAMERAS)
    episode = load_episode(loaded.cfg.data.dataset_root, 0, loaded.cfg.data.views, split="train")
    return env, episode


def test_world_model_env_steps_chunks_of_imagined_frames(run):
    env, episode = _env(run)
    observation = env.reset(episode, start=2)
    assert observation.frames.shape == (2, 16, 16, 3) and observation.frames.dtype == np.uint8
    assert observation.rows_per_chunk == 2 and observation.step == 0 and observation.views == CAMERAS
    np.testing.assert_allclose(observation.state, episode.states[2])
    rows = np.repeat(observation.state[None], 2, axis=0)
    for chunk in range(3):
        observation = env.step(rows + 0.01 * chunk)
    imagined = env.record()
    assert imagined.frames.shape == (7, 2, 16, 16, 3) and imagined.chunk_starts == [1, 3, 5]
    assert observation.step == 6 and np.allclose(observation.state, rows[-1] + 0.02)
    np.testing.assert_array_equal(imagined.frames[0], env.reset(episode, 2).frames)  # the real start frame
    again, _ = _env(run)
    again.reset(episode, 2)
    for chunk in range(3):
        again.step(rows + 0.01 * chunk)
    np.testing.assert_array_equal(again.record().frames, imagined.frames)  # the same seed, the same frames
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        env.step(rows[:1])
    with pytest.raises(ValueError, match="start 0 needs 1 history frames"):
        env.reset(episode, start=0)


def test_eval_policy_cli_writes_videos_and_success_rate(run, tmp_path, capsys):
    policy_file = tmp_path / "my_policy.py"
    policy_file.write_text("import numpy as np\n"
                           "def stay(observation):\n"
                           "    return np.repeat(observation.state[None], observation.rows_per_chunk, axis=0)\n"
                           "def always(episode):\n    return True\n")
    argv = ["eval", "ctrl-world", str(run), "--policy", f"{policy_file}:stay", "--success", f"{policy_file}:always",
            "--episodes", "1", "--starts", "2", "--chunks", "2", "--videos", str(tmp_path / "videos"),
            "--json", str(tmp_path / "policy.json")]
    assert main(argv) == 0
    assert "imagined success rate 1.000" in capsys.readouterr().out
    report = json.loads((tmp_path / "policy.json").read_text())
    assert report["imagined_episodes"] == 2 and report["frames_per_episode"] == 5 and report["success_rate"] == 1.0
    for row in report["episodes"]:
        info = probe_video(row["video"])
        assert info.num_frames == 5 and (info.width, info.height) == (2 * 16 * 4, 16 * 4)  # views side by side, x4
    # The built-in demo policies run on any run with these cameras.
    assert main(["eval", "ctrl-world", str(run), "--episodes", "1", "--chunks", "1", "--videos", str(tmp_path / "v2"),
                 "--policy", "worldtune.systems.ctrl_world.demo_policies:ReachBlock",
                 "--success", "worldtune.systems.ctrl_world.demo_policies:reached_block"]) == 0


def test_policy_specs_are_checked(tmp_path, capsys):
    assert load_callable("worldtune.systems.ctrl_world.demo_policies:ReachBlock") is ReachBlock
    with pytest.raises(ValueError, match="expected module:callable"):
        load_callable("no_colon_here")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_callable("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        load_callable("worldtune.systems.ctrl_world.demo_policies:Nope")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_callable(f"{tmp_path / 'missing.py'}:f")
    assert main(["eval", "ctrl-world", str(tmp_path), "--success", "x:y"]) != 0
    assert "--success needs --policy" in capsys.readouterr().err


def test_demo_policies_in_the_simulator_rank_and_are_judged_from_frames():
    """ReachBlock gets there, ReachNearby sometimes, ReachRandom not; both success tests on frames (the
    fixed camera's, which imagined frames are judged by, and the wrist camera's) agree with the
    simulator's state."""
    settings = SimulatorSettings(image_size=64, supersample=1)
    rates, agree_fixed, agree_wrist = {}, [], []
    for policy in (ReachBlock, ReachNearby, ReachRandom):
        states = []
        for index in range(6):
            annotation = {"source": f"episode_{index}.hdf5", "texts": [""], "episode_id": index}
            frames, sim = run_in_simulator(policy, annotation, start=5, chunks=6, rows_per_chunk=2, settings=settings)
            state = gripper_over_block(sim, target_colour("", frames.frames[0][0]))
            agree_fixed.append(reached_block(frames) == state)
            agree_wrist.append(reached_block_wrist(frames) == state)
            states.append(state)
        rates[policy.__name__] = np.mean(states)
    assert np.mean(agree_wrist) >= 0.9 and np.mean(agree_fixed) >= 0.75
    assert rates["ReachBlock"] >= 0.8 and rates["ReachRandom"] <= 0.2
    assert rates["ReachBlock"] > rates["ReachNearby"] > rates["ReachRandom"]


def test_replay_reaches_the_recorded_state():
    episode = simulate_episode((0, 2), num_steps=12, image_size=16, cameras=CAMERAS)
    env = replay((0, 2), 9, 16, CAMERAS)
    np.testing.assert_allclose(env.qpos, episode.qpos[9], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(env.render()["cam_high"], episode.frames["cam_high"][9])


def test_comparison_panel_layout_and_difference():
    truth = [torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8)]
    prediction = [torch.zeros(3, 4, 8, 8), torch.full((3, 4, 8, 8), 0.5)]
    panel = comparison_panel(truth, prediction, ["cam_high", "cam_left_wrist"], [0, 2], upscale=2, diff_gain=4)
    assert panel.shape[0] == 4 and panel.dtype == np.uint8 and panel.shape[2] > 3 * 16
    differences = panel[1, 14:, -16:]  # the |difference| column of the bottom row (last 16 px wide)
    assert differences.max() == 255  # 0.5 off in [-1, 1], times 4, saturates to white
    assert not np.array_equal(panel[0], panel[1])  # chunk starts are marked and frames counted
    with pytest.raises(ValueError, match="one name per view"):
        comparison_panel(truth, prediction, ["only one"])
