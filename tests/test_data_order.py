"""The resumable data order: epochs, ranks, positions, per-item seeding."""

from __future__ import annotations

import torch

from worldtune.train.data import EpochBatchSampler, ItemKey, SeededDataset, epoch_order


def flatten(sampler) -> list[int]:
    return [key.index for batch in sampler for key in batch]


def test_ranks_split_each_global_batch_without_overlap():
    rank0 = EpochBatchSampler(20, 2, rank=0, world_size=2, seed=1)
    rank1 = EpochBatchSampler(20, 2, rank=1, world_size=2, seed=1)
    single = EpochBatchSampler(20, 4, rank=0, world_size=1, seed=1)
    for b0, b1, b in zip(rank0, rank1, single, strict=True):
        assert [k.index for k in b0 + b1] == [k.index for k in b]
    assert len(single) == 5


def test_start_position_resumes_mid_epoch_even_with_another_world_size():
    full = flatten(EpochBatchSampler(24, 2, rank=0, world_size=1, seed=3))
    resumed = EpochBatchSampler(24, 2, rank=0, world_size=1, seed=3)
    resumed.set_epoch(0, start_position=10)
    assert flatten(resumed) == full[10:]
    two = [EpochBatchSampler(24, 1, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for sampler in two:
        sampler.set_epoch(0, start_position=10)
    merged = [k.index for pair in zip(*two, strict=True) for batch in pair for k in batch]
    assert merged == full[10:]


def test_epochs_reshuffle_and_repeat_visits_each_item_per_pass():
    order0 = epoch_order(10, 3, seed=5, epoch=0, shuffle=True)
    order1 = epoch_order(10, 3, seed=5, epoch=1, shuffle=True)
    assert not torch.equal(order0, order1)
    for p in range(3):
        assert sorted(order0[p * 10:(p + 1) * 10].tolist()) == list(range(10))
    assert epoch_order(4, 2, seed=5, epoch=0, shuffle=False).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


class RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(3)


def test_item_randomness_depends_on_position_not_on_history():
    data = SeededDataset(RandomItems(), seed=9)
    first = data[ItemKey(0, 5, 2)]
    torch.rand(100)  # the caller's RNG moves on
    state = torch.get_rng_state()
    assert torch.equal(data[ItemKey(0, 5, 2)], first)
    assert torch.equal(torch.get_rng_state(), state)  # and is left untouched
    assert not torch.equal(data[ItemKey(1, 5, 2)], first)
