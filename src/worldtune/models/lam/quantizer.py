"""A small vector quantiser with separate codebook / commitment losses and dead-code restart.

One codebook is shared by all code positions of an action: a code means the same thing whichever
slot it sits in, every slot's traffic keeps all entries in use (fewer dead codes than one small
codebook per slot), and the slot is told apart downstream by a learned position embedding.

Losses are means over elements (`F.mse_loss`), with `sg` the stop-gradient:

    codebook_loss   = ||sg(z) - e||^2     moves the codes towards the encoder outputs
    commitment_loss = ||z - sg(e)||^2     keeps the encoder close to its codes
    vq_loss         = codebook_loss + commitment_weight * commitment_loss

The quantised output is `z + sg(e - z)` (straight-through: value e, gradient of z).

Dead-code restart: the buffer `steps_since_used` (saved in checkpoints) counts, per code, the
training-mode forward calls since the code was last chosen (with gradient accumulation that is
micro-batches, not optimiser steps). A code that reaches `dead_code_threshold` is overwritten by an
encoder output of the current batch picked with the global torch RNG, and its counter is reset.
Nothing changes in eval mode. The write is an in-place parameter update inside forward: right in one
process, wrong under data parallelism (each rank would restart from its own batch, and under FSDP
the write would hit the gathered copy and be lost). There, set `dead_code_threshold` to 0 and
restart from outside, after the optimiser step, with `advance_unused` and `replace_codes` on usage
counts summed over the ranks (`recipes/lam_restart.py` does this for LAM runs); every output carries
the encoder outputs (`encoded`) such a restart draws from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VQOutput:
    """What `VectorQuantizer` (and `VVAELatentActionVQVAE.encode_actions`) return."""

    quantised: torch.Tensor  # [B, num_codes, codebook_dim], straight-through
    indices: torch.Tensor  # [B, num_codes] long
    vq_loss: torch.Tensor  # 0-d: codebook_loss + commitment_weight * commitment_loss
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    usage: torch.Tensor  # 0-d, detached: fraction of the codebook chosen at least once in the batch
    perplexity: torch.Tensor  # 0-d, detached: exp(entropy of the mean one-hot code distribution)
    restarted: torch.Tensor  # 0-d long: codes restarted by this call (always 0 in eval mode)
    encoded: torch.Tensor  # [..., dim] detached encoder outputs: what a restart draws new codes from


class VectorQuantizer(nn.Module):
    def __init__(self, num_embeddings: int, dim: int, commitment_weight: float = 0.25,
                 dead_code_threshold: int = 100) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.dim = dim
        self.commitment_weight = commitment_weight
        self.dead_code_threshold = dead_code_threshold
        self.codebook = nn.Parameter(torch.empty(num_embeddings, dim))
        self.register_buffer("steps_since_used", torch.zeros(num_embeddings, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / self.num_embeddings
        nn.init.uniform_(self.codebook, -bound, bound)
        self.steps_since_used.zero_()

    def forward(self, z: torch.Tensor) -> VQOutput:
        """Quantise `z` of shape [..., dim]; indices have shape `z.shape[:-1]`."""
        flat = z.reshape(-1, self.dim).float()
        codebook = self.codebook.float()
        with torch.no_grad():
            indices = torch.cdist(flat, codebook).argmin(dim=-1)
        codes = F.embedding(indices, codebook)  # gradients reach the codebook, not saved weights
        codebook_loss = F.mse_loss(codes, flat.detach())
        commitment_loss = F.mse_loss(flat, codes.detach())
        quantised = flat + (codes - flat).detach()

        counts = torch.bincount(indices, minlength=self.num_embeddings)
        probs = counts.float() / indices.numel()
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
        restarted = torch.zeros((), dtype=torch.long, device=z.device)
        if self.training and self.dead_code_threshold > 0:
            restarted = self.restart_dead_codes(flat.detach(), counts)

        return VQOutput(
            quantised=quantised.reshape(z.shape).to(z.dtype),
            indices=indices.reshape(z.shape[:-1]),
            vq_loss=codebook_loss + self.commitment_weight * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            usage=(counts > 0).float().mean(),
            perplexity=torch.exp(entropy).detach(),
            restarted=restarted,
            encoded=z.detach(),
        )

    @torch.no_grad()
    def restart_dead_codes(self, candidates: torch.Tensor, counts: torch.Tensor,
                           threshold: int | None = None) -> torch.Tensor:
        """Advance the unused-step counters by one step with per-code `counts` [num_embeddings], then
        overwrite the codes unused for `threshold` (default: `dead_code_threshold`) steps by random
        rows of `candidates` [N, dim]. Returns how many codes were restarted (0-d long tensor).
        """
        dead = self.advance_unused(counts, threshold)
        # Draw a candidate for every code and keep it only where dead: no host sync on `dead`.
        picks = torch.randint(candidates.shape[0], (self.num_embeddings,), device=candidates.device)
        self.replace_codes(dead, candidates[picks])
        return dead.sum()

    @torch.no_grad()
    def advance_unused(self, counts: torch.Tensor, threshold: int | None = None) -> torch.Tensor:
        """One step of the unused-step counters given per-code `counts` [num_embeddings]; returns the
        codes unused for `threshold` (default: `dead_code_threshold`) steps, a bool [num_embeddings]."""
        threshold = self.dead_code_threshold if threshold is None else threshold
        if threshold < 1:
            raise ValueError(f"dead-code threshold must be >= 1, got {threshold}")
        self.steps_since_used.add_(1).masked_fill_(counts > 0, 0)
        return self.steps_since_used >= threshold

    @torch.no_grad()
    def replace_codes(self, dead: torch.Tensor, fresh: torch.Tensor) -> None:
        """Rows `dead` (bool [num_embeddings]) of the codebook become those of `fresh` [num_embeddings,
        dim]; their counters restart from 0."""
        self.codebook.copy_(torch.where(dead[:, None], fresh.to(self.codebook.dtype), self.codebook))
        self.steps_since_used.masked_fill_(dead, 0)
