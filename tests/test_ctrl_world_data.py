"""Ctrl-World data (seed 5): HDF5 -> latent converter, Flexiv / DROID readers, latent spaces."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from worldtune.data.ctrl_world_convert import (
    MARKER,
    BadRecording,
    ConvertMismatchError,
    convert_recordings,
    main,
    meta_info_dir,
    sample_frame_ids,
)
from worldtune.data.formats.ctrl_world import (
    BadCtrlWorldSample,
    CtrlWorldDataConfig,
    CtrlWorldDataset,
    denormalise_actions,
    load_episode,
    normalise_actions,
    window_frame_ids,
)
from worldtune.models.latent_spaces import (
    LatentSpace,
    SpaceToDepthLatents,
    SVDVaeLatents,
    frames_to_model_range,
    frames_to_uint8,
    tiny_svd_vae,
)

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
T, H, W, D = 16, 48, 64, 7


# ----------------------------------------------------------------------------------- recordings


def make_frames(seed: int, t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """Smooth-ish uint8 frames (JPEG keeps them recognisable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, size=3)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        for c in range(3):
            frames[i, :, :, c] = (base[c] + 3 * i + xx * (c + 1) + yy * 2) % 256
    return frames


def jpeg(frame: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def decode_jpeg(data: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))


def write_recording(
    path: Path,
    seed: int = 0,
    *,
    t: int = T,
    h: int = H,
    w: int = W,
    encoding: str = "raw",
    cameras: tuple[str, ...] = CAMS,
    instruction: str | None = "pick up the cube",
    action_len: int | None = None,
    drop: str | None = None,
    nan_action_at: int | None = None,
    inf_state_at: int | None = None,
    bad_jpeg: tuple[str, int] | None = None,
) -> dict:
    rng = np.random.default_rng(seed + 1000)
    states = rng.normal(size=(t, D)).cumsum(axis=0).astype(np.float32)
    actions = rng.normal(size=(action_len or t, D)).astype(np.float32)
    if nan_action_at is not None:
        actions[nan_action_at, 2] = np.nan
    if inf_state_at is not None:
        states[inf_state_at, 0] = np.inf
    frames = {}
    with h5py.File(path, "w") as f:
        if instruction is not None:
            f.attrs["instruction"] = instruction
        f.attrs["fps"] = 30.0
        for k, cam in enumerate(cameras):
            if drop == cam:
                continue
            fr = make_frames(seed * 10 + k, t, h, w)
            key = f"observations/images/{cam}"
            if encoding == "raw":
                f.create_dataset(key, data=fr)
                frames[cam] = fr
            else:
                ds = f.create_dataset(key, (t,), dtype=h5py.vlen_dtype(np.uint8))
                decoded = []
                for i in range(t):
                    data = jpeg(fr[i])
                    if bad_jpeg == (cam, i):
                        data = np.frombuffer(b"not a jpeg at all", dtype=np.uint8)
                    ds[i] = data
                    decoded.append(decode_jpeg(data) if bad_jpeg != (cam, i) else None)
                frames[cam] = decoded
        if drop != "qpos":
            f.create_dataset("observations/qpos", data=states)
        if drop != "action":
            f.create_dataset("action", data=actions)
    return {"states": states, "actions": actions, "frames": frames}


def make_recordings(folder: Path, n: int, **kw) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_recording(folder / f"rec_{i:02d}.hdf5", seed=i, **kw) for i in range(n)]


def tree(*roots: Path) -> set[str]:
    base = roots[0].parent
    return {str(p.relative_to(base)) for root in roots for p in root.rglob("*") if p.is_file()}


