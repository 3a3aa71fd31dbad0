"""Tests for worldtune.data.video on small synthetic videos (offline, a few seconds on CPU)."""

from __future__ import annotations

import os
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from worldtune.data.video import (
    VideoError,
    VideoInfo,
    _build_frame_table,
    _decode_wanted,
    _read_frames,
    from_model_range,
    load_clip,
    max_clip_start,
    probe_video,
    read_frames,
    resample_indices,
    resize_center_crop,
    round_num_frames,
    to_model_range,
    valid_num_frames,
)
from worldtune.data.video_write import side_by_side, write_video

H, W, N, FPS = 48, 64, 30, 30
GOP = 5  # keyframe every 5 frames, so reads far from the start really seek


def _level(i: int) -> int:
    """Grey level that encodes frame index ``i`` (steps of 8 survive lossy coding)."""
    return 10 + 8 * i


def _pattern(i: int, h: int = H, w: int = W) -> np.ndarray:
    frame = np.full((h, w, 3), _level(i), dtype=np.uint8)
    frame[:16, :16] = (255, 0, 0)  # a red block catches RGB/BGR mix-ups
    return frame


def _frames(n: int = N) -> np.ndarray:
    return np.stack([_pattern(i) for i in range(n)])


def _index_of(frame: np.ndarray) -> int:
    """Recover the frame index from a decoded frame, asserting the pattern survived coding."""
    grey = float(frame[H // 2 :, W // 2 :].mean())
    index = round((grey - 10) / 8)
    assert abs(grey - _level(index)) < 3, grey
    red = frame[4:12, 4:12].reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red
    return index


def _encoder(*names: str) -> str | None:
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return name
        except ValueError:
            continue
    return None


@pytest.fixture(scope="module")
def h264_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "pattern.mp4"
    write_video(path, _frames(), FPS, options={"g": str(GOP)})
    return path


def test_probe(h264_path: Path) -> None:
    assert probe_video(h264_path) == VideoInfo(num_frames=N, fps=30.0, width=W, height=H, codec="h264")
    assert probe_video(h264_path).duration == pytest.approx(1.0)


def test_read_frames_unsorted_and_repeated(h264_path: Path) -> None:
    indices = [7, 3, 3, 29, 0, 7, 12]
    frames = read_frames(h264_path, indices)
    assert frames.shape == (len(indices), H, W, 3) and frames.dtype == np.uint8
    assert [_index_of(f) for f in frames] == indices


def _keyframes(path: Path) -> list[int]:
    """Keyframe indices read straight from the packets, independently of the code under test."""
    with av.open(str(path)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]
    order = sorted(pts for pts, _ in packets)
    return sorted(order.index(pts) for pts, key in packets if key)


@pytest.mark.parametrize("indices", [[22, 27], [20], [19, 24], [11, 6], [3, 28]])
def test_read_frames_seeks_to_exact_frame(h264_path: Path, indices: list[int]) -> None:
    keyframes = _keyframes(h264_path)
    assert len(keyframes) >= N // GOP  # x264 may add scene-cut keyframes on top of every GOP-th
    start = max(k for k in keyframes if k <= min(indices))
    assert start > 0 or min(indices) < GOP  # with g=5 every read from frame 5 on must seek
    frames, stats = _read_frames(h264_path, indices)
    assert [_index_of(f) for f in frames] == indices
    assert stats.start == start  # positioned at the keyframe before the first wanted frame
    assert stats.decoded == max(indices) - start + 1  # nothing before that keyframe was decoded


def test_timestamp_mismatch_falls_back_to_counting(h264_path: Path) -> None:
    # Simulate a decoder whose timestamps disagree with the packets: reads must stay exact.
    table = _build_frame_table(h264_path)
    assert table.pts is not None
    skewed = replace(table, index_of={pts + 1: i for pts, i in table.index_of.items()})
    decoded, stats = _decode_wanted(h264_path, skewed, {22, 27})
    assert {i: _index_of(f) for i, f in decoded.items()} == {22: 22, 27: 27}
    assert stats.start == 0


def test_read_frames_numpy_indices_and_empty(h264_path: Path) -> None:
    assert [_index_of(f) for f in read_frames(h264_path, np.array([5, 1]))] == [5, 1]
    assert read_frames(h264_path, []).shape == (0, H, W, 3)


def test_mkv_counts_packets_and_seeks(tmp_path: Path) -> None:
    # Matroska has no frame count in its header and uses a 1 ms time base: both fallbacks at once.
    path = tmp_path / "pattern.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "g": "4"}
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # really exercises the packet count
    assert probe_video(path).num_frames == 12
    frames, stats = _read_frames(path, [10, 9, 11])
    assert [_index_of(f) for f in frames] == [10, 9, 11]
    assert stats.start == max(k for k in _keyframes(path) if k <= 9) > 0


def test_av1_round_trip(tmp_path: Path) -> None:
    encoder = _encoder("libaom-av1", "libsvtav1")
    if encoder is None:
        pytest.skip("this PyAV build has no AV1 encoder (libaom-av1 or libsvtav1)")
    path = tmp_path / "pattern_av1.mp4"
    options = {"cpu-used": "8"} if encoder == "libaom-av1" else {"preset": "10"}
    write_video(path, _frames(16), FPS, codec=encoder, crf=20, options=options)
    info = probe_video(path)
    assert (info.codec, info.num_frames, info.width, info.height) == ("av1", 16, W, H)
    indices = [9, 0, 15, 9]
    assert [_index_of(f) for f in read_frames(path, indices)] == indices


def test_resample_indices() -> None:
    assert resample_indices(30, 30, 10, 5) == [0, 3, 6, 9, 12]
    assert resample_indices(30, 30, 10, 5, start=2) == [2, 5, 8, 11, 14]
    assert resample_indices(10, 10, 10, 10) == list(range(10))
    assert resample_indices(10, 10, 30, 6) == [0, 0, 0, 1, 1, 1]  # upsampling repeats frames
    ntsc = 30000 / 1001
    assert resample_indices(3000, ntsc, ntsc, 3000) == list(range(3000))  # no float off-by-one
    assert resample_indices(100, 25, 10, 4) == [0, 2, 5, 7]  # 2.5-frame steps floor to earlier frame


def test_resample_clip_too_short() -> None:
    with pytest.raises(ValueError, match=r"needs 22 source frames, but only 20 are available"):
        resample_indices(20, 30, 10, 8)
    assert max_clip_start(20, 30, 10, 8) == -1
    assert max_clip_start(30, 30, 10, 5) == 17
    assert resample_indices(30, 30, 10, 5, start=17)[-1] == 29
    with pytest.raises(ValueError, match="needs 31"):
        resample_indices(30, 30, 10, 5, start=18)
    with pytest.raises(ValueError, match="num_frames"):
        resample_indices(30, 30, 10, 0)


def test_num_frames_helpers() -> None:
    assert [n for n in range(0, 18) if valid_num_frames(n)] == [1, 5, 9, 13, 17]
    assert valid_num_frames(9, temporal_stride=8) and not valid_num_frames(5, temporal_stride=8)
    assert [round_num_frames(n) for n in (1, 4, 5, 16, 17)] == [1, 1, 5, 13, 17]
    assert round_num_frames(20, stride=8) == 17
    with pytest.raises(ValueError, match="at least 1"):
        round_num_frames(0)


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(image.shape[0]), torch.arange(image.shape[1]), indexing="ij")
    total = image.sum()
    return float((ys * image).sum() / total), float((xs * image).sum() / total)


@pytest.mark.parametrize(("height", "width"), [(24, 24), (48, 16), (96, 96), (40, 64)])
def test_resize_center_crop_keeps_centre(height: int, width: int) -> None:
    frames = torch.zeros(2, 3, H, W)
    frames[:, :, 20:28, 28:36] = 1.0  # a square centred in the 48x64 frame
    out = resize_center_crop(frames, height, width)
    assert out.shape == (2, 3, height, width)
    cy, cx = _centroid(out[0, 0])
    assert cy == pytest.approx((height - 1) / 2, abs=0.05)
    assert cx == pytest.approx((width - 1) / 2, abs=0.05)


def test_resize_center_crop_errors() -> None:
    frames = torch.zeros(1, 3, H, W)
    with pytest.raises(ValueError, match="multiples of stride 8"):
        resize_center_crop(frames, 30, 32, stride=8)
    assert resize_center_crop(frames, 32, 40, stride=8).shape == (1, 3, 32, 40)
    with pytest.raises(TypeError):
        resize_center_crop(torch.zeros(1, 3, H, W, dtype=torch.uint8), 32, 32)


def test_model_range_round_trip() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    video = to_model_range(frames)
    assert video.shape == (3, 3, 5, 7) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert video[:, 1, 2, 3].tolist() == pytest.approx((frames[1, 2, 3] / 127.5 - 1).tolist())
    np.testing.assert_array_equal(from_model_range(video), frames)
    clamped = from_model_range(torch.tensor([-3.0, 2.0, 0.0]).view(3, 1, 1, 1))
    assert clamped.reshape(-1).tolist() == [0, 255, 128]


def test_load_clip(h264_path: Path) -> None:
    clip = load_clip(h264_path, 5, target_fps=10, start=1, height=32, width=32, stride=8)
    assert clip.shape == (3, 5, 32, 32) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    grey = from_model_range(clip)[:, 20:, 20:].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(grey, [_level(i) for i in (1, 4, 7, 10, 13)], atol=3)
    assert load_clip(h264_path, 3).shape == (3, 3, H, W)  # native rate and size


def test_load_clip_errors(h264_path: Path) -> None:
    with pytest.raises(VideoError, match=r"pattern\.mp4.*needs 31 source frames, but only 30"):
        load_clip(h264_path, 5, target_fps=10, start=18)
    with pytest.raises(VideoError, match=r"pattern\.mp4.*multiple"):
        load_clip(h264_path, 5, height=30, width=32, stride=8)
    with pytest.raises(VideoError, match=r"pattern\.mp4.*stride 7"):
        load_clip(h264_path, 5, stride=7)


def test_write_video_odd_size_pads_to_even(tmp_path: Path) -> None:
    h, w = 33, 47
    ramp = np.linspace(40, 200, w, dtype=np.float32)[None, :, None]
    frames = np.broadcast_to(ramp, (4, h, w, 3)).astype(np.uint8)
    path = tmp_path / "a" / "b" / "odd.mp4"
    assert write_video(path, frames, 12.5) == path
    assert os.listdir(path.parent) == ["odd.mp4"]  # parents created, temporary file renamed away
    info = probe_video(path)
    assert (info.height, info.width, info.num_frames, info.fps) == (34, 48, 4, 12.5)
    back = read_frames(path, [0, 3]).astype(np.int16)
    assert np.abs(back[:, :h, :w] - frames[:2]).max() <= 6
    assert np.abs(back[:, h] - back[:, h - 1]).max() <= 6  # padding repeats the last row
    assert np.abs(back[:, :, w] - back[:, :, w - 1]).max() <= 6  # and the last column


def test_write_video_from_model_tensor(tmp_path: Path) -> None:
    video = to_model_range(_frames(3))
    path = write_video(tmp_path / "tensor.mp4", video, FPS)
    assert [_index_of(f) for f in read_frames(path, [2, 0])] == [2, 0]


def test_write_video_is_reproducible(tmp_path: Path) -> None:
    """The same frames always encode to the same video (libx264's macroblock tree did not: 5
    different files in 6 writes of this clip)."""
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 6.28, 64)
    waves = torch.sin(t[None, None, :, None] * torch.rand(3, 13, 1, 1, generator=g) * 4
                      + t[None, None, None, :] * torch.rand(3, 13, 1, 1, generator=g) * 4)
    video = (0.7 * waves + 0.6 * torch.rand(3, 13, 64, 64, generator=g) - 0.3).clamp(-1, 1)
    decoded = []
    for i in range(6):
        write_video(tmp_path / f"{i}.mp4", video, fps=10)
        decoded.append(read_frames(tmp_path / f"{i}.mp4", range(13)))
    assert all(np.array_equal(decoded[0], d) for d in decoded[1:])


