"""Ctrl-World data (seed 5): the Flexiv / DROID readers and the latent spaces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ctrl_world_fixtures import D, H, T, W, make_frames
from worldtune.models.encoders import LatentSpace, PixelLatents, tiny_wan_vae
from worldtune.models.encoders.latent_spaces import (
    build_latent_space,
    decode_frames,
    encode_frames,
    frames_to_model_range,
    frames_to_uint8,
)
from worldtune.models.encoders.svd_vae import SVDVaeLatents, tiny_svd_vae
from worldtune.systems.ctrl_world.dataset import (
    BadCtrlWorldSample,
    CtrlWorldDataConfig,
    CtrlWorldDataset,
    denormalise_actions,
    load_episode,
    normalise_actions,
    window_frame_ids,
)

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
    assert item["latents"].shape == (11, 48, 3 * (H // 4), W // 4) and item["latents"].dtype == torch.float32
    assert item["actions"].shape == (11, D) and item["actions"].dtype == torch.float32
    assert item["prompt"] == "pick up the cube"
    ep, t = ds.samples[0]["episode_id"], ds.samples[0]["frame_ids"][0]
    assert item["episode_id"] == ep
    assert item["frame_ids"].tolist() == list(range(t - 6, t + 5))
    # Views stacked along height, in `views` order.
    h = H // 4
    for k, v in enumerate((0, 1, 2)):
        lat = torch.load(out / f"{ep}/latent_videos/{v}/0.pt", weights_only=True)
        torch.testing.assert_close(item["latents"][:, :, k * h : (k + 1) * h], lat[item["frame_ids"]])
    # States normalised with the 1st / 99th percentiles, clipped to [-1, 1].
    expected = np.clip(
        2 * (recs[ep]["states"][item["frame_ids"].numpy()] - np.array(stat["state_01"]))
        / (np.array(stat["state_99"]) - np.array(stat["state_01"]) + 1e-8) - 1, -1, 1,
    )  # fmt: skip
    np.testing.assert_allclose(item["actions"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert all(reader(out)[i]["actions"].abs().max() <= 1.0 for i in range(len(ds)))
    # Other view order, and the recorded actions instead of the states.
    swapped = reader(out, views=[2, 0], action_key="actions")[0]
    assert swapped["latents"].shape == (11, 48, 2 * h, W // 4)
    torch.testing.assert_close(swapped["latents"][:, :, :h], item["latents"][:, :, 2 * h :])
    lo, hi = np.array(stat["action_01"]), np.array(stat["action_99"])
    np.testing.assert_allclose(
        swapped["actions"].numpy(),
        normalise_actions(recs[ep]["actions"][item["frame_ids"].numpy()], lo, hi),
        rtol=1e-5,
        atol=1e-6,
    )
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["latents"].shape == (2, 11, 48, 3 * h, W // 4)


def test_reader_frame_ids_clip_and_strides(converted):
    _, out, _, _ = converted
    assert window_frame_ids(6, 16, 6, 5) == list(range(0, 11))
    assert window_frame_ids(2, 16, 3, 4, history_stride=2, frame_stride=3) == [0, 0, 0, 2, 5, 8, 11]
    assert window_frame_ids(14, 16, 1, 4, frame_stride=1) == [13, 14, 15, 15, 15]
    ds = reader(out, num_history=8, num_frames=6, history_stride=1, frame_stride=2)
    item = ds[0]
    t = ds.samples[0]["frame_ids"][0]
    assert t == 6 and item["frame_ids"].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 15]
    assert item["latents"].shape[0] == 14 and item["actions"].shape[0] == 14
    # A clipped frame repeats the first latent frame.
    torch.testing.assert_close(item["latents"][0], item["latents"][2])


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
    assert item["latents"].shape == (11, 4, 72, 40) and item["prompt"] == "task 7"
    assert item["frame_ids"].tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 11, 11, 11]
    assert (
        item["latents"][0, 0, 0, 0] == 40
        and item["latents"][0, 0, 24, 0] == 41
        and item["latents"][-1, 0, 48, 0] == 112
    )
    assert item["actions"].abs().max() <= 1.0
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
    space = build_latent_space("space_to_depth", factor=4)
    assert isinstance(space, PixelLatents) and space.identity == "space_to_depth(factor=4)"
    for other in (SVDVaeLatents(tiny_svd_vae()), tiny_wan_vae()):  # one protocol for all three
        assert isinstance(other, LatentSpace) and other.identity
    frames = make_frames(3, 4, 16, 24)
    latents = encode_frames(space, frames)
    assert latents.shape == (4, 48, 4, 6)
    np.testing.assert_array_equal(frames_to_uint8(decode_frames(space, latents)), frames)
    torch.testing.assert_close(encode_frames(space, frames_to_model_range(frames)), latents)
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        encode_frames(space, make_frames(0, 1, 18, 24))
    with pytest.raises(ValueError, match="temporal_stride 1"):  # a video VAE folds frames: not per frame
        encode_frames(tiny_wan_vae(), frames)
