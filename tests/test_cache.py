"""Latent cache: build, read back, resume, stale detection, CachedDataset and DataLoader workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader

from worldtune.data.cache import (
    CachedDataset,
    CacheMissError,
    LatentCache,
    StaleCacheError,
    build_cache,
)

SETTINGS = {"vae": "wan2.1", "size": [32, 48], "text": {"model": "umt5", "max_len": 16}}


def _item(i: int) -> dict[str, torch.Tensor]:
    """Deterministic tensors per index: bf16 latents and a variable-length text embedding."""
    g = torch.Generator().manual_seed(i)
    return {
        "latents": torch.randn(4, 2, 3, 3, generator=g).to(torch.bfloat16),
        "text_emb": torch.randn(1 + i % 5, 8, generator=g),
        "label": torch.tensor([i], dtype=torch.int64),
    }


def _keys(n: int) -> list[str]:
    # Keys with characters that are awkward in tensor names and file paths.
    return [f"clips/ep {i}/video.mp4#sha=ab{i:03d}|fps=8/size=32x48" for i in range(n)]


class Counter:
    """A compute function that records its calls and can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        self.calls.append(list(indices))
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("boom")
        # Views of one batch tensor, as an encoder returns them: the cache must copy them.
        batch = torch.stack([_item(i)["latents"] for i in indices])
        return [{**_item(i), "latents": batch[j]} for j, i in enumerate(indices)]

    @property
    def computed(self) -> list[int]:
        return [i for call in self.calls for i in call]


