"""Run by torchrun (tests/test_lam.py): `DeadCodeRestart` on two ranks with different batches.

Each rank uses one code of its own (rank r: code r) and offers its own candidates (all equal to
100 + r); after one step with threshold 1, every rank must hold the same counters and codebook,
with every other code replaced by one of rank 0's candidates. Writes `<out>/rank<r>.pt`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from worldtune.models.lam import VectorQuantizer
from worldtune.systems.lam.restart import DeadCodeRestart

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)  # different RNG streams: only the broadcast can make the rows agree
quantizer = VectorQuantizer(num_embeddings=6, dim=3, dead_code_threshold=0)
with torch.no_grad():
    quantizer.codebook.copy_(torch.arange(6.0)[:, None].expand(-1, 3))
restart = DeadCodeRestart(threshold=1)
restart.record(torch.full((4,), rank), torch.full((4, 3), 100.0 + rank), quantizer.num_embeddings)
restarted = restart.apply(quantizer)
torch.save({"restarted": restarted, "codebook": quantizer.codebook.detach().clone(),
            "steps_since_used": quantizer.steps_since_used.clone()}, Path(sys.argv[1]) / f"rank{rank}.pt")
dist.destroy_process_group()