def convert(inp: Path, out: Path, space: LatentSpace | None = None, **kw):
    kw.setdefault("dataset_name", "flexiv_1113")
    kw.setdefault("height", H)
    kw.setdefault("width", W)
    kw.setdefault("progress", False)
    return convert_recordings(inp, out, space or SpaceToDepthLatents(4), **kw)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Two raw recordings converted with space-to-depth latents at their native size."""
    base = tmp_path_factory.mktemp("ctrl")
    recs = make_recordings(base / "recordings", 2)
    out = base / "flexiv_data"
    stats = convert(base / "recordings", out)
    return base, out, recs, stats


# ------------------------------------------------------------------------------------ converter


def test_output_layout_exact(converted):
    base, out, _, stats = converted
    meta = base / "flexiv_data_meta_info"
    expected = {f"flexiv_data/{MARKER}"}
    for ep in ("0", "1"):
        for v in range(3):
            expected.add(f"flexiv_data/{ep}/latent_videos/{v}/0.pt")
            expected.add(f"flexiv_data/{ep}/annotation/{v}.json")
    expected |= {
        f"flexiv_data_meta_info/flexiv_1113/{n}"
        for n in ("stat.json", "train_sample.json", "val_sample.json")
    }
    assert tree(out, meta) == expected
    assert meta_info_dir(out, "flexiv_1113") == meta / "flexiv_1113"
    assert (stats.converted, stats.already_done, stats.skipped, stats.num_episodes) == (2, 0, 0, 2)


def test_annotation_fields(converted):
    _, out, recs, _ = converted
    for ep, rec in enumerate(recs):
        for v, cam in enumerate(CAMS):
            ann = json.loads((out / str(ep) / "annotation" / f"{v}.json").read_text())
            assert ann["texts"] == ["pick up the cube"]
            assert ann["episode_id"] == ep and ann["view"] == v and ann["camera"] == cam
            assert ann["video_length"] == T
            assert ann["latent_videos"] == [{"latent_video_path": f"latent_videos/{v}/0.pt"}]
            assert ann["source"] == f"rec_{ep:02d}.hdf5"
            assert ann["fps"] == 30.0
            np.testing.assert_array_equal(np.array(ann["states"], dtype=np.float32), rec["states"])
            np.testing.assert_array_equal(np.array(ann["actions"], dtype=np.float32), rec["actions"])
            latent = torch.load(
                out / str(ep) / ann["latent_videos"][0]["latent_video_path"], weights_only=True
            )
            assert latent.dtype == torch.float32 and latent.shape == (T, 48, H // 4, W // 4)


def test_stat_json_matches_numpy(converted):
    base, _, recs, _ = converted
    stat = json.loads((base / "flexiv_data_meta_info/flexiv_1113/stat.json").read_text())
    for prefix, key in (("state", "states"), ("action", "actions")):
        x = np.concatenate([r[key] for r in recs]).astype(np.float64)
        np.testing.assert_allclose(stat[f"{prefix}_01"], np.percentile(x, 1, axis=0))
        np.testing.assert_allclose(stat[f"{prefix}_99"], np.percentile(x, 99, axis=0))
        np.testing.assert_allclose(stat[f"{prefix}_mean"], x.mean(axis=0))
        np.testing.assert_allclose(stat[f"{prefix}_std"], x.std(axis=0))
        assert len(stat[f"{prefix}_01"]) == D
    assert stat["num_episodes"] == 2 and stat["num_frames"] == 2 * T


def test_samples_split_reproducible_and_disjoint(tmp_path, converted):
    base, *_ = converted
    meta = base / "flexiv_data_meta_info/flexiv_1113"
    train = json.loads((meta / "train_sample.json").read_text())
    val = json.loads((meta / "val_sample.json").read_text())
    train_eps, val_eps = {s["episode_id"] for s in train}, {s["episode_id"] for s in val}
    assert train_eps | val_eps == {0, 1} and not train_eps & val_eps and len(val_eps) == 1
    for s in train + val:
        assert set(s) == {"episode_id", "frame_ids"} and len(s["frame_ids"]) == 1
    # Every current frame with 6 history and 4 future frames inside the 16-frame episode.
    assert sorted(s["frame_ids"][0] for s in train) == list(range(6, 12))
    assert sample_frame_ids(16, 6, 5, 1, 1) == list(range(6, 12))
    assert sample_frame_ids(16, 2, 3, 3, 2) == list(range(6, 12))

    make_recordings(tmp_path / "in", 6, t=12)
    splits = []
    for run in ("a", "b"):
        stats = convert(tmp_path / "in", tmp_path / run / "data", val_ratio=0.3, seed=3)
        splits.append((stats.train_episodes, stats.val_episodes))
        assert sorted(stats.train_episodes + stats.val_episodes) == list(range(6))
        assert not set(stats.train_episodes) & set(stats.val_episodes)
    assert splits[0] == splits[1] and len(splits[0][1]) == 2
    other = convert(tmp_path / "in", tmp_path / "c" / "data", val_ratio=0.3, seed=4)
    assert len(other.val_episodes) == 2
    few = convert(tmp_path / "in", tmp_path / "d" / "data", val_ratio=0.01)
    assert len(few.val_episodes) == 1  # at least one val episode


def test_resume_skips_complete_episodes(tmp_path):
    make_recordings(tmp_path / "in", 2)
    out = tmp_path / "flexiv_data"
    assert convert(tmp_path / "in", out).converted == 2
    pt = out / "0/latent_videos/0/0.pt"
    mtime = pt.stat().st_mtime_ns
    again = convert(tmp_path / "in", out)
    assert (again.converted, again.already_done, again.num_episodes) == (0, 2, 2)
    assert pt.stat().st_mtime_ns == mtime
    (out / "1/annotation/2.json").unlink()  # an interrupted episode: annotations are written last
    third = convert(tmp_path / "in", out)
    assert (third.converted, third.already_done) == (1, 1)
    assert not list(out.rglob("*.tmp"))
    # More recordings later: only the new one is converted; the meta info covers all three.
    write_recording(tmp_path / "in/rec_02.hdf5", seed=2)
    fourth = convert(tmp_path / "in", out)
    assert (fourth.converted, fourth.already_done, fourth.num_episodes) == (1, 2, 3)
    stat = json.loads((tmp_path / "flexiv_data_meta_info/flexiv_1113/stat.json").read_text())
    assert stat["num_episodes"] == 3


def test_refuses_a_different_dataset(tmp_path):
    make_recordings(tmp_path / "in", 2)
    out = tmp_path / "flexiv_data"
    convert(tmp_path / "in", out)
    with pytest.raises(ConvertMismatchError, match="dataset_name: 'flexiv_1113' there, 'other' now"):
        convert(tmp_path / "in", out, dataset_name="other")
    with pytest.raises(ConvertMismatchError, match="latent_space"):
        convert(tmp_path / "in", out, space=SpaceToDepthLatents(2))
    with pytest.raises(ConvertMismatchError, match="height"):
        convert(tmp_path / "in", out, height=32)
    with pytest.raises(ConvertMismatchError, match="cameras"):
        convert(tmp_path / "in", out, cameras=CAMS[:2])
    make_recordings(tmp_path / "in2", 2)
    with pytest.raises(ConvertMismatchError, match="input_dir"):
        convert(tmp_path / "in2", out)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    with pytest.raises(ConvertMismatchError, match="not empty"):
        convert(tmp_path / "in", stray)


BAD_CASES = {
    "missing_camera": ({"drop": "cam_left_wrist"}, "missing camera 'cam_left_wrist'"),
    "missing_action": ({"drop": "action"}, "missing action key 'action'"),
    "missing_state": ({"drop": "qpos"}, "missing state key 'observations/qpos'"),
    "length_mismatch": ({"action_len": T - 1}, r"different lengths .*action 'action' 15"),
    "nan_action": ({"nan_action_at": 3}, r"action 'action' has NaN/inf values \(first at frame 3\)"),
    "inf_state": ({"inf_state_at": 5}, r"state 'observations/qpos' has NaN/inf values \(first at frame 5\)"),
    "bad_jpeg": (
        {"encoding": "jpeg", "bad_jpeg": ("cam_right_wrist", 7)},
        "camera 'cam_right_wrist': cannot decode image frame 7",
    ),
    "too_short": ({"t": 10}, "episode too short: 10 frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_recordings_are_named(tmp_path, case):
    kwargs, message = BAD_CASES[case]
    make_recordings(tmp_path / "in", 2)
    bad = tmp_path / "in" / "rec_01.hdf5"
    write_recording(bad, seed=1, **kwargs)
    with pytest.raises(BadRecording, match=message) as info:
        convert(tmp_path / "in", tmp_path / "a" / "data")
    assert str(bad) in str(info.value)

    stats = convert(tmp_path / "in", tmp_path / "b" / "data", on_bad_sample="skip")
    assert (stats.converted, stats.skipped, stats.num_episodes) == (1, 1, 1)
    assert stats.skipped_files[0][0] == "rec_01.hdf5"
    assert not (tmp_path / "b/data/1").exists()
    train = json.loads((tmp_path / "b/data_meta_info/flexiv_1113/train_sample.json").read_text())
    assert {s["episode_id"] for s in train} == {0}


def test_too_short_after_downsampling_and_missing_instruction(tmp_path):
    (tmp_path / "in").mkdir()
    write_recording(tmp_path / "in/a.hdf5", t=20)
    with pytest.raises(BadRecording, match="10 frames after fps_downsample=2"):
        convert(tmp_path / "in", tmp_path / "a" / "data", fps_downsample=2)
    write_recording(tmp_path / "in/a.hdf5", t=22, instruction=None)
    stats = convert(tmp_path / "in", tmp_path / "b" / "data", fps_downsample=2)
    ann = json.loads((tmp_path / "b/data/0/annotation/0.json").read_text())
    assert ann["texts"] == [""] and ann["video_length"] == 11 and ann["fps"] == 15.0
    assert stats.num_frames == 11 and stats.val_episodes == []


def test_space_to_depth_latents_decode_exactly(converted, tmp_path):
    _, out, recs, _ = converted
    space = SpaceToDepthLatents(4)
    for v, cam in enumerate(CAMS):
        latent = torch.load(out / f"1/latent_videos/{v}/0.pt", weights_only=True)
        np.testing.assert_array_equal(frames_to_uint8(space.decode(latent)), recs[1]["frames"][cam])
    # JPEG recordings: the latents hold the decoded JPEG frames exactly.
    jrecs = make_recordings(tmp_path / "in", 2, encoding="jpeg")
    convert(tmp_path / "in", tmp_path / "data")
    latent = torch.load(tmp_path / "data/0/latent_videos/2/0.pt", weights_only=True)
    np.testing.assert_array_equal(
        frames_to_uint8(space.decode(latent)), np.stack(jrecs[0]["frames"]["cam_right_wrist"])
    )


@pytest.mark.parametrize("storage", ["padded", "bytes"])
def test_other_jpeg_storages(tmp_path, storage):
    """JPEGs as zero-padded uint8 rows (ALOHA's compressed files) or fixed-length byte strings."""
    make_recordings(tmp_path / "in", 2)
    originals = {}
    with h5py.File(tmp_path / "in/rec_00.hdf5", "r+") as f:
        for cam in CAMS:
            frames = f[f"observations/images/{cam}"][()]
            encoded = [jpeg(fr) for fr in frames]
            originals[cam] = np.stack([decode_jpeg(e) for e in encoded])
            del f[f"observations/images/{cam}"]
            if storage == "padded":
                rows = np.zeros((len(encoded), max(map(len, encoded))), dtype=np.uint8)
                for i, e in enumerate(encoded):
                    rows[i, : len(e)] = e
                f.create_dataset(f"observations/images/{cam}", data=rows)
            else:
                f.create_dataset(f"observations/images/{cam}", data=np.array([e.tobytes() for e in encoded]))
    convert(tmp_path / "in", tmp_path / "data")
    latent = torch.load(tmp_path / "data/0/latent_videos/1/0.pt", weights_only=True)
    decoded = frames_to_uint8(SpaceToDepthLatents(4).decode(latent))
    np.testing.assert_array_equal(decoded, originals["cam_left_wrist"])


def test_tiny_svd_vae_conversion(tmp_path):
    make_recordings(tmp_path / "in", 2, t=12, h=40, w=56)
    vae = tiny_svd_vae(seed=0)
    space = SVDVaeLatents(vae, posterior="mode")
    assert (space.channels, space.downsample) == (4, 2)
    stats = convert(
        tmp_path / "in", tmp_path / "flexiv_data", space, height=32, width=48, fps_downsample=2,
        num_history=2, num_frames=3,
    )  # fmt: skip
    assert stats.converted == 2 and stats.num_frames == 12
    latent = torch.load(tmp_path / "flexiv_data/1/latent_videos/0/0.pt", weights_only=True)
    assert latent.shape == (6, 4, 16, 24)
    # Scaled posterior mean of the resized frames, as the VAE gives it.
    with h5py.File(tmp_path / "in/rec_01.hdf5") as f:
        frames = f["observations/images/cam_high"][::2]
    x = torch.nn.functional.interpolate(
        frames_to_model_range(frames), size=(32, 48), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        ref = vae.encode(x.clamp(-1, 1)).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(latent, ref, atol=1e-5, rtol=1e-5)
    decoded = space.decode(latent)
    assert decoded.shape == (6, 3, 32, 48) and decoded.abs().max() <= 1.0
    # Upstream's posterior sample is reproducible (seeded per call).
    sampler = SVDVaeLatents(vae)
    torch.testing.assert_close(sampler.encode(frames), sampler.encode(frames))
    ds = CtrlWorldDataset(
        CtrlWorldDataConfig(
            dataset_root=str(tmp_path / "flexiv_data"),
            dataset_name="flexiv_1113",
            num_history=2,
            num_frames=3,
        )
    )
    assert ds[0]["latent"].shape == (5, 4, 3 * 16, 24)


def test_svd_from_pretrained(tmp_path):
    tiny_svd_vae().save_pretrained(tmp_path / "svd" / "vae")
    space = SVDVaeLatents.from_pretrained(tmp_path / "svd")
    assert space.channels == 4 and str(tmp_path / "svd" / "vae") in space.identity
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        SVDVaeLatents.from_pretrained(tmp_path / "nowhere")


def test_cli_main(tmp_path):
    make_recordings(tmp_path / "in", 2)
    stats = main([
        "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "flexiv_data"),
        "--dataset_name", "flexiv_1113", "--latent_space", "space_to_depth", "--height", "48",
        "--width", "64", "--no_progress", "--device", "cpu",
    ])  # fmt: skip
    assert stats.converted == 2
    assert (tmp_path / "flexiv_data_meta_info/flexiv_1113/stat.json").is_file()


# --------------------------------------------------------------------------------------- reader


def reader(out: Path, **kw) -> CtrlWorldDataset:
    cfg = OmegaConf.structured(CtrlWorldDataConfig)
    cfg.merge_with({"dataset_root": str(out), "dataset_name": "flexiv_1113", **kw})
    return CtrlWorldDataset(OmegaConf.to_object(cfg))


def test_reader_items(converted):
    base, out, recs, _ = converted
    ds = reader(out)
    stat = json.loads((base / "flexiv_data_meta_info/flexiv_1113/stat.json").read_text())
    item = ds[0]
    assert item["latent"].shape == (11, 48, 3 * (H // 4), W // 4) and item["latent"].dtype == torch.float32
    assert item["action"].shape == (11, D) and item["action"].dtype == torch.float32
    assert item["text"] == "pick up the cube"
    ep, t = ds.samples[0]["episode_id"], ds.samples[0]["frame_ids"][0]
    assert item["episode_id"] == ep
    assert item["frame_ids"].tolist() == list(range(t - 6, t + 5))
    # Views stacked along height, in `views` order.
    h = H // 4
    for k, v in enumerate((0, 1, 2)):
        lat = torch.load(out / f"{ep}/latent_videos/{v}/0.pt", weights_only=True)
        torch.testing.assert_close(item["latent"][:, :, k * h : (k + 1) * h], lat[item["frame_ids"]])
    # States normalised with the 1st / 99th percentiles, clipped to [-1, 1].
    expected = np.clip(
        2 * (recs[ep]["states"][item["frame_ids"].numpy()] - np.array(stat["state_01"]))
        / (np.array(stat["state_99"]) - np.array(stat["state_01"]) + 1e-8) - 1, -1, 1,
    )  # fmt: skip
    np.testing.assert_allclose(item["action"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert all(reader(out)[i]["action"].abs().max() <= 1.0 for i in range(len(ds)))
    # Other view order, and the recorded actions instead of the states.
    swapped = reader(out, views=[2, 0], action_key="actions")[0]
    assert swapped["latent"].shape == (11, 48, 2 * h, W // 4)
    torch.testing.assert_close(swapped["latent"][:, :, :h], item["latent"][:, :, 2 * h :])
    lo, hi = np.array(stat["action_01"]), np.array(stat["action_99"])
    np.testing.assert_allclose(
        swapped["action"].numpy(),
        normalise_actions(recs[ep]["actions"][item["frame_ids"].numpy()], lo, hi),
        rtol=1e-5,
        atol=1e-6,
    )
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["latent"].shape == (2, 11, 48, 3 * h, W // 4)


def test_reader_frame_ids_clip_and_strides(converted):
    _, out, _, _ = converted
    assert window_frame_ids(6, 16, 6, 5) == list(range(0, 11))
    assert window_frame_ids(2, 16, 3, 4, history_stride=2, frame_stride=3) == [0, 0, 0, 2, 5, 8, 11]
    assert window_frame_ids(14, 16, 1, 4, frame_stride=1) == [13, 14, 15, 15, 15]
    ds = reader(out, num_history=8, num_frames=6, history_stride=1, frame_stride=2)
    item = ds[0]
    t = ds.samples[0]["frame_ids"][0]
    assert t == 6 and item["frame_ids"].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 15]
    assert item["latent"].shape[0] == 14 and item["action"].shape[0] == 14
    # A clipped frame repeats the first latent frame.
    torch.testing.assert_close(item["latent"][0], item["latent"][2])


def test_reader_errors(converted, tmp_path):
    base, out, _, _ = converted
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "meta" / "stat.json")):
        reader(out, meta_info=str(tmp_path / "meta"))
    with pytest.raises(FileNotFoundError, match="flexiv_data_meta_info/other/stat.json"):
        reader(out, dataset_name="other")
    # A missing latent file is named; "skip" moves on to another episode.
    import shutil

    copy = tmp_path / "flexiv_data"
    shutil.copytree(out, copy)
    meta = tmp_path / "meta2"
    meta.mkdir()
    shutil.copy(base / "flexiv_data_meta_info/flexiv_1113/stat.json", meta / "stat.json")
    samples = [{"episode_id": 0, "frame_ids": [6]}, {"episode_id": 1, "frame_ids": [7]}]
    (meta / "train_sample.json").write_text(json.dumps(samples))
    missing = copy / "0/latent_videos/1/0.pt"
    missing.unlink()
    with pytest.raises(BadCtrlWorldSample, match=f"{missing}: latent file not found"):
        reader(copy, meta_info=str(meta))[0]
    skipping = reader(copy, meta_info=str(meta), on_bad_sample="skip")
    assert skipping[0]["episode_id"] == 1 and skipping.num_skipped == 1
    assert skipping[0]["episode_id"] == 1 and skipping.num_skipped == 1  # episode 0 is not retried
    with pytest.raises(FileNotFoundError, match="val_sample.json"):
        reader(copy, meta_info=str(meta), split="val")
    with pytest.raises(ValueError, match="action_key"):
        reader(out, action_key="joints")


def test_load_episode(converted):
    _, out, recs, _ = converted
    episode = load_episode(out, 1, views=[0, 1, 2])
    assert episode.latents.shape == (T, 48, 3 * (H // 4), W // 4)
    np.testing.assert_array_equal(episode.states.astype(np.float32), recs[1]["states"])
    np.testing.assert_array_equal(episode.actions.astype(np.float32), recs[1]["actions"])
    assert episode.text == "pick up the cube"


def test_normalise_round_trip():
    lo, hi = np.array([0.0, -2.0]), np.array([1.0, 2.0])
    x = np.array([[0.25, 1.0], [0.5, -1.0]])
    y = normalise_actions(x, lo, hi)
    np.testing.assert_allclose(y, [[-0.5, 0.5], [0.0, -0.5]], atol=1e-6)
    np.testing.assert_allclose(denormalise_actions(y, lo, hi), x, atol=1e-6)
    assert normalise_actions(np.array([[5.0, -9.0]]), lo, hi).tolist() == [[1.0, -1.0]]
    t = normalise_actions(torch.tensor(x, dtype=torch.float32), lo, hi)
    torch.testing.assert_close(denormalise_actions(t, lo, hi), torch.tensor(x, dtype=torch.float32))


def test_droid_layout(tmp_path):
    """A tiny upstream-style tree: annotation/<split>/<ep>.json + latent_videos/<split>/<ep>/<view>.pt."""
    root = tmp_path / "droid_subset"
    rng = np.random.default_rng(0)
    for ep, n in (("0", 20), ("7", 12)):
        (root / "annotation/train").mkdir(parents=True, exist_ok=True)
        (root / f"latent_videos/train/{ep}").mkdir(parents=True, exist_ok=True)
        for v in range(3):
            torch.save(torch.full((n, 4, 24, 40), float(v)) + torch.arange(n).view(n, 1, 1, 1) * 10,
                       root / f"latent_videos/train/{ep}/{v}.pt")  # fmt: skip
        ann = {
            "texts": [f"task {ep}"], "episode_id": int(ep), "success": 1, "video_length": n,
            "videos": [{"video_path": f"videos/train/{ep}/{v}.mp4"} for v in range(3)],
            "latent_videos": [{"latent_video_path": f"latent_videos/train/{ep}/{v}.pt"} for v in range(3)],
            "states": rng.uniform(-1, 1, size=(n, 7)).tolist(),
        }  # fmt: skip
        (root / f"annotation/train/{ep}.json").write_text(json.dumps(ann))
    meta = tmp_path / "dataset_meta_info/droid_subset"
    meta.mkdir(parents=True)
    (meta / "stat.json").write_text(json.dumps({"state_01": [-0.9] * 7, "state_99": [0.9] * 7}))
    (meta / "train_sample.json").write_text(
        json.dumps([{"episode_id": 7, "frame_ids": [10]}, {"episode_id": 0, "frame_ids": [3]}])
    )
    ds = CtrlWorldDataset(
        CtrlWorldDataConfig(dataset_root=str(root), dataset_name="droid_subset", meta_info=str(meta))
    )
    assert ds.layout == "droid"
    item = ds[0]
    assert item["latent"].shape == (11, 4, 72, 40) and item["text"] == "task 7"
    assert item["frame_ids"].tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 11, 11, 11]
    assert (
        item["latent"][0, 0, 0, 0] == 40
        and item["latent"][0, 0, 24, 0] == 41
        and item["latent"][-1, 0, 48, 0] == 112
    )
    assert item["action"].abs().max() <= 1.0
    assert ds[1]["frame_ids"].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(KeyError, match="action_01"):
        CtrlWorldDataset(
            CtrlWorldDataConfig(
                dataset_root=str(root), dataset_name="x", meta_info=str(meta), action_key="actions"
            )
        )
    episode = load_episode(root, 0, layout="droid", split="train")
    assert episode.latents.shape == (20, 4, 72, 40) and episode.actions is None


def test_latent_space_protocol_and_round_trip():
    space = SpaceToDepthLatents(4)
    assert isinstance(space, LatentSpace) and isinstance(SVDVaeLatents(tiny_svd_vae()), LatentSpace)
    frames = make_frames(3, 4, 16, 24)
    latents = space.encode(frames)
    assert latents.shape == (4, 48, 4, 6)
    np.testing.assert_array_equal(frames_to_uint8(space.decode(latents)), frames)
    torch.testing.assert_close(space.encode(frames_to_model_range(frames)), latents)
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        space.encode(make_frames(0, 1, 18, 24))
