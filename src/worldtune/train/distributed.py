"""Process groups, devices and model layout (FSDP2, activation checkpointing, compile).

Models stay plain `nn.Module`s: everything here is applied from outside, per block, in place.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from worldtune.config import DistConfig
from worldtune.utils.threads import configure_threads

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # True when this process created the process group (and so destroys it at the end).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(cfg: DistConfig) -> DistEnv:
    """Join the torchrun job when there is one (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    configure_threads(cfg.num_threads)  # usable cores / local ranks, before the first parallel op
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistEnv(rank, world_size, local_rank, device, owns_group)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Rank 0's `obj` on every rank."""
    if not env.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean over ranks (gloo has no AVG, so SUM then divide)."""
    if not env.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / env.world_size


def compute_dtype(cfg: DistConfig, device: torch.device) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU unless the config names one."""
    if cfg.mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[cfg.mixed_precision]


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of the outermost ModuleLists in `model` (the transformer blocks of our models).

    Nested lists inside a collected block are left to the block, so FSDP never wraps a parent
    before its children.
    """
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or any(name.startswith(p) for p in taken):
            continue
        for index, child in enumerate(module):
            blocks.append(child)
            taken.append(f"{name}.{index}.")
    return blocks


def prepare_model(model: nn.Module, blocks: list[nn.Module], cfg: DistConfig, env: DistEnv) -> nn.Module:
    """Activation checkpointing and compile per block, then FSDP2 (per block, then root) or a move.

    A model built on `meta` stays there (sharded under FSDP2): the recipe's `Parts.load_after_shard`
    materialises it on `shard_device` and fills it."""
    if cfg.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
    if cfg.compile_blocks:
        for block in blocks:
            block.compile()
    if not env.distributed:
        return model if any(p.is_meta for p in model.parameters()) else model.to(env.device)
    _fully_shard(model, blocks, cfg, env)
    return model


def shard_device(cfg: DistConfig, env: DistEnv) -> torch.device:
    """Where a prepared model's parameters (FSDP2: its shards) live: the CPU under cpu_offload.
    A model sharded on `meta` is materialised there (`utils.weights.to_empty_keeping_buffers`)."""
    return torch.device("cpu") if cfg.cpu_offload and env.distributed else env.device


def _fully_shard(model: nn.Module, blocks: list[nn.Module], cfg: DistConfig, env: DistEnv) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=compute_dtype(cfg, env.device), reduce_dtype=DTYPES[cfg.reduce_dtype]
    )
    options = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": cfg.reshard_after_forward}
    if cfg.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)


@contextlib.contextmanager
def autocast(cfg: DistConfig, env: DistEnv) -> Iterator[None]:
    """Mixed precision for a single process; under FSDP the MixedPrecisionPolicy does it."""
    dtype = compute_dtype(cfg, env.device)
    if env.distributed or dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=env.device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def activation_offload(cfg: DistConfig, env: DistEnv) -> Iterator[None]:
    """With `dist.activation_offload` (seed 1's use_gradient_checkpointing_offload), the tensors
    autograd saves for backward wait in (pinned, on CUDA) CPU memory instead of device memory."""
    if not cfg.activation_offload:
        yield
        return
    with torch.autograd.graph.save_on_cpu(pin_memory=env.device.type == "cuda"):
        yield


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux
