"""Ctrl-World data (seed 5): the ALOHA HDF5 -> latent converter (layout, stat.json, split, resume, bad input)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctrl_world_fixtures import (
    CAMS,
    D,
    H,
    T,
    W,
    convert,
    decode_jpeg,
    jpeg,
    make_recordings,
    tree,
    write_recording,
)
from worldtune.models.encoders.latent_spaces import (
    decode_frames,
    encode_frames,
    frames_to_model_range,
    frames_to_uint8,
)
from worldtune.models.encoders.pixel import PixelLatents
from worldtune.models.encoders.svd_vae import SVDVaeLatents, tiny_svd_vae
from worldtune.systems.ctrl_world.convert import (
    FRAME_CHUNK,
    MARKER,
    BadRecording,
    ConvertMismatchError,
    main,
    meta_info_dir,
    sample_frame_ids,
)
from worldtune.systems.ctrl_world.dataset import (
    CtrlWorldDataConfig,
    CtrlWorldDataset,
)

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
        convert(tmp_path / "in", out, space=PixelLatents(patch=2))
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
    space = PixelLatents(patch=4)
    for v, cam in enumerate(CAMS):
        latent = torch.load(out / f"1/latent_videos/{v}/0.pt", weights_only=True)
        np.testing.assert_array_equal(frames_to_uint8(decode_frames(space, latent)), recs[1]["frames"][cam])
    # JPEG recordings: the latents hold the decoded JPEG frames exactly.
    jrecs = make_recordings(tmp_path / "in", 2, encoding="jpeg")
    convert(tmp_path / "in", tmp_path / "data")
    latent = torch.load(tmp_path / "data/0/latent_videos/2/0.pt", weights_only=True)
    np.testing.assert_array_equal(
        frames_to_uint8(decode_frames(space, latent)), np.stack(jrecs[0]["frames"]["cam_right_wrist"])
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
    decoded = frames_to_uint8(decode_frames(PixelLatents(patch=4), latent))
    np.testing.assert_array_equal(decoded, originals["cam_left_wrist"])


def test_tiny_svd_vae_conversion(tmp_path):
    make_recordings(tmp_path / "in", 2, t=12, h=40, w=56)
    vae = tiny_svd_vae(seed=0)
    space = SVDVaeLatents(vae, posterior="mode")
    assert (space.z_dim, space.spatial_stride, space.temporal_stride) == (4, 2, 1)
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
    decoded = decode_frames(space, latent)
    assert decoded.shape == (6, 3, 32, 48) and decoded.abs().max() <= 1.0
    # The video protocol: [B, 3, T, H, W] clips in, each decoded as its own clip.
    clips = space.encode(torch.stack([x, x.flip(0)]).transpose(1, 2))
    assert clips.shape == (2, 4, 6, 16, 24) and space.latent_shape(6, 32, 48) == (4, 6, 16, 24)
    torch.testing.assert_close(clips[0].transpose(0, 1), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(space.decode(clips)[1].transpose(0, 1), decode_frames(space, ref.flip(0)),
                               atol=1e-5, rtol=1e-5)
    # Upstream's posterior sample is reproducible (seeded per call).
    sampler = SVDVaeLatents(vae)
    torch.testing.assert_close(encode_frames(sampler, frames), encode_frames(sampler, frames))
    ds = CtrlWorldDataset(
        CtrlWorldDataConfig(
            dataset_root=str(tmp_path / "flexiv_data"),
            dataset_name="flexiv_1113",
            num_history=2,
            num_frames=3,
        )
    )
    assert ds[0]["latents"].shape == (5, 4, 3 * 16, 24)


def _vae_latents_by_chunk(vae, frames: np.ndarray, size: tuple[int, int], chunk: int = FRAME_CHUNK) -> torch.Tensor:
    """The converter's latents as the VAE gives them: resized frames, one posterior draw per read
    chunk from a generator seeded with 0 per chunk, times the scaling factor."""
    out = []
    for start in range(0, len(frames), chunk):
        x = F.interpolate(frames_to_model_range(frames[start:start + chunk]), size=size, mode="bilinear",
                          align_corners=False).clamp_(-1, 1)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
        out.append(dist.sample(generator=torch.Generator().manual_seed(0)) * vae.config.scaling_factor)
    return torch.cat(out)


def test_converted_svd_latents_are_bitwise_the_vaes(tmp_path):
    """The latents are exactly the VAE's (sampled posterior, chunked reads, a tail chunk of 8 frames):
    speed work on the converter must not change a bit of them."""
    make_recordings(tmp_path / "in", 1, t=FRAME_CHUNK + 8, h=40, w=56)
    vae = tiny_svd_vae(seed=0)
    stats = convert(tmp_path / "in", tmp_path / "flexiv_data", SVDVaeLatents(vae), height=32, width=48,
                    num_history=2, num_frames=3)
    assert stats.num_frames == FRAME_CHUNK + 8
    with h5py.File(tmp_path / "in/rec_00.hdf5") as f:
        frames = {cam: f[f"observations/images/{cam}"][()] for cam in CAMS}
    for v, cam in enumerate(CAMS):
        latent = torch.load(tmp_path / f"flexiv_data/0/latent_videos/{v}/0.pt", weights_only=True)
        assert torch.equal(latent, _vae_latents_by_chunk(vae, frames[cam], (32, 48)))


def test_encoder_batch_option_same_noise_and_its_own_identity(tmp_path):
    make_recordings(tmp_path / "in", 1, t=12, h=32, w=48)
    vae = tiny_svd_vae(seed=0)
    convert(tmp_path / "in", tmp_path / "a/data", SVDVaeLatents(vae), height=32, width=48, num_history=2,
            num_frames=3)
    batched = SVDVaeLatents(vae, encoder_batch=5)  # parts of 5, 5 and 2 frames
    assert batched.identity.endswith(", encoder batch 5)") and "encoder batch" not in SVDVaeLatents(vae).identity
    convert(tmp_path / "in", tmp_path / "b/data", batched, height=32, width=48, num_history=2, num_frames=3)
    for v in range(len(CAMS)):
        default, small = (torch.load(tmp_path / f"{d}/data/0/latent_videos/{v}/0.pt", weights_only=True)
                          for d in ("a", "b"))
        torch.testing.assert_close(small, default, atol=1e-5, rtol=1e-5)  # the same draw, to the last bits
    with pytest.raises(ConvertMismatchError, match="latent_space"):  # never mixed into one folder
        convert(tmp_path / "in", tmp_path / "a/data", batched, height=32, width=48, num_history=2, num_frames=3)


def test_svd_from_pretrained(tmp_path):
    tiny_svd_vae().save_pretrained(tmp_path / "svd" / "vae")
    space = SVDVaeLatents.from_pretrained(tmp_path / "svd")
    assert space.z_dim == 4 and str(tmp_path / "svd" / "vae") in space.identity
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
