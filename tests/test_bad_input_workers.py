"""Bad input ends a command with one line naming the file, DataLoader workers on too.

Torch rebuilds a worker's exception as `type(message)`: `DataError(path, problem)` cannot be built so,
and used to reach the user as a RuntimeError holding the worker's traceback. The trainer now carries
user-data errors out of the workers itself (`worldtune.train.loader.CarriedError`).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, subprocess_env
from episode_fixtures import write_dataset
from worldtune.cli import _guarded, main
from worldtune.data.cache import CachedDataset, CacheMissError, LatentCache, build_cache
from worldtune.data.errors import DataError
from worldtune.data.formats.episode_files import BadEpisode
from worldtune.data.formats.episode_index import ManifestError
from worldtune.data.formats.sim_physics_files import BadScene
from worldtune.data.formats.vace_e_files import BadRecording as VaceEBadRecording
from worldtune.data.video import VideoError
from worldtune.systems.ctrl_world.convert_recording import BadRecording
from worldtune.systems.ctrl_world.dataset import BadCtrlWorldSample
from worldtune.systems.lam.latent_h5_manifest import LatentDataError

# The LAM at CPU size (as in test_lam.py): 16x16 latents.
LAM_SMALL = ["model.latent_size=16", "model.adapter_patch=4", "model.patch_dim=32", "model.embed_dim=64",
             "model.num_heads=4", "model.encoder_depth=2", "model.decoder_depth=2", "model.codebook_dim=16"]
WORKER_NOISE = ("Traceback", "Original Traceback", "DataLoader worker", "Caught ")


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """`worldtune.cli.main(argv)` in a fresh process, so that everything it prints can be checked."""
    code = "import sys; from worldtune.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    """Exit code 1, the last stderr line starts with `prefix`, and no traceback anywhere."""
    assert result.returncode == 1, result.stderr[-3000:]
    for noise in WORKER_NOISE:
        assert noise not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("worldtune: ")] == [last]
    return last


# ------------------------------------------------------------------------------- the error class


@pytest.mark.parametrize("error", [
    DataError("/data/a.h5", "chunks 0-1 contain NaN"),
    LatentDataError("/data/a.h5", "chunks 0-1 contain NaN"),
    BadEpisode("/data/episodes/ep_0001", "cannot decode video.mp4"),
    BadRecording("/raw/rec_3.hdf5", "missing observation key 'qpos'"),
    BadCtrlWorldSample("ep_7", "/meta/ep_7.json", "annotation file not found"),
    VideoError("/data/episodes/ep_0001/video.mp4: cannot open as a video (bad: data)"),
    ManifestError("/data/manifest.json: malformed JSON (line 1)"),
    VaceEBadRecording("/d/task/episode_0/episode_0_hand_trajectories.hdf5", "no 'right_wrist' group"),
    BadScene("/scenes/test_ball/env_0/0/0/distance_to_camera", "every depth value of the clip is invalid"),
], ids=lambda e: f"{type(e).__module__.rsplit('.', 1)[-1]}.{type(e).__name__}")
def test_every_data_error_names_the_file_and_survives_pickling(error):
    error.add_note("a note")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and isinstance(copy, DataError) and isinstance(copy, ValueError)
    assert str(copy) == str(error) == f"{error.path}: {error.problem}"
    assert (copy.path, copy.problem, copy.__notes__) == (error.path, error.problem, ["a note"])
    assert getattr(copy, "episode", None) == getattr(error, "episode", None)


def test_message_form_errors_split_path_and_problem():
    error = VideoError("/v/video.mp4: cannot decode (x: y)")
    assert (error.path, error.problem) == (Path("/v/video.mp4"), "cannot decode (x: y)")
    assert BadEpisode("/d/episodes/ep_3", "missing actions.npy").episode == "ep_3"


# ------------------------------------------------------------------------------- workers on


def _write_latents(path: Path, chunks: int = 4, nan: bool = False) -> None:
    latents = np.random.default_rng(len(path.name)).normal(size=(chunks, 16, 2, 16, 16)).astype(np.float32)
    if nan:
        latents[:] = np.nan
    with h5py.File(path, "w") as f:
        f.create_dataset("latents", data=latents)


def test_lam_training_with_workers_names_the_nan_file(tmp_path):
    data = tmp_path / "latents"
    data.mkdir()
    for i in range(4):
        _write_latents(data / f"clip_{i}.h5")
    assert main(["prepare", "lam-manifest", str(data), "--train_ratio", "1", "--val_ratio", "0",
                 "--test_ratio", "0"]) == 0
    _write_latents(data / "clip_2.h5", nan=True)  # after the manifest checked it: only reading finds out
    result = run_cli("train", str(REPO / "configs/lam/train.yaml"), f"data.data_dir={data}",
                     f"output_dir={tmp_path / 'run'}", "data.sequence_length=4", "train.num_workers=2",
                     "train.batch_size=2", "train.num_epochs=2", "log.wandb_project=null", "log.tensorboard=false",
                     "log.progress_bar=false", "validation.every_epochs=0", *LAM_SMALL)
    line = assert_one_error_line(result, f"worldtune: error: {data / 'clip_2.h5'}: ")
    assert line.endswith("of dataset 'latents' contain NaN or inf values")


def test_vidar_training_with_workers_names_the_truncated_video(tmp_path):
    data = tmp_path / "episodes_data"
    write_dataset(data, n_episodes=3, num_frames=20, fps=10, size=(64, 64))
    assert main(["prepare", "manifest", str(data)]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    train_episodes = [e["name"] for e in manifest["episodes"] if e["split"] == "train"]
    for name in train_episodes:  # cut after the manifest recorded them: only decoding finds out
        video = data / "episodes" / name / "video.mp4"
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    result = run_cli("train", str(REPO / "configs/vidar/tiny.yaml"), f"data.data_dir={data}",
                     f"output_dir={tmp_path / 'run'}", "train.num_workers=2", "validation.every_steps=0",
                     "log.progress_bar=false")
    line = assert_one_error_line(result, f"worldtune: error: {data / 'episodes'}/ep_")
    assert any(line.startswith(f"worldtune: error: {data / 'episodes' / name}: cannot decode video.mp4 (")
               for name in train_episodes), line


# ------------------------------------------------------------------------------- other user errors


class _Clips:
    """A KeyedSource whose keys hash its settings, like EpisodeClipDataset."""

    def __init__(self, height: int) -> None:
        self.height = height

    def __len__(self) -> int:
        return 2

    def clip_settings(self) -> dict:
        return {"height": self.height, "fps": 10.0}

    def clip_key(self, index: int) -> str:
        return f"clip{index}@{self.height}"


def test_cache_miss_names_the_setting_that_changed(tmp_path):
    built = _Clips(height=32)
    keys = [built.clip_key(i) for i in range(len(built))]
    build_cache(tmp_path, keys, lambda idx: [{"x": torch.zeros(1)} for _ in idx], {"vae": "tiny"},
                item_settings=built.clip_settings(), progress=False)
    with pytest.raises(CacheMissError, match=r"2 of 2 items .*data settings differ from those the cache was "
                                             r"built with \(height: cached 32 != 64\)"):
        CachedDataset(_Clips(height=64), LatentCache(tmp_path, {"vae": "tiny"}))


def test_stale_cache_is_one_line(tmp_path, capsys):
    build_cache(tmp_path, ["a"], lambda idx: [{"x": torch.zeros(1)}], {"vae": "tiny", "dtype": "fp32"},
                progress=False)
    capsys.readouterr()

    def open_stale() -> None:
        LatentCache(tmp_path, {"vae": "tiny", "dtype": "bf16"})

    assert _guarded(open_stale) == 1
    err = capsys.readouterr().err
    assert err == (f"worldtune: error: stale latent cache {tmp_path}: settings differ (dtype: cached 'fp32' != "
                   f"'bf16'); delete the directory and rebuild it with `worldtune prepare cache CONFIG`\n")
    def read_missing_item() -> None:
        LatentCache(tmp_path).get("not there")

    assert _guarded(read_missing_item) == 1
    err = capsys.readouterr().err  # one line, without the quotes a KeyError would add
    assert err.startswith(f"worldtune: error: item 'not there' is not in the latent cache {tmp_path}: ")
    assert err.count("\n") == 1


def test_vidar_training_on_a_cache_of_other_settings_is_one_line(tmp_path):
    data = tmp_path / "episodes_data"
    write_dataset(data, n_episodes=2, num_frames=12, fps=10, size=(32, 32))
    assert main(["prepare", "manifest", str(data)]) == 0
    tiny = str(REPO / "configs/vidar/tiny.yaml")
    cache = tmp_path / "cache"
    assert main(["prepare", "cache", tiny, f"data.data_dir={data}", f"data.cache_dir={cache}", "data.height=32",
                 "data.width=32"]) == 0
    result = run_cli("train", tiny, f"data.data_dir={data}", f"data.cache_dir={cache}",
                     f"output_dir={tmp_path / 'run'}", "model.encoder_dtype=bf16")
    line = assert_one_error_line(result, f"worldtune: error: stale latent cache {cache}: settings differ (")
    assert "encoder_dtype: cached 'fp32' != 'bf16'" in line


def test_missing_local_model_folder_is_one_line(tmp_path):
    missing = tmp_path / "no_such_svd"
    result = run_cli("inspect", str(REPO / "configs/ctrl_world/flexiv.yaml"), f"model.svd_path={missing}")
    line = assert_one_error_line(result, "worldtune: error: ")
    assert f"{missing / 'unet'}: no config.json (model.svd_path must be an SVD folder" in line


def test_physics_training_with_workers_names_the_scene_without_valid_depth(tmp_path):
    from sim_physics_fixtures import write_scene

    scenes = tmp_path / "scenes"
    for i in range(3):
        write_scene(scenes, f"test_scene_{i}/env_0/0/0", frames=12, size=(64, 64))
    depth_dir = scenes / "test_scene_1/env_0/0/0/distance_to_camera"
    for path in depth_dir.glob("*.npy"):  # the scan checks folders and counts: only reading finds out
        np.save(path, np.full((64, 64), np.inf, np.float32))
    result = run_cli("train", str(REPO / "configs/physics/tiny.yaml"), f"data.dataset_base_path={scenes}",
                     f"output_dir={tmp_path / 'run'}", "train.num_workers=2", "train.batch_size=1",
                     "log.progress_bar=false", "validation.every_steps=0")
    line = assert_one_error_line(result, f"worldtune: error: {depth_dir}: ")
    assert line.endswith("every depth value of the clip is invalid (0, inf or NaN)")
