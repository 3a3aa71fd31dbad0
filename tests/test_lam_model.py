"""VVAE latent action model: shapes, straight-through gradients, VQ losses and statistics,
dead-code restart, action ids, predict_delta, per-layer block lists."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from worldtune.models.lam import LamConfig, VectorQuantizer, VVAELatentActionVQVAE

TINY = LamConfig.tiny()


def make_model(seed: int = 0, **overrides) -> VVAELatentActionVQVAE:
    torch.manual_seed(seed)
    return VVAELatentActionVQVAE(LamConfig.tiny(**overrides))


def frames(cfg: LamConfig, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.in_channels, cfg.latent_size, cfg.latent_size)
    x_t = torch.randn(shape, generator=g)
    return x_t, x_t + 0.1 * torch.randn(shape, generator=g)


def test_config_is_omegaconf_friendly():
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LamConfig), {"num_embeddings": 8}))
    assert isinstance(cfg, LamConfig) and cfg.num_embeddings == 8
    assert LamConfig().num_patches == 256 and LamConfig().num_actions == 1728


def test_seed_size_shapes_and_parameter_count():
    cfg = LamConfig()
    with torch.device("meta"):
        meta = VVAELatentActionVQVAE(cfg)
    assert sum(p.numel() for p in meta.parameters()) == 19_841_680
    torch.manual_seed(0)
    model = VVAELatentActionVQVAE(cfg).eval()
    x_t, x_next = frames(cfg, batch=1)
    assert model.input_adapter(x_t).shape == (1, 256, 256)
    with torch.no_grad():
        out = model(x_t, x_next)
    assert out.prediction.shape == (1, 16, 64, 64)
    assert out.quantised.shape == (1, 3, 128)
    assert out.indices.shape == (1, 3) and out.indices.dtype == torch.long


def test_tiny_shapes_and_methods_agree():
    model = make_model().eval()
    x_t, x_next = frames(TINY, batch=3)
    out = model(x_t, x_next)
    vq = model.encode_actions(x_t, x_next)
    assert out.prediction.shape == x_t.shape
    assert vq.quantised.shape == (3, TINY.num_codes, TINY.codebook_dim)
    torch.testing.assert_close(vq.quantised, model.codes_to_quantised(vq.indices))
    torch.testing.assert_close(model.decode(x_t, vq.quantised), out.prediction)
    with pytest.raises(ValueError):
        model(x_t[:, :2], x_next[:, :2])


def test_blocks_are_per_layer_module_lists():
    model = make_model()
    for blocks, depth in ((model.encoder.blocks, TINY.encoder_depth), (model.decoder.blocks, TINY.decoder_depth)):
        assert isinstance(blocks, nn.ModuleList) and len(blocks) == depth
        assert all(isinstance(b, nn.TransformerEncoderLayer) and b.norm_first for b in blocks)


def test_straight_through_gradient_reaches_encoder():
    model = make_model(dead_code_threshold=0).train()
    x_t, x_next = frames(TINY)
    out = model(x_t, x_next)
    F.mse_loss(out.prediction, x_next).backward()  # reconstruction only: no VQ loss term
    for param in (model.encoder.proj_out.weight, model.encoder.action_queries, model.encoder.blocks[0].linear1.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad is None  # the codebook learns only through codebook_loss


def test_vq_losses_match_manual_computation():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_embeddings=5, dim=3, commitment_weight=0.3, dead_code_threshold=0).train()
    z = torch.randn(4, 2, 3, requires_grad=True)
    out = vq(z)
    flat = z.detach().reshape(-1, 3)
    nearest = ((flat[:, None] - vq.codebook.detach()[None]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(out.indices, nearest.reshape(4, 2))
    e = vq.codebook.detach()[nearest]
    expected = ((flat - e) ** 2).mean()
    torch.testing.assert_close(out.codebook_loss, expected)
    torch.testing.assert_close(out.commitment_loss, expected)
    torch.testing.assert_close(out.vq_loss, out.codebook_loss + 0.3 * out.commitment_loss)
    torch.testing.assert_close(out.quantised, e.reshape(4, 2, 3))  # value of the code
    # Gradients: codebook_loss only to the codebook, commitment_loss only to z.
    out.codebook_loss.backward(retain_graph=True)
    assert z.grad is None and vq.codebook.grad.abs().sum() > 0
    vq.codebook.grad = None
    out.commitment_loss.backward(retain_graph=True)
    assert vq.codebook.grad is None
    torch.testing.assert_close(z.grad, 2 * (z.detach() - e.reshape(4, 2, 3)) / z.numel())
    z.grad = None
    out.quantised.sum().backward()  # straight-through: identity gradient
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def _pinned_quantizer(num_embeddings: int = 12, dim: int = 4, threshold: int = 0) -> VectorQuantizer:
    """Codes i * 10 * ones: an input equal to code i picks i."""
    vq = VectorQuantizer(num_embeddings, dim, dead_code_threshold=threshold)
    with torch.no_grad():
        vq.codebook.copy_(10.0 * torch.arange(num_embeddings, dtype=torch.float)[:, None].expand(-1, dim))
    return vq


def test_usage_and_perplexity():
    vq = _pinned_quantizer()
    same = vq(torch.full((6, 3, 4), 20.0))  # all code 2
    assert same.usage.item() == pytest.approx(1 / 12)
    assert same.perplexity.item() == pytest.approx(1.0)
    assert torch.equal(same.indices, torch.full((6, 3), 2))
    codes = torch.arange(4).repeat(3)  # codes 0..3, three times each
    spread = vq(10.0 * codes[:, None].float().expand(-1, 4))
    assert spread.usage.item() == pytest.approx(4 / 12)
    assert spread.perplexity.item() == pytest.approx(4.0)
    half = vq(10.0 * torch.tensor([0.0, 0.0, 0.0, 5.0])[:, None].expand(-1, 4))  # p = (3/4, 1/4)
    assert half.perplexity.item() == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_dead_code_restart_replaces_exactly_stale_codes():
    vq = _pinned_quantizer(threshold=3).train()
    before = vq.codebook.detach().clone()
    torch.manual_seed(0)
    z_first = 10.0 * torch.tensor([0.0, 1.0])[:, None].expand(-1, 4)  # uses codes 0 and 1
    z_stale = 100.0 + torch.randn(16, 4)  # nearest to code 10; codes 0-9 and 11 go unused
    vq(z_first)
    assert torch.equal(vq.steps_since_used[:3], torch.tensor([0, 0, 1]))
    vq(z_stale)
    out = vq(z_stale)
    # Codes 2-9 and 11 unused for 3 steps now; 0 and 1 for 2 steps; 10 in use.
    assert out.restarted.item() == 9
    stale = torch.tensor([False, False] + [True] * 8 + [False, True])
    assert torch.equal(vq.codebook[~stale], before[~stale])
    assert all(any(torch.equal(row, cand) for cand in z_stale) for row in vq.codebook.detach()[stale])
    assert torch.equal(vq.steps_since_used, torch.tensor([2, 2] + [0] * 10))
    # The outputs of the restarting call were computed with the old codebook.
    assert torch.equal(out.indices, torch.full((16,), 10))
    # In eval mode nothing changes, however long codes go unused.
    vq.eval()
    frozen, counters = vq.codebook.detach().clone(), vq.steps_since_used.clone()
    for _ in range(5):
        assert vq(z_first).restarted.item() == 0
    assert torch.equal(vq.codebook, frozen) and torch.equal(vq.steps_since_used, counters)
    assert "quantizer.steps_since_used" in make_model().state_dict()


def test_dead_code_restart_in_model_training_step():
    model = make_model(dead_code_threshold=1).train()
    x_t, x_next = frames(TINY)
    out = model(x_t, x_next)
    assert out.restarted.item() == TINY.num_embeddings - out.indices.unique().numel()
    (F.mse_loss(out.prediction, x_next) + out.vq_loss).backward()  # in-place restart keeps autograd valid
    assert model.quantizer.codebook.grad is not None


def test_run_restart_counts_optimiser_steps_over_all_micro_batches():
    from worldtune.systems.lam.restart import DeadCodeRestart

    vq = _pinned_quantizer(threshold=0).train()  # the run restarts from outside, after the step
    before = vq.codebook.detach().clone()
    restart = DeadCodeRestart(threshold=2)
    assert restart.apply(vq) == 0  # nothing recorded yet: no step counted
    code = lambda i, n: torch.full((n, 4), 10.0 * i)  # noqa: E731  (n inputs that pick code i)
    candidates = torch.cat([code(0, 3), 50.0 + torch.randn(5, 4)])  # the second micro-batch picks 5
    for _ in range(2):  # two optimiser steps of two micro-batches each
        for z in (code(0, 3), candidates[3:]):
            out = vq(z)
            assert out.restarted.item() == 0 and torch.equal(out.encoded, z)
            restart.record(out.indices, out.encoded, vq.num_embeddings)
        restarted = restart.apply(vq)
    assert restarted == 10  # all but codes 0 and 5, unused for 2 steps
    kept = torch.zeros(12, dtype=torch.bool)
    kept[[0, 5]] = True
    assert torch.equal(vq.codebook[kept], before[kept])
    assert all(any(torch.equal(row, c) for c in candidates) for row in vq.codebook.detach()[~kept])
    assert torch.equal(vq.steps_since_used, torch.zeros(12, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        DeadCodeRestart(0)


def test_action_ids_are_a_bijection():
    model = make_model()
    k, n = TINY.num_embeddings, TINY.num_codes
    triples = torch.tensor(list(itertools.product(range(k), repeat=n)))
    ids = model.action_ids(triples)
    assert ids.dtype == torch.long
    assert ids.min().item() == 0 and ids.max().item() == k**n - 1 == 1727
    assert ids.unique().numel() == k**n
    assert torch.equal(model.action_codes(ids), triples)
    assert model.action_ids(torch.tensor([[1, 2, 3]])).item() == 1 * 144 + 2 * 12 + 3


def test_predict_delta_with_zero_output_layer_returns_x_t():
    model = make_model().eval()
    nn.init.zeros_(model.output_adapter.conv.weight)
    nn.init.zeros_(model.output_adapter.conv.bias)
    x_t, x_next = frames(TINY)
    with torch.no_grad():
        assert torch.equal(model(x_t, x_next).prediction, x_t)
        absolute = make_model(predict_delta=False).eval()
        absolute.load_state_dict(model.state_dict())
        assert torch.equal(absolute(x_t, x_next).prediction, torch.zeros_like(x_t))


def test_inputs_are_not_normalised():
    model = make_model().eval()
    x_t, x_next = frames(TINY)
    with torch.no_grad():
        small = model.input_adapter(x_t)
        big = model.input_adapter(10 * x_t)
    bias = model.input_adapter.conv.bias
    torch.testing.assert_close(big - bias[None, None], 10 * (small - bias[None, None]))