def _assert_items(cache: LatentCache, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        got, want = cache.get(key), _item(i)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert torch.equal(got[name], want[name])


def test_build_and_read_back_exactly(tmp_path: Path) -> None:
    keys = _keys(7)
    stats = build_cache(tmp_path, keys, Counter(), SETTINGS, batch_size=3, shard_size=4, progress=False)
    assert (stats.total, stats.computed, stats.reused) == (7, 7, 0)
    assert stats.bytes_written > 0
    cache = LatentCache(tmp_path, SETTINGS)
    assert len(cache) == 7 and sorted(cache.keys()) == sorted(keys)
    assert keys[3] in cache and "nope" not in cache
    assert cache.missing([keys[0], "nope"]) == ["nope"]
    _assert_items(cache, keys)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["num_items"] == 7 and meta["settings"] == SETTINGS and meta["version"] == 1


def test_get_returns_independent_copies(tmp_path: Path) -> None:
    keys = _keys(2)
    build_cache(tmp_path, keys, Counter(), SETTINGS, progress=False)
    cache = LatentCache(tmp_path)
    cache.get(keys[0])["text_emb"].add_(100.0)
    assert torch.equal(cache.get(keys[0])["text_emb"], _item(0)["text_emb"])


def test_shards_split_at_shard_size(tmp_path: Path) -> None:
    build_cache(tmp_path, _keys(10), Counter(), SETTINGS, batch_size=3, shard_size=4, progress=False)
    shards = sorted(p.name for p in tmp_path.glob("shard-*.safetensors"))
    assert shards == [f"shard-{n:05d}.safetensors" for n in range(3)]
    sizes = []
    for shard in shards:
        with safe_open(str(tmp_path / shard), framework="pt") as f:
            sizes.append(len({name.split("/", 1)[0] for name in f.keys()}))
    assert sizes == [4, 4, 2]
    index = json.loads((tmp_path / "index.json").read_text())
    assert [shard for shard, _ in index.values()].count("shard-00002.safetensors") == 2
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_resume_after_error_computes_only_missing(tmp_path: Path) -> None:
    keys = _keys(10)
    failing = Counter(fail_on_call=3)
    with pytest.raises(RuntimeError, match="boom"):
        build_cache(tmp_path, keys, failing, SETTINGS, batch_size=2, shard_size=3, progress=False)
    assert failing.computed == [0, 1, 2, 3, 4, 5]  # the third call raised
    assert len(LatentCache(tmp_path)) == 4  # both finished batches were kept

    resumed = Counter()
    stats = build_cache(tmp_path, keys, resumed, SETTINGS, batch_size=2, shard_size=3, progress=False)
    assert resumed.computed == [4, 5, 6, 7, 8, 9]
    assert (stats.computed, stats.reused) == (6, 4)
    _assert_items(LatentCache(tmp_path, SETTINGS), keys)

    again = Counter()
    assert build_cache(tmp_path, keys, again, SETTINGS, progress=False).computed == 0
    assert again.calls == []


def test_stale_settings_name_the_differing_key(tmp_path: Path) -> None:
    build_cache(tmp_path, _keys(2), Counter(), SETTINGS, progress=False)
    changed = {**SETTINGS, "text": {"model": "umt5", "max_len": 32}}
    with pytest.raises(StaleCacheError, match=r"text\.max_len") as err:
        LatentCache(tmp_path, changed)
    assert "vae" not in str(err.value) and "worldtune prepare cache" in str(err.value)
    with pytest.raises(StaleCacheError, match="vae"):
        build_cache(tmp_path, _keys(2), Counter(), {**SETTINGS, "vae": "wan2.2"}, progress=False)
    LatentCache(tmp_path, dict(SETTINGS, size=(32, 48)))  # a tuple equals the stored list


def test_missing_key_raises_clear_error(tmp_path: Path) -> None:
    build_cache(tmp_path, _keys(2), Counter(), SETTINGS, progress=False)
    cache = LatentCache(tmp_path)
    with pytest.raises(CacheMissError, match="changed or the cache is incomplete") as err:
        cache.get("clips/new.mp4#sha=ff")
    assert isinstance(err.value, KeyError)
    assert "worldtune prepare cache CONFIG" in str(err.value)
    with pytest.raises(StaleCacheError, match="no latent cache"):
        LatentCache(tmp_path / "absent")


def test_shared_tensors_round_trip(tmp_path: Path) -> None:
    empty = torch.randn(3, 8).to(torch.bfloat16)
    build_cache(tmp_path, _keys(1), Counter(), SETTINGS, shared={"empty_text_emb": empty}, progress=False)
    shared = LatentCache(tmp_path).shared()
    assert shared.keys() == {"empty_text_emb"} and torch.equal(shared["empty_text_emb"], empty)
    assert LatentCache(tmp_path).get(_keys(1)[0]).keys() == {"latents", "text_emb", "label"}


class Source:
    """A dataset that gives keys and metadata but must never decode (its __getitem__ raises)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def clip_key(self, index: int) -> str:
        return _keys(self.n)[index]

    def item_metadata(self, index: int) -> dict[str, object]:
        return {"index": index, "path": f"ep {index}.mp4"}

    def __getitem__(self, index: int) -> object:
        raise AssertionError("CachedDataset decoded a video")


def test_cached_dataset_never_decodes(tmp_path: Path) -> None:
    build_cache(tmp_path, _keys(5), Counter(), SETTINGS, progress=False)
    dataset = CachedDataset(Source(5), LatentCache(tmp_path, SETTINGS))
    assert len(dataset) == 5
    item = dataset[3]
    assert item["index"] == 3 and item["path"] == "ep 3.mp4"
    assert torch.equal(item["latents"], _item(3)["latents"])
    with pytest.raises(CacheMissError, match="1 of 6 items"):
        CachedDataset(Source(6), LatentCache(tmp_path))


def test_dataloader_spawn_workers(tmp_path: Path) -> None:
    build_cache(tmp_path, _keys(4), Counter(), SETTINGS, shard_size=2, progress=False)
    cache = LatentCache(tmp_path)
    cache.get(_keys(4)[0])  # open a handle in the parent: it must not be pickled
    dataset = CachedDataset(Source(4), cache)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=2, multiprocessing_context="spawn", shuffle=False
    )
    items = list(loader)
    assert [item["index"] for item in items] == [0, 1, 2, 3]
    for i, item in enumerate(items):
        assert torch.equal(item["text_emb"], _item(i)["text_emb"])
        assert item["latents"].dtype == torch.bfloat16