def test_write_video_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        write_video(tmp_path / "broken.mp4", _frames(2), FPS, codec="no-such-codec")
    assert os.listdir(tmp_path) == []


def test_side_by_side() -> None:
    a, b = torch.zeros(3, 4, 8, 10), torch.ones(3, 4, 8, 6)
    out = side_by_side(a, b)
    assert out.shape == (3, 4, 8, 16) and out[..., 10:].eq(1).all()
    with pytest.raises(ValueError, match="equal C, T and H"):
        side_by_side(a, torch.zeros(3, 5, 8, 10))
    with pytest.raises(ValueError, match="at least one"):
        side_by_side()


def test_errors_name_the_file(tmp_path: Path, h264_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    for call in (probe_video, lambda p: read_frames(p, [0]), lambda p: load_clip(p, 1)):
        with pytest.raises(VideoError, match=r"missing\.mp4: no such file"):
            call(missing)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"noise\.mp4: cannot open as a video"):
        probe_video(noise)
    with pytest.raises(VideoError, match=r"noise\.mp4"):
        read_frames(noise, [0])
    with pytest.raises(
        VideoError, match=r"pattern\.mp4: frame index 30 out of range for a video of 30 frames"
    ):
        read_frames(h264_path, [1, 30])
    with pytest.raises(VideoError, match=r"pattern\.mp4: frame index -1"):
        read_frames(h264_path, [-1])


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.m4a"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match=r"tone\.m4a: no video stream"):
        probe_video(path)
