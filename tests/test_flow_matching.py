"""Flow-matching training pieces: shift, timestep sampling, noising, loss, weights, TI2V, dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worldtune.diffusion import (
    TimestepSampler,
    add_noise,
    drop_conditions,
    flow_matching_loss,
    loss_weight,
    per_sample_mse,
    shift_sigmas,
    ti2v_loss_mask,
    ti2v_noisy_latents,
    ti2v_token_timesteps,
    to_timestep,
    velocity_target,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- shift, timesteps


def test_shift_formula_values():
    assert shift_sigmas(0.5, 3.0) == pytest.approx(0.75)  # 1.5 / (1 + 2 * 0.5)
    assert shift_sigmas(0.2, 5.0) == pytest.approx(1.0 / 1.8)
    s = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_sigmas(s, 1.0), s)
    shifted = shift_sigmas(s, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert bool((shifted[1:-1] > s[1:-1]).all())  # shift > 1 moves levels towards noise
    assert to_timestep(0.25) == 250


def test_uniform_sampler_range_shape_and_determinism():
    sampler = TimestepSampler(mode="uniform")
    sigma = sampler.sample(4096, generator=_gen(1))
    assert sigma.shape == (4096,) and sigma.dtype == torch.float32
    assert float(sigma.min()) >= 0 and float(sigma.max()) <= 1
    assert sigma.mean().item() == pytest.approx(0.5, abs=0.02)
    torch.testing.assert_close(sampler.sample(4096, generator=_gen(1)), sigma, rtol=0, atol=0)
    assert not torch.equal(sampler.sample(4096, generator=_gen(2)), sigma)
    _, t = sampler.sample_timesteps(8, generator=_gen(1))
    torch.testing.assert_close(t, sigma[:8] * 1000)


def test_sampler_shift_and_clamp_apply_after_sampling():
    base = TimestepSampler(mode="uniform").sample(1000, generator=_gen(3))
    shifted = TimestepSampler(mode="uniform", shift=3.0).sample(1000, generator=_gen(3))
    torch.testing.assert_close(shifted, shift_sigmas(base, 3.0))
    clamped = TimestepSampler(mode="uniform", shift=3.0, min_sigma=0.2, max_sigma=0.9)
    sigma = clamped.sample(1000, generator=_gen(3))
    torch.testing.assert_close(sigma, shift_sigmas(base, 3.0).clamp(0.2, 0.9))
    assert float(sigma.min()) == pytest.approx(0.2) and float(sigma.max()) == pytest.approx(0.9)


def test_logit_normal_sampler_mean():
    sampler = TimestepSampler(mode="logit_normal", logit_mean=0.5, logit_std=0.8)
    sigma = sampler.sample(20000, generator=_gen(4))
    assert float(sigma.min()) > 0 and float(sigma.max()) < 1
    logits = torch.logit(sigma.double())
    assert logits.mean().item() == pytest.approx(0.5, abs=0.03)
    assert logits.std().item() == pytest.approx(0.8, abs=0.03)


@pytest.mark.parametrize(
    "kwargs", [{"mode": "cosine"}, {"shift": 0.0}, {"logit_std": 0.0}, {"min_sigma": 0.8, "max_sigma": 0.2}]
)
def test_sampler_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        TimestepSampler(**kwargs)


# --------------------------------------------------------------------------- noising


def test_add_noise_and_velocity_identities():
    x0, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    sigma = torch.tensor([0.0, 0.3, 1.0])
    x_t = add_noise(x0, noise, sigma)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[2], noise[2])
    torch.testing.assert_close(x_t[1], 0.7 * x0[1] + 0.3 * noise[1])
    v = velocity_target(x0, noise)
    torch.testing.assert_close(v, noise - x0)
    # The path is straight: moving sigma by d moves x_t by d * v, and x0 = x_t - sigma * v.
    torch.testing.assert_close(add_noise(x0, noise, sigma + 0.1) - x_t, 0.1 * v)
    torch.testing.assert_close(x_t - sigma.view(-1, 1, 1, 1, 1) * v, x0)
    # A scalar sigma and a per-frame sigma broadcast too.
    torch.testing.assert_close(add_noise(x0, noise, 0.5), 0.5 * (x0 + noise))
    per_frame = torch.tensor([0.2, 0.6]).view(1, 1, 2, 1, 1)
    torch.testing.assert_close(
        add_noise(x0, noise, per_frame)[:, :, 1], 0.4 * x0[:, :, 1] + 0.6 * noise[:, :, 1]
    )


# --------------------------------------------------------------------------- loss


def test_loss_without_mask_is_mse():
    pred, x0, noise = (torch.randn(2, 3, 4, 4, 4) for _ in range(3))
    loss = flow_matching_loss(pred, x0, noise)
    torch.testing.assert_close(loss, F.mse_loss(pred, noise - x0))


def test_loss_with_mask_and_weight_equals_manual():
    pred, x0, noise = (torch.randn(2, 3, 4, 4, 4) for _ in range(3))
    mask = ti2v_loss_mask(pred.shape)
    weight = torch.tensor([0.5, 2.0])
    loss = flow_matching_loss(pred, x0, noise, weight=weight, mask=mask)
    err = (pred - (noise - x0)) ** 2
    manual = torch.stack([err[b, :, 1:].mean() * weight[b] for b in range(2)]).mean()
    torch.testing.assert_close(loss, manual)
    # Frame 0 is ignored entirely.
    pred2 = pred.clone()
    pred2[:, :, 0] += 100.0
    torch.testing.assert_close(flow_matching_loss(pred2, x0, noise, weight=weight, mask=mask), loss)
    # An all-zero mask gives 0, not NaN.
    assert per_sample_mse(pred, x0, torch.zeros(2, 1, 4, 1, 1)).tolist() == [0.0, 0.0]


def test_loss_weight_schemes():
    sigma = torch.rand(100)
    torch.testing.assert_close(loss_weight(sigma, "none"), torch.ones(100))
    # cosmap has mean 1 over uniform sigma (midpoint rule on a fine grid).
    grid = (torch.arange(100000, dtype=torch.float64) + 0.5) / 100000
    assert loss_weight(grid, "cosmap").mean().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        loss_weight(sigma, "sigma_sqrt")


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_bell_weight_matches_diffsynth_training_grid(shift):
    # DiffSynth-Studio FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True).set_timesteps(1000, training=True)
    sigmas = shift_sigmas(torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1], shift)
    timesteps = sigmas * 1000
    y = torch.exp(-2 * ((timesteps - 500) / 1000) ** 2)
    reference = (y - y.min()) * (1000 / (y - y.min()).sum())
    ours = loss_weight(sigmas, "bell", shift=shift)
    torch.testing.assert_close(ours, reference)
    assert ours.mean().item() == pytest.approx(1.0)
    assert loss_weight(torch.tensor(1.0), "bell", shift=shift).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- TI2V


def _upstream_token_timesteps(t: float, latent_shape, seq_len: int) -> torch.Tensor:
    """Wan2.2 textimage2video.py: mask over latent positions, subsampled [:, ::2, ::2], flattened."""
    _, c, f, h, w = latent_shape
    mask2 = torch.ones(c, f, h, w)
    mask2[:, 0] = 0
    temp_ts = (mask2[0][:, ::2, ::2] * t).flatten()
    return torch.cat([temp_ts, temp_ts.new_ones(seq_len - temp_ts.size(0)) * t]).unsqueeze(0)


def test_ti2v_token_timesteps_match_upstream_order():
    shape = (1, 3, 4, 6, 8)  # B, C, T, H, W -> 4 * 3 * 4 = 48 tokens, 12 per frame
    tokens = ti2v_token_timesteps(torch.tensor([700.0]), shape)
    assert tokens.shape == (1, 48)
    torch.testing.assert_close(tokens, _upstream_token_timesteps(700.0, shape, 48))
    assert bool((tokens[0, :12] == 0).all()) and bool((tokens[0, 12:] == 700.0).all())
    padded = ti2v_token_timesteps(700.0, shape, seq_len=52)
    torch.testing.assert_close(padded, _upstream_token_timesteps(700.0, shape, 52))


def test_ti2v_token_timesteps_per_sample_and_errors():
    tokens = ti2v_token_timesteps(torch.tensor([100.0, 900.0]), (2, 3, 2, 4, 4))
    assert tokens.shape == (2, 8)
    torch.testing.assert_close(tokens, torch.tensor([[0.0] * 4 + [100.0] * 4, [0.0] * 4 + [900.0] * 4]))
    with pytest.raises(ValueError, match="not divisible"):
        ti2v_token_timesteps(1.0, (1, 3, 2, 5, 4))
    with pytest.raises(ValueError, match="shorter"):
        ti2v_token_timesteps(1.0, (1, 3, 2, 4, 4), seq_len=4)


def test_ti2v_noisy_latents_keep_first_frame_clean():
    x0, noise = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    sigma = torch.tensor([0.4, 0.9])
    first = torch.randn(2, 3, 1, 4, 4)
    x_t = ti2v_noisy_latents(x0, noise, sigma, first)
    assert torch.equal(x_t[:, :, :1], first)
    torch.testing.assert_close(x_t[:, :, 1:], add_noise(x0, noise, sigma)[:, :, 1:])
    assert torch.equal(ti2v_noisy_latents(x0, noise, sigma)[:, :, 0], x0[:, :, 0])


def test_ti2v_loss_mask_excludes_frame_zero():
    mask = ti2v_loss_mask((2, 48, 5, 4, 4))
    assert mask.shape == (2, 1, 5, 1, 1)
    assert mask[:, :, 0].sum() == 0 and bool((mask[:, :, 1:] == 1).all())


# --------------------------------------------------------------------------- CFG dropout


def test_drop_conditions_rate_and_exact_replacement():
    cond = torch.randn(20000, 3, 2)
    null = torch.randn(3, 2)
    out, dropped = drop_conditions(cond, null, 0.3, generator=_gen(5))
    assert dropped.dtype == torch.bool and dropped.shape == (20000,)
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert torch.equal(out[dropped], null.expand(int(dropped.sum()), 3, 2))
    assert torch.equal(out[~dropped], cond[~dropped])
    out2, dropped2 = drop_conditions(cond, null, 0.3, generator=_gen(5))
    assert torch.equal(dropped2, dropped) and torch.equal(out2, out)


def test_drop_conditions_edges():
    cond, null = torch.randn(8, 4), torch.zeros(1, 4)
    out, dropped = drop_conditions(cond, null, 0.0)
    assert not dropped.any() and torch.equal(out, cond)
    out, dropped = drop_conditions(cond, null, 1.0)
    assert dropped.all() and torch.equal(out, torch.zeros(8, 4))
    with pytest.raises(ValueError):
        drop_conditions(cond, null, 1.5)
