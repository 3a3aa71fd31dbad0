"""Dead-code restart for LAM training runs: after the optimiser step, the same on one process and
under torchrun.

The quantiser can restart its own dead codes inside forward, but only in one process (see
`models/lam/quantizer.py`). LAM runs restart here instead, once per optimiser step:

1. every micro-batch's code choices and encoder outputs are recorded (`record`);
2. after the optimiser step the per-code counts are summed over the ranks, so every rank advances
   the same unused-step counters and finds the same dead codes;
3. replacements are drawn from rank 0's encoder outputs and broadcast;
4. they are written into the codebook, a plain tensor or an FSDP2 shard (`DTensor`).

So `dead_code_threshold` counts optimiser steps in a run, whatever the number of ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from worldtune.models.lam.quantizer import VectorQuantizer


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class DeadCodeRestart:
    """Collects one optimiser step's code usage and restarts the codes unused for `threshold` steps.

    The trainer calls `apply` only after applied steps: the usage of a skipped (non-finite) step
    counts toward the next one.
    """

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"dead-code threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self._counts: torch.Tensor | None = None
        self._candidates: list[torch.Tensor] = []

    def record(self, indices: torch.Tensor, encoded: torch.Tensor, num_embeddings: int) -> None:
        """One micro-batch: chosen code `indices` [...] and the encoder outputs `encoded` [..., dim]."""
        counts = torch.bincount(indices.reshape(-1), minlength=num_embeddings)
        self._counts = counts if self._counts is None else self._counts + counts
        self._candidates.append(encoded.detach().reshape(-1, encoded.shape[-1]))

    @torch.no_grad()
    def apply(self, quantizer: VectorQuantizer) -> int:
        """Advance the counters by one step and restart the dead codes; returns how many (0 when
        nothing was recorded since the last call). Every rank must call it (it runs collectives)."""
        if self._counts is None:
            return 0
        counts, candidates = self._counts, torch.cat(self._candidates)
        self._counts, self._candidates = None, []
        if _distributed():
            dist.all_reduce(counts)  # usage over the global batch
        dead = quantizer.advance_unused(counts, self.threshold)
        picks = torch.randint(candidates.shape[0], (quantizer.num_embeddings,), device=candidates.device)
        fresh = candidates[picks].to(torch.float32).contiguous()
        if _distributed():
            dist.broadcast(fresh, src=0)  # every rank writes the same rows
        if isinstance(quantizer.codebook, DTensor):
            _write_shard(quantizer.codebook, dead, fresh)
            quantizer.steps_since_used.masked_fill_(dead, 0)
        else:
            quantizer.replace_codes(dead, fresh)
        return int(dead.sum())


def _write_shard(codebook, dead: torch.Tensor, fresh: torch.Tensor) -> None:
    """`codebook[dead] = fresh[dead]` for an FSDP2-sharded codebook: each rank writes its own rows."""
    full = codebook.full_tensor()
    rows = torch.where(dead[:, None], fresh.to(full.dtype), full)
    codebook.to_local().copy_(distribute_tensor(rows, codebook.device_mesh, codebook.placements).to_local())
