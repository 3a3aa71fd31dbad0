"""The trainer's DataLoader: workers with one thread each, and bad data reported as it was raised.

A user-data error raised in a DataLoader worker (`DataError(path, problem)`, a stale cache) is
returned as the batch instead (`CarriedError`) and raised again in the main process, so the user
sees one line naming the file, not the worker's traceback wrapped in a RuntimeError.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from worldtune.config import RunConfig
from worldtune.data.errors import DataError, StaleCacheError
from worldtune.train.data import EpochBatchSampler, SeededDataset
from worldtune.train.distributed import DistEnv
from worldtune.train.recipe import Parts
from worldtune.utils.logging import get_logger
from worldtune.utils.threads import worker_init_fn

log = get_logger()


def report_skipped(dataset: Any, epoch: int) -> None:
    """End-of-epoch report of the samples a dataset skipped (`data.on_bad_sample: skip`)."""
    while dataset is not None and not hasattr(dataset, "skipped"):
        dataset = getattr(dataset, "source", None) or getattr(dataset, "dataset", None)
    skipped = getattr(dataset, "skipped", None)
    if skipped:
        reasons = "; ".join(f"{name}: {why}" for name, why in list(skipped)[:5])
        log.warning("epoch %d: %d bad samples skipped so far (in this process): %s%s", epoch, len(skipped),
                    reasons, " ..." if len(skipped) > 5 else "")


# Errors in the user's data (files, caches), carried out of DataLoader workers whole.
USER_DATA_ERRORS = (DataError, StaleCacheError)


@dataclass
class CarriedError:
    """What a worker returns instead of a batch when loading it raised one of USER_DATA_ERRORS.

    Torch re-raises a worker's exception as `type(message)`, where the message holds the worker's
    whole traceback: a `DataError(path, problem)` cannot be built from one argument, so it arrives
    as a RuntimeError of some 40 lines. Returned as the batch, the error crosses the worker queue
    pickled (DataError defines `__reduce__`) and the trainer raises it as it was raised.
    """

    error: BaseException
    worker_traceback: str


class CarryDataErrors(Dataset):
    """Wraps the trainer's SeededDataset: a user-data error while loading a batch becomes its batch."""

    def __init__(self, dataset: SeededDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Any]) -> list[Any]:
        try:
            return self.dataset.__getitems__(keys)
        except USER_DATA_ERRORS as err:
            return [CarriedError(err, traceback.format_exc())]


class CollateOrCarry:
    """The recipe's collate function, passing a CarriedError through (a class: workers pickle it)."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn if collate_fn is not None else default_collate

    def __call__(self, items: list[Any]) -> Any:
        if items and isinstance(items[0], CarriedError):
            return items[0]
        return self.collate_fn(items)


def raise_carried_error(batch: Any) -> Any:
    """The batch itself, or the error a worker carried instead of it, raised here."""
    if isinstance(batch, CarriedError):
        log.debug("raised in a DataLoader worker:\n%s", batch.worker_traceback)
        raise batch.error
    return batch


def make_loader(dataset: SeededDataset, sampler: EpochBatchSampler, parts: Parts, cfg: RunConfig,
                env: DistEnv) -> DataLoader:
    workers = cfg.train.num_workers
    return DataLoader(
        CarryDataErrors(dataset),
        batch_sampler=sampler,
        collate_fn=CollateOrCarry(parts.collate_fn),
        num_workers=workers,
        # Video decoders are not fork-safe; spawn keeps workers clean.
        multiprocessing_context="spawn" if workers > 0 else None,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn,  # one torch thread per worker: they share the trainer's cores
        pin_memory=env.device.type == "cuda",
        # A private generator: creating an iterator must not advance the training RNG.
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now. Left to interpreter exit after an error, they are
    terminated while multiprocessing joins them, and torch's SIGCHLD handler prints a second traceback
    ("DataLoader worker ... is killed by signal: Terminated") under the user's one-line error."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
