"""Deterministic, resumable data order.

One permutation per epoch (the same on every rank, seeded by seed and epoch); micro-batch m of the
epoch covers global positions [m*B*W, (m+1)*B*W), rank r taking its B of them. The loader's position
is the number of global positions consumed, so a run resumes mid-epoch at the exact next sample,
even with a different number of ranks. Every item is produced under an RNG seeded by
(seed, epoch, position), so random crops and clip starts do not depend on workers or resumes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset


class ItemKey(NamedTuple):
    epoch: int
    position: int
    index: int


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike hash())."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**64 - 1)
        value = (value * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return value >> 1


def epoch_order(num_items: int, repeat: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Item index at each position of an epoch: `repeat` passes, each a permutation."""
    if not shuffle:
        return torch.arange(num_items).repeat(repeat)
    passes = []
    for p in range(repeat):
        generator = torch.Generator().manual_seed(derive_seed(seed, epoch, p))
        passes.append(torch.randperm(num_items, generator=generator))
    return torch.cat(passes)


def micro_batches_per_epoch(num_items: int, repeat: int, batch_size: int, world_size: int) -> int:
    return (num_items * repeat) // (batch_size * world_size)


class EpochBatchSampler:
    """Batch sampler over ItemKeys for one rank; `set_epoch` positions it before each iteration."""

    def __init__(self, num_items: int, batch_size: int, *, rank: int, world_size: int, seed: int,
                 repeat: int = 1, shuffle: bool = True, max_micro_batches: int | None = None) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.repeat = repeat
        self.shuffle = shuffle
        full = micro_batches_per_epoch(num_items, repeat, batch_size, world_size)
        self.micro_batches = full if max_micro_batches is None else min(full, max_micro_batches)
        self.epoch = 0
        self.start_position = 0

    def set_epoch(self, epoch: int, start_position: int = 0) -> None:
        self.epoch = epoch
        self.start_position = start_position

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        end = self.micro_batches * self.global_batch
        return max(0, (end - self.start_position) // self.global_batch)

    def __iter__(self) -> Iterator[list[ItemKey]]:
        order = epoch_order(self.num_items, self.repeat, self.seed, self.epoch, self.shuffle).tolist()
        end = self.micro_batches * self.global_batch
        for base in range(self.start_position, end - self.global_batch + 1, self.global_batch):
            first = base + self.rank * self.batch_size
            yield [ItemKey(self.epoch, pos, order[pos]) for pos in range(first, first + self.batch_size)]


class SeededDataset(Dataset):
    """Wraps a map-style dataset; item randomness is a function of (seed, epoch, position).

    The caller's RNG states are saved once per batch (`__getitems__`, which the DataLoader uses)
    and restored afterwards: saving numpy's state costs ~50 us, seeding ~3 us. Only the CPU torch
    generator is reseeded (`torch.manual_seed` would also reseed, and leave changed, every CUDA
    generator, and costs ~80 us in deferred-seeding bookkeeping).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: ItemKey) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[ItemKey]) -> list[Any]:
        generator = torch.default_generator
        torch_state, py_state, np_state = generator.get_state(), random.getstate(), np.random.get_state()
        try:
            items = []
            for key in keys:
                item_seed = derive_seed(self.seed, key.epoch, key.position)
                generator.manual_seed(item_seed)
                random.seed(item_seed)
                np.random.seed(item_seed % 2**32)
                items.append(self.dataset[key.index])
            return items
        finally:
            generator.set_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in nested dicts / lists / tuples moved to `device`; the rest untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
