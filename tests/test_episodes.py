"""The robot-episode reader (Vidar seed layout): manifest, validation, clips, tiling, keys."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from episode_fixtures import (
    CAMERA_COLORS,
    episode_name,
    frame_index,
    frame_indices,
    tile_color,
    write_dataset,
    write_episode,
)
from worldtune.data.formats import episode_dataset
from worldtune.data.formats.episodes import (
    BadEpisode,
    EpisodeClipDataset,
    EpisodeDataConfig,
    ManifestError,
    assign_splits,
    collate_episodes,
    load_episodes,
    read_manifest,
    scan_episodes,
    write_manifest,
)
from worldtune.data.video import VideoError


def make_cfg(root: Path, **kw) -> EpisodeDataConfig:
    """Small clips: 5 frames at 10 fps, 32x40 (half of the fixtures' 64x80, same aspect)."""
    base = {"num_frames": 5, "fps": 10.0, "height": 32, "width": 40, "stride": 8, "split": "all"}
    return EpisodeDataConfig(data_dir=str(root), **{**base, **kw})


def close_to(color: tuple[int, int, int], expected: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(color, expected, strict=True))


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_contents_and_reproducible_split(tmp_path):
    write_dataset(tmp_path, n_episodes=10, num_frames=12)
    path = write_manifest(tmp_path, val_ratio=0.2, seed=3)
    tree = json.loads(path.read_text())
    assert path == tmp_path / "manifest.json"
    assert tree["version"] == 1 and tree["created_by"] == "worldtune prepare manifest"
    first = tree["episodes"][0]
    assert first == {
        "name": "ep_0000", "split": first["split"], "num_frames": 12, "fps": 10.0,
        "cameras": [], "action_dim": 14,
    }  # fmt: skip
    splits = {e["name"]: e["split"] for e in tree["episodes"]}
    assert sum(s == "val" for s in splits.values()) == 2
    write_manifest(tmp_path, val_ratio=0.2, seed=3)
    assert {e["name"]: e["split"] for e in json.loads(path.read_text())["episodes"]} == splits
    assert assign_splits(sorted(splits, reverse=True), 0.2, 3) == splits  # independent of order
    assert assign_splits(list(splits), 0.2, 4) != splits  # the seed matters

    infos = read_manifest(path, tmp_path)
    assert [i.name for i in infos] == [episode_name(i) for i in range(10)]
    assert infos[0].dir == tmp_path / "episodes" / "ep_0000" and infos[0].num_frames == 12


def test_val_split_has_at_least_one_episode():
    assert sorted(assign_splits(["a", "b"], 0.05).values()) == ["train", "val"]
    assert list(assign_splits(["a"], 0.5).values()) == ["train"]
    assert set(assign_splits(["a", "b", "c"], 0.0).values()) == {"train"}


def test_manifest_naming_missing_episodes(tmp_path):
    write_dataset(tmp_path, n_episodes=4, manifest=True)
    shutil.rmtree(tmp_path / "episodes" / "ep_0002")
    with pytest.raises(ManifestError, match=r"manifest\.json.*ep_0002"):
        read_manifest(tmp_path / "manifest.json", tmp_path)
    with pytest.raises(ManifestError, match="ep_0002"):
        EpisodeClipDataset(make_cfg(tmp_path))
    data = EpisodeClipDataset(make_cfg(tmp_path, on_bad_sample="skip"))
    assert [e.name for e in data.episodes] == ["ep_0000", "ep_0001", "ep_0003"]
    assert [name for name, _ in data.skipped] == ["ep_0002"]
    assert "does not exist" in data.skipped[0][1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "malformed JSON"),
        ('{"version": 1, "episodes": [{"name": "ep_0000", "split": "test"}]}', r"episodes\[0\].*'split'"),
        ('{"version": 2, "episodes": []}', "version"),
    ],
)
def test_bad_manifest_names_the_file(tmp_path, text, match):
    write_dataset(tmp_path, n_episodes=1)
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(tmp_path / "manifest.json", tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_scan_fallback_without_manifest(tmp_path):
    write_dataset(tmp_path, n_episodes=6)
    splits = assign_splits([episode_name(i) for i in range(6)])
    for split in ("train", "val"):
        data = EpisodeClipDataset(make_cfg(tmp_path, split=split))
        assert {e.name for e in data.episodes} == {n for n, s in splits.items() if s == split}
    assert len(scan_episodes(tmp_path)) == 6
    # A written manifest (default split) selects the same episodes as the scan.
    write_manifest(tmp_path)
    listed = load_episodes(tmp_path, split="val")
    assert [i.name for i in listed] == [i.name for i in scan_episodes(tmp_path, split="val")]


# ----------------------------------------------------------------------------------------- bad inputs


def _missing_camera(root):
    (write_episode(root, "ep_bad", cameras=["left", "right"]) / "video_right.mp4").unlink()


BAD_CASES = {
    "missing video": (
        lambda r: write_episode(r, "ep_bad", video="missing"),
        "missing video file video.mp4",
        {},
    ),
    "missing camera": (_missing_camera, r"missing video file video_right\.mp4 \(camera 'right'\)", {}),
    "missing instruction": (
        lambda r: write_episode(r, "ep_bad", instruction=None),
        "missing instruction",
        {},
    ),
    "empty instruction": (lambda r: write_episode(r, "ep_bad", instruction=" \n\t"), "empty instruction", {}),
    "garbage video": (
        lambda r: write_episode(r, "ep_bad", video="garbage"),
        "unreadable video video.mp4",
        {},
    ),
    "zero-frame video": (
        lambda r: write_episode(r, "ep_bad", video="empty"),
        "unreadable video video.mp4",
        {},
    ),
    "too short": (lambda r: write_episode(r, "ep_bad", num_frames=4), r"too short.*needs 5 .*only 4", {}),
    "actions length": (lambda r: write_episode(r, "ep_bad", num_actions=29), r"29 rows.*30 frames", {}),
    "actions not 2-D": (lambda r: write_episode(r, "ep_bad", actions=np.zeros(30)), "must be 2-D", {}),
    "wrong action_dim": (lambda r: write_episode(r, "ep_bad", action_dim=7), "action_dim 7, expected 14", {}),
    "missing actions": (lambda r: write_episode(r, "ep_bad", actions=False), "missing actions.npy", {}),
    "camera lengths": (
        lambda r: (write_episode(r, "ep_bad", cameras=["a"]), write_episode(r, "ep_bad", 20, cameras=["b"])),
        r"disagree.*video_a\.mp4: 30 frames.*video_b\.mp4: 20 frames",
        {"cameras": ["a", "b"], "width": 80},
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_episode_is_named_or_skipped(tmp_path, case, caplog):
    setup, match, extra = BAD_CASES[case]
    multi = "cameras" in extra or case == "missing camera"
    cams = extra.get("cameras", ["left", "right"] if multi else None)
    write_dataset(tmp_path, n_episodes=2, cameras=cams)
    setup(tmp_path)
    cfg = {**extra, "cameras": cams or [], "width": 80 if multi else 40}
    with pytest.raises(BadEpisode, match=match) as info:
        EpisodeClipDataset(make_cfg(tmp_path, **cfg))
    assert str(tmp_path / "episodes" / "ep_bad") in str(info.value)

    with caplog.at_level(logging.WARNING, logger="worldtune"):
        data = EpisodeClipDataset(make_cfg(tmp_path, on_bad_sample="skip", **cfg))
    assert [e.name for e in data.episodes] == ["ep_0000", "ep_0001"]
    assert data.num_skipped == 1 and data.skipped[0][0] == "ep_bad"
    assert "ep_bad" in caplog.text


def test_decode_failure_at_load_time(tmp_path, monkeypatch):
    write_dataset(tmp_path, n_episodes=3, num_frames=10)  # 2 clips per episode
    real = episode_dataset.read_frames

    def flaky(path, indices):
        if "ep_0001" in str(path):
            raise VideoError(f"{path}: cannot decode (corrupt packet)")
        return real(path, indices)

    monkeypatch.setattr(episode_dataset, "read_frames", flaky)
    with pytest.raises(BadEpisode, match=r"ep_0001.*cannot decode video\.mp4"):
        EpisodeClipDataset(make_cfg(tmp_path))[2]
    data = EpisodeClipDataset(make_cfg(tmp_path, on_bad_sample="skip"))
    item = data[2]  # ep_0001's clips (2, 3) fail: the next loadable clip is ep_0002@0
    assert (item["episode"], item["start"]) == ("ep_0002", 0)
    assert data[3]["episode"] == "ep_0002" and data.skipped == [("ep_0001", data.skipped[0][1])]


# ----------------------------------------------------------------------------------------------- clips


def test_fps_resampling_takes_every_third_frame(tmp_path):
    write_episode(tmp_path, "ep_0000", num_frames=45, fps=30)
    data = EpisodeClipDataset(make_cfg(tmp_path, clip_stride=7))
    item = data[1]
    assert item["start"] == 7
    assert item["frame_indices"].tolist() == [7, 10, 13, 16, 19]
    assert frame_indices(item["video"]) == [7, 10, 13, 16, 19]
    assert torch.allclose(item["actions"][:, 0], torch.tensor([7.0, 10, 13, 16, 19]))
    assert torch.allclose(item["actions"][0, 1], torch.tensor(7.01))


def test_fixed_clip_enumeration(tmp_path):
    write_dataset(tmp_path, n_episodes=2, num_frames=30)
    data = EpisodeClipDataset(make_cfg(tmp_path))  # span 5 source frames: starts 0, 5, ..., 25
    assert len(data) == 12
    assert [(data[i]["episode"], data[i]["start"]) for i in (0, 5, 6)] == [
        ("ep_0000", 0), ("ep_0000", 25), ("ep_0001", 0),
    ]  # fmt: skip
    strided = EpisodeClipDataset(make_cfg(tmp_path, clip_stride=10))
    assert len(strided) == 6 and [strided[i]["start"] for i in range(3)] == [0, 10, 20]


def test_random_sampling_is_reproducible(tmp_path):
    write_dataset(tmp_path, n_episodes=2, num_frames=60)
    data = EpisodeClipDataset(make_cfg(tmp_path, clip_sampling="random"))
    assert len(data) == 2

    def starts(seed):
        torch.manual_seed(seed)
        return [data[i % 2]["start"] for i in range(8)]

    first = starts(0)
    assert starts(0) == first and all(0 <= s <= 55 for s in first) and len(set(first)) > 1
    item = data[0]
    assert frame_indices(item["video"]) == item["frame_indices"].tolist()
    with pytest.raises(ValueError, match="random"):
        data.clip_key(0)
    assert data.clip_key(0, start=item["start"]) == item["key"]


@pytest.mark.parametrize(("layout", "height", "width"), [("row", 32, 80), ("column", 64, 40)])
def test_camera_tiling(tmp_path, layout, height, width):
    write_dataset(tmp_path, n_episodes=1, cameras=["left", "right"])
    cfg = make_cfg(tmp_path, cameras=["left", "right"], camera_layout=layout, height=height, width=width)
    video = EpisodeClipDataset(cfg)[0]["video"]
    assert video.shape == (3, 5, height, width)
    first = video[:, 3]
    tiles = [first[:, :, :40], first[:, :, 40:]] if layout == "row" else [first[:, :32], first[:, 32:]]
    for tile, color in zip(tiles, CAMERA_COLORS[:2], strict=True):
        assert close_to(tile_color(tile), color) and frame_index(tile) == 3


def test_grid_layout_leaves_the_spare_tile_black(tmp_path):
    write_dataset(tmp_path, n_episodes=1, cameras=["a", "b", "c"])
    cfg = make_cfg(tmp_path, cameras=["a", "b", "c"], camera_layout="grid", height=64, width=80)
    frame = EpisodeClipDataset(cfg)[0]["video"][:, 0]
    assert close_to(tile_color(frame[:, 32:, :40]), CAMERA_COLORS[2])
    assert frame[:, 32:, 40:].max() == -1.0


def test_item_shapes_ranges_and_collate(tmp_path):
    write_dataset(tmp_path, n_episodes=2, instruction="  stack the blocks\n")
    data = EpisodeClipDataset(make_cfg(tmp_path))
    item = data[0]
    assert item["video"].shape == (3, 5, 32, 40) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1.0 and item["video"].max() <= 1.0
    assert item["video"].min() < -0.9 and item["video"].max() > 0.9  # black and white stripes
    assert item["actions"].shape == (5, 14) and item["actions"].dtype == torch.float32
    assert item["frame_indices"].dtype == torch.long and item["prompt"] == "stack the blocks"
    batch = collate_episodes([data[0], data[6]])
    assert batch["video"].shape == (2, 3, 5, 32, 40) and batch["actions"].shape == (2, 5, 14)
    assert batch["episode"] == ["ep_0000", "ep_0001"] and batch["start"] == [0, 0]


def test_without_actions(tmp_path):
    write_dataset(tmp_path, n_episodes=1, actions=False)
    item = EpisodeClipDataset(make_cfg(tmp_path, action_dim=None))[0]
    assert "actions" not in item


# ------------------------------------------------------------------------------------------- clip keys


def test_clip_key_tracks_content_and_settings_without_decoding(tmp_path, monkeypatch):
    write_dataset(tmp_path, n_episodes=2)
    key = EpisodeClipDataset(make_cfg(tmp_path))[1]["key"]

    def no_decoding(*args, **kw):
        raise AssertionError("clip_key must not decode video")

    monkeypatch.setattr(episode_dataset, "read_frames", no_decoding)
    data = EpisodeClipDataset(make_cfg(tmp_path))
    assert data.clip_key(1) == key and key.startswith("ep_0000@5:")
    assert data.clip_key(0) != key and data.clip_key(6).startswith("ep_0001@0:")
    assert data.clip_settings()["num_frames"] == 5
    meta = data.item_metadata(1)
    assert meta["key"] == key and meta["frame_indices"].tolist() == [5, 6, 7, 8, 9] and "video" not in meta
    for change in ({"height": 40, "width": 40}, {"fps": 5.0}, {"num_frames": 9}):
        assert EpisodeClipDataset(make_cfg(tmp_path, **change)).clip_key(1) != key
    write_episode(tmp_path, "ep_0000", colors=[(10, 10, 200)])  # same frames, other pixels
    assert EpisodeClipDataset(make_cfg(tmp_path)).clip_key(1) != key


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_frames": 80}, "num_frames"),
        ({"height": 30}, "height"),
        ({"cameras": ["a", "b", "c"]}, "cameras"),  # 40 px do not split into 3 tiles
        ({"camera_layout": "diagonal"}, "camera_layout"),
        ({"clip_sampling": "all"}, "clip_sampling"),
        ({"on_bad_sample": "ignore"}, "on_bad_sample"),
    ],
)
def test_config_errors_name_the_field(tmp_path, change, field):
    with pytest.raises(ValueError, match=rf"EpisodeDataConfig\.{field}="):
        EpisodeClipDataset(make_cfg(tmp_path, **change))


def test_config_is_an_omegaconf_structured_section(tmp_path):
    write_dataset(tmp_path, n_episodes=1)
    tree = OmegaConf.merge(
        OmegaConf.structured(EpisodeDataConfig),
        {"data_dir": str(tmp_path), "num_frames": 5, "height": 32, "width": 40, "stride": 8, "split": "all"},
    )
    cfg = OmegaConf.to_object(tree)
    assert isinstance(cfg, EpisodeDataConfig) and cfg.cameras == []
    assert len(EpisodeClipDataset(cfg)) == 6
