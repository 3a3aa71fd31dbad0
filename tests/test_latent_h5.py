"""Latent H5 data for the VVAE latent action model: manifest, sequence loader, VAE encoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO
from worldtune.cli import main
from worldtune.data.video import load_clip
from worldtune.data.video_write import write_video
from worldtune.models.encoders.tiny import tiny_wan_vae
from worldtune.systems.lam.latent_h5 import (
    LatentDataError,
    LatentH5Config,
    LatentSequenceDataset,
    describe,
    prepare_lam_manifest,
    read_lam_manifest,
    write_lam_manifest,
)
from worldtune.systems.lam.vae_latents import OutputMismatchError, encode_videos_to_h5

# ------------------------------------------------------------------------------------------ helpers


def chunk_values(num_chunks: int, channels: int = 16, t: int = 2, hw: int = 8) -> np.ndarray:
    """Latents whose value is ``10 * chunk + latent frame``, so the read order can be checked exactly."""
    n = np.arange(num_chunks, dtype=np.float32).reshape(-1, 1, 1, 1, 1)
    f = np.arange(t, dtype=np.float32).reshape(1, 1, -1, 1, 1)
    return np.broadcast_to(10 * n + f, (num_chunks, channels, t, hw, hw)).copy()


def write_h5(path: Path, data: np.ndarray | None = None, name: str = "latents", **extra: np.ndarray) -> Path:
    """A latent file; ``data`` defaults to 6 chunks of ``[16, 2, 8, 8]``; ``extra`` adds datasets."""
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=chunk_values(6) if data is None else data)
        for key, value in extra.items():
            f.create_dataset(key, data=value)
    return path


def make_dir(root: Path, n: int = 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_h5(root / f"video_{i:02d}.h5")
    return root


def config(data_dir: Path, **kw) -> LatentH5Config:
    return LatentH5Config(data_dir=str(data_dir), **kw)


def expected_sequence(start: int, length: int) -> np.ndarray:
    """The latent frame values of a window starting at chunk ``start`` (2 latent frames per chunk)."""
    return np.array([10 * (start + j // 2) + j % 2 for j in range(length)], dtype=np.float32)


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_splits_every_file_once_reproducibly(tmp_path):
    root = make_dir(tmp_path / "d")
    path = write_lam_manifest(root)
    assert path == root / "manifest.json"
    first = json.loads(path.read_text())
    assert (len(first["train"]), len(first["val"]), len(first["test"])) == (8, 1, 1)
    assert first["seed"] == 42 and first["ratios"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    listed = first["train"] + first["val"] + first["test"]
    assert sorted(listed) == sorted(p.name for p in root.glob("*.h5"))  # each once, relative names
    mtime = path.stat().st_mtime_ns
    assert not prepare_lam_manifest(root, seed=42).written  # same files and settings: a no-op
    assert json.loads(path.read_text()) == first and path.stat().st_mtime_ns == mtime
    manifest = read_lam_manifest(path, root)
    assert manifest.files("val") == [root / first["val"][0]] and manifest.seed == 42
    write_lam_manifest(root, seed=7, force=True)
    other = json.loads(path.read_text())
    assert other["val"] + other["test"] != first["val"] + first["test"]
    assert len(manifest.files("all")) == 10


def test_manifest_ratio_error_names_ratios(tmp_path):
    root = make_dir(tmp_path / "d", 2)
    with pytest.raises(ValueError, match=r"train_ratio=0.5, val_ratio=0.3, test_ratio=0.3"):
        write_lam_manifest(root, 0.5, 0.3, 0.3)
    write_lam_manifest(root, 0.5, 0.5, 0.0)  # a zero ratio is fine


def test_small_split_gets_one_file_or_fails_naming_it(tmp_path):
    root = make_dir(tmp_path / "d", 5)
    report = prepare_lam_manifest(root)  # 0.8 / 0.1 / 0.1 of 5 rounds to 4 / 1 / 0
    assert report.counts == {"train": 3, "val": 1, "test": 1}
    assert report.notes == ["test_ratio 0.1 of 5 files rounds to 0 files: 'test' gets 1 file from 'train'"]
    assert [len(json.loads(report.path.read_text())[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert prepare_lam_manifest(root, 1.0, 0.0, 0.0, force=True).counts == {"train": 5, "val": 0, "test": 0}
    two = make_dir(tmp_path / "two", 2)
    with pytest.raises(LatentDataError, match=r"two/manifest.json: split 'test' \(test_ratio 0.1\) gets 0 of 2 "
                       r"usable files \(train 1, val 1, test 0\): add files or set --test_ratio 0"):
        prepare_lam_manifest(two)
    assert not (two / "manifest.json").exists()


def test_existing_manifest_is_not_re_split_without_force(tmp_path):
    root = make_dir(tmp_path / "d", 10)
    first = json.loads(write_lam_manifest(root).read_text())
    with pytest.raises(LatentDataError, match=r"manifest.json: exists with another split \(files: \d+ would "
                       r"change split\); .*re-split with --force"):
        write_lam_manifest(root, seed=7)
    write_h5(root / "video_10.h5")
    with pytest.raises(LatentDataError, match=r"exists with another split \(files: .*1 new\)"):
        write_lam_manifest(root)
    assert json.loads((root / "manifest.json").read_text()) == first  # refused: untouched
    (root / "manifest.json").write_text("{half written")
    with pytest.raises(LatentDataError, match=r"exists but cannot be read .*--force replaces it"):
        write_lam_manifest(root)
    assert prepare_lam_manifest(root, force=True).written


BAD_AT_MANIFEST = {
    "rank": (lambda p: write_h5(p, name="latents", data=np.zeros((6, 16, 2, 8), np.float32)),
             r"no 5-D dataset .*latents \[6, 16, 2, 8\]"),
    "dtype": (lambda p: write_h5(p, data=np.zeros((6, 16, 2, 8, 8), np.int16)), r"dataset .latents. holds int16, expected floats"),
    "nan": (lambda p: write_h5(p, data=np.where(np.arange(6)[:, None, None, None, None] == 5, np.nan,
                                                chunk_values(6)).astype(np.float32)),
            r"chunk 5 of dataset 'latents' holds NaN or inf"),
    "shape": (lambda p: write_h5(p, data=chunk_values(6, hw=4)),
              r"chunk shape \[16, 2, 4, 4\] \[C, T_latent, H, W\] differs from \[16, 2, 8, 8\]"),
    "garbage": (lambda p: p.write_bytes(b"this is not an HDF5 file" * 10), "not a readable HDF5 file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_AT_MANIFEST))
def test_manifest_validates_every_file(tmp_path, kind):
    root = make_dir(tmp_path / "d", 4)
    make, message = BAD_AT_MANIFEST[kind]
    make(root / "bad.h5")
    with pytest.raises(LatentDataError, match=rf"bad\.h5: {message}"):
        prepare_lam_manifest(root, 0.5, 0.25, 0.25)
    assert not (root / "manifest.json").exists()
    report = prepare_lam_manifest(root, 0.5, 0.25, 0.25, on_bad_sample="skip")
    assert list(report.skipped) == ["bad.h5"] and sum(report.counts.values()) == 4
    manifest = json.loads(report.path.read_text())
    assert "bad.h5" not in manifest["train"] + manifest["val"] + manifest["test"]
    assert manifest["skipped"] == report.skipped and manifest["chunk_shape"] == [16, 2, 8, 8]
    assert not prepare_lam_manifest(root, 0.5, 0.25, 0.25, on_bad_sample="skip").written  # a rerun: no-op


def test_manifest_checks_a_sample_of_chunks_or_all(tmp_path):
    root = make_dir(tmp_path / "d", 2)
    data = chunk_values(20)
    data[7] = np.inf  # between the sampled chunks 0, 6, 13, 19 of a 4-chunk sample
    write_h5(root / "late.h5", data=data)
    assert prepare_lam_manifest(root, 1.0, 0.0, 0.0, check_chunks=4).counts["train"] == 3
    with pytest.raises(LatentDataError, match=r"late\.h5: chunk 7 of dataset 'latents' holds NaN or inf"):
        prepare_lam_manifest(root, 1.0, 0.0, 0.0, check_chunks=0, force=True)


def test_manifest_cli_reports_and_refuses_in_one_line(tmp_path, capsys):
    root = make_dir(tmp_path / "d", 5)
    write_h5(root / "nan.h5", data=np.full((6, 16, 2, 8, 8), np.nan, np.float32))
    assert main(["prepare", "lam-manifest", str(root), "--on_bad_sample", "skip"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{root / 'manifest.json'}: written; train 3, val 1, test 1 files of chunks [16, 2, 8, 8]"
    assert out[-1] == "    nan.h5: chunk 0 of dataset 'latents' holds NaN or inf values"
    assert main(["prepare", "lam-manifest", str(root), "--on_bad_sample", "skip"]) == 0
    assert "unchanged (same files and settings)" in capsys.readouterr().out
    assert main(["prepare", "lam-manifest", str(root), "--seed", "1", "--on_bad_sample", "skip"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"worldtune: error: {root / 'manifest.json'}: exists with another")
    assert main(["prepare", "lam-manifest", str(root), "--seed", "1", "--on_bad_sample", "skip", "--force"]) == 0


def test_help_names_the_h5_dataset(capsys):
    for command in ("lam-manifest", "vae-latents"):
        with pytest.raises(SystemExit):
            main(["prepare", command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "[N_chunks, C=16, T_latent=2, H, W]" in text and "--dataset_name" in text
        assert "the file's only 5-D dataset" in text and "'latents'" in text


def test_manifest_missing_file_and_duplicates_and_bad_json(tmp_path):
    root = make_dir(tmp_path / "d", 4)
    path = write_lam_manifest(root, 0.5, 0.25, 0.25)
    data = json.loads(path.read_text())
    gone = data["val"][0]
    (root / gone).unlink()
    with pytest.raises(LatentDataError, match=rf"manifest.json: {gone} is listed but .*does not exist"):
        read_lam_manifest(path, root)
    write_h5(root / gone)
    data["test"].append(data["train"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(
        LatentDataError, match=rf"manifest.json: {data['train'][0]} is listed in both 'train' and 'test'"
    ):
        read_lam_manifest(path, root)
    path.write_text("{not json")
    with pytest.raises(LatentDataError, match=r"manifest.json: malformed manifest JSON"):
        read_lam_manifest(path, root)
    with pytest.raises(LatentDataError, match="no manifest"):
        LatentSequenceDataset(config(root, manifest_path=str(tmp_path / "none.json")))


# ------------------------------------------------------------------------------------------ loader


@pytest.mark.parametrize(
    ("length", "stride", "starts"), [(4, 1, [0, 1, 2, 3, 4]), (8, 1, [0, 1, 2]), (4, 2, [0, 2, 4])]
)
def test_sequences_concatenate_consecutive_chunks(tmp_path, length, stride, starts):
    root = make_dir(tmp_path / "d", 2)
    ds = LatentSequenceDataset(config(root, split="all", sequence_length=length, sequence_stride=stride))
    assert len(ds) == 2 * len(starts)
    for i in range(len(ds)):
        item = ds[i]
        assert item["latents"].shape == (16, length, 8, 8) and item["latents"].dtype == torch.float32
        assert Path(item["file"]).name == f"video_{i // len(starts):02d}.h5"
        assert item["start_chunk"] == starts[i % len(starts)]
        np.testing.assert_array_equal(
            item["latents"][3, :, 5, 2].numpy(), expected_sequence(item["start_chunk"], length)
        )
    assert ds[-1]["start_chunk"] == starts[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_manifest_split_selects_files(tmp_path):
    root = make_dir(tmp_path / "d")
    manifest = json.loads(write_lam_manifest(root).read_text())
    for split in ("train", "val", "test"):
        ds = LatentSequenceDataset(config(root, split=split))
        assert sorted(f.path.name for f in ds.files) == sorted(manifest[split])
        assert len(ds) == 3 * len(manifest[split])


def test_dataset_name_auto_detect(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    write_h5(root / "a.h5", name="vvae", fps=np.array([8.0]), other=np.zeros((2, 3)))
    ds = LatentSequenceDataset(config(root, split="all"))
    assert ds.files[0].dataset == "vvae" and ds[0]["latents"].shape == (16, 8, 8, 8)
    ds.close()  # HDF5 cannot rewrite a file that is open

    write_h5(root / "a.h5", name="fps_only", data=np.zeros((3,)))
    with pytest.raises(LatentDataError, match=r"a\.h5: no 5-D dataset .*fps_only \[3\]"):
        LatentSequenceDataset(config(root, split="all"))

    write_h5(root / "a.h5", name="one", two=chunk_values(6))
    with pytest.raises(LatentDataError, match=r"a\.h5: several 5-D datasets \['one', 'two'\]"):
        LatentSequenceDataset(config(root, split="all"))
    assert LatentSequenceDataset(config(root, split="all", dataset_name="two")).files[0].dataset == "two"
    with pytest.raises(LatentDataError, match=r"a\.h5: no dataset 'three'"):
        LatentSequenceDataset(config(root, split="all", dataset_name="three"))


BAD_FILES = {
    "rank": (
        lambda p: write_h5(p, data=np.zeros((6, 16, 2, 8), np.float32)),
        r"has shape \[6, 16, 2, 8\], expected 5-D",
    ),
    "channels": (lambda p: write_h5(p, data=chunk_values(6, channels=4)), "has 4 channels, expected 16"),
    "few_chunks": (lambda p: write_h5(p, data=chunk_values(1)), "too few chunks: 1"),
    "garbage": (lambda p: p.write_bytes(b"this is not an HDF5 file" * 10), "not a readable HDF5 file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_named(tmp_path, kind):
    root = make_dir(tmp_path / "d", 1)
    make, message = BAD_FILES[kind]
    make(root / "bad.h5")
    with pytest.raises(LatentDataError, match=rf"bad\.h5: .*{message}"):
        LatentSequenceDataset(config(root, split="all", sequence_length=4, dataset_name="latents"))


def test_sequence_length_must_be_multiple_of_chunk(tmp_path):
    root = make_dir(tmp_path / "d", 1)
    with pytest.raises(LatentDataError, match=r"video_00\.h5: sequence_length 5 is not a multiple of the 2"):
        LatentSequenceDataset(config(root, split="all", sequence_length=5))
    with pytest.raises(ValueError, match="on_bad_sample"):
        LatentSequenceDataset(config(root, split="all", on_bad_sample="ignore"))


def test_nan_values_are_named_with_chunk_range(tmp_path):
    root = make_dir(tmp_path / "d", 1)
    data = chunk_values(6)
    data[3, 2, 1, 0, 0] = np.nan
    write_h5(root / "nan.h5", data=data)
    ds = LatentSequenceDataset(config(root, split="all", sequence_length=4))
    assert [f.path.name for f in ds.files] == ["nan.h5", "video_00.h5"]
    assert ds[5 + 2]["start_chunk"] == 2  # video_00 is fine
    assert ds[0]["start_chunk"] == 0  # nan.h5 outside chunk 3 is fine too
    with pytest.raises(LatentDataError, match=r"nan\.h5: chunks 2-3 of dataset 'latents' contain NaN or inf"):
        ds[2]


def test_skip_mode_excludes_and_counts(tmp_path):
    root = make_dir(tmp_path / "d", 1)
    BAD_FILES["garbage"][0](root / "b_garbage.h5")
    BAD_FILES["channels"][0](root / "c_channels.h5")
    data = chunk_values(6)
    data[1, 0, 0, 0, 0] = np.inf
    write_h5(root / "d_inf.h5", data=data)
    ds = LatentSequenceDataset(config(root, split="all", sequence_length=4, on_bad_sample="skip"))
    assert sorted(Path(f).name for f, _ in ds.skipped) == ["b_garbage.h5", "c_channels.h5"]
    assert [f.path.name for f in ds.files] == ["d_inf.h5", "video_00.h5"]
    # Windows 0 and 1 of d_inf.h5 hold chunk 1: each is replaced by the next good window.
    first = ds[0]
    assert (Path(first["file"]).name, first["start_chunk"]) == ("d_inf.h5", 2)
    assert len(ds.skipped) == 4 and all("NaN or inf" in r for _, r in ds.skipped[2:])
    again = ds[0]
    assert again["start_chunk"] == 2 and len(ds.skipped) == 4  # deterministic, counted once
    assert ds[1]["start_chunk"] == 2


def test_dataloader_with_spawn_workers(tmp_path):
    root = make_dir(tmp_path / "d", 3)
    ds = LatentSequenceDataset(config(root, split="all", sequence_length=4))
    ds[0]  # the parent now holds an open handle, which must not travel to the workers
    loader = DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    latents = torch.cat([b["latents"] for b in batches])
    assert latents.shape == (15, 16, 4, 8, 8)
    starts = [s for b in batches for s in b["start_chunk"].tolist()]
    assert starts == [ds[i]["start_chunk"] for i in range(len(ds))]
    torch.testing.assert_close(latents, torch.stack([ds[i]["latents"] for i in range(len(ds))]))
    ds.close()


def test_model_latent_size_mismatch_names_the_file_and_setting(tmp_path, capsys):
    root = make_dir(tmp_path / "d", 4)
    write_lam_manifest(root, 0.5, 0.25, 0.25)
    dataset = LatentSequenceDataset(config(root, sequence_length=4))
    dataset.check_model_frames(16, 8)  # the files' 16 x 8 x 8 frames fit
    with pytest.raises(LatentDataError, match=r"video_0\d\.h5: latent frames are 16 x 8 x 8 \(C x H x W of "
                       r"dataset 'latents'\), the model takes 16 x 64 x 64 \(model.in_channels x "
                       r"model.latent_size\): set model.latent_size=8, or encode"):
        dataset.check_model_frames(16, 64)
    small = ["model.adapter_patch=4", "model.patch_dim=32", "model.embed_dim=64", "model.num_heads=4",
             "model.encoder_depth=1", "model.decoder_depth=1", "model.codebook_dim=16"]
    argv = ["train", str(REPO / "configs/lam/train.yaml"), f"data.data_dir={root}", f"output_dir={tmp_path / 'run'}",
            "data.sequence_length=4", "model.latent_size=16", "log.wandb_project=null", *small]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("worldtune: ")]
    assert len(err) == 1 and "latent frames are 16 x 8 x 8" in err[0] and "set model.latent_size=8" in err[0]


def test_overfit_cpu_config_is_the_overfit_test_with_a_smaller_model(tmp_path):
    from worldtune.systems import load_config
    from worldtune.systems.lam.recipe import RECIPE

    seed, cpu = (load_config(REPO / f"configs/lam/{name}.yaml", [f"data.data_dir={tmp_path}"])
                 for name in ("overfit", "overfit_cpu"))
    assert cpu.train.test_mode and cpu.train.learning_rate == seed.train.learning_rate
    assert (cpu.model.in_channels, cpu.model.latent_size) == (seed.model.in_channels, seed.model.latent_size)
    sizes = [sum(p.numel() for p in RECIPE.build_model(c).parameters()) for c in (seed, cpu)]
    assert sizes[1] * 10 < sizes[0]


def test_describe_reports_splits_and_sample(tmp_path):
    root = make_dir(tmp_path / "d")
    write_lam_manifest(root)
    text = describe(LatentSequenceDataset(config(root, sequence_length=4)))
    assert "manifest: " + str(root / "manifest.json") in text
    assert "4 latent frames = 2 chunks" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and "files" in line}
    assert lines["train"].split()[1::2] == ["8", "48", "40"]
    assert lines["val"].split()[1::2] == ["1", "6", "5"]
    assert "latents [16, 4, 8, 8] float32" in text
    assert "mean 5.5" in text and "min 0" in text and "max 11" in text


# ------------------------------------------------------------------------------------------ encoding


def _synthetic_video(path: Path, frames: int, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, height, width, 3))
    motion = np.arange(frames).reshape(-1, 1, 1, 1) * 6
    write_video(path, ((base + motion) % 256).astype(np.uint8), fps=8)


def test_encode_videos_to_h5_round_trip(tmp_path, monkeypatch):
    videos, out = tmp_path / "videos", tmp_path / "h5"
    videos.mkdir()
    _synthetic_video(videos / "a.mp4", 20, 64, 64, 0)
    _synthetic_video(videos / "b.mp4", 20, 48, 64, 1)  # non-square: centre-cropped
    _synthetic_video(videos / "short.mp4", 5, 64, 64, 2)  # under one chunk: skipped
    (videos / "notes.txt").write_text("not a video")
    vae = tiny_wan_vae("2.1")
    paths = encode_videos_to_h5(videos, out, vae, size=32, batch_chunks=1, progress=False)
    assert paths == [out / "a.h5", out / "b.h5"]
    assert sorted(p.name for p in out.iterdir()) == ["a.h5", "b.h5"]  # no temporaries left

    with h5py.File(out / "a.h5") as f:
        assert f["latents"].shape == (2, 16, 2, 4, 4) and f["latents"].dtype == np.float32
        assert f.attrs["chunk_frames"] == 8 and f.attrs["frames_encoded"] == 5 and f.attrs["size"] == 32
        assert f.attrs["fps"] == 8 and f.attrs["source_video"] == str(videos / "a.mp4")
        assert "AutoencoderKLWan" in f.attrs["vae"] and not f.attrs["normalised"]
        stored = torch.from_numpy(f["latents"][1])
    # Chunk 1 is frames 8-12 encoded on their own (unnormalised).
    clip = load_clip(videos / "a.mp4", 5, start=8, height=32, width=32, stride=8)
    torch.testing.assert_close(stored, vae.encode_raw(clip[None])[0], atol=1e-5, rtol=1e-4)

    ds = LatentSequenceDataset(config(out, split="all", sequence_length=4))
    assert len(ds) == 2 and ds[1]["latents"].shape == (16, 4, 4, 4)

    # A rerun reuses both outputs without encoding anything.
    def fail(*args, **kwargs):
        raise AssertionError("encoded again")

    mtime = os.stat(out / "a.h5").st_mtime_ns
    monkeypatch.setattr(vae, "encode_raw", fail)
    assert encode_videos_to_h5(videos, out, vae, size=32, progress=False) == paths
    assert os.stat(out / "a.h5").st_mtime_ns == mtime
    with pytest.raises(OutputMismatchError, match=r"a\.h5: exists with other settings.*size"):
        encode_videos_to_h5(videos, out, vae, size=16, progress=False)
    with pytest.raises(OutputMismatchError, match=r"a\.h5: exists with other settings \(dtype"):
        encode_videos_to_h5(videos, out, vae, size=32, dtype="float16", progress=False)


def test_encode_normalised_float16(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    _synthetic_video(videos / "a.mp4", 9, 32, 32, 0)
    vae = tiny_wan_vae("2.1")
    raw = encode_videos_to_h5(videos, tmp_path / "raw", vae, size=32, progress=False)[0]
    norm = encode_videos_to_h5(
        videos, tmp_path / "n", vae, size=32, normalise=True, dtype="float16", progress=False
    )[0]
    with h5py.File(raw) as f, h5py.File(norm) as g:
        assert g["latents"].dtype == np.float16 and g.attrs["normalised"]
        expected = (torch.from_numpy(f["latents"][:]) - vae._mean) / vae._std
        torch.testing.assert_close(
            torch.from_numpy(g["latents"][:].astype(np.float32)), expected, atol=2e-3, rtol=2e-3
        )
