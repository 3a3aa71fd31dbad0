"""Flow samplers over diffusers schedulers: exactness, guidance, TI2V first frame."""

from __future__ import annotations

import pytest
import torch

from worldtune.diffusion.samplers import cfg_combine, make_scheduler, sample_flow

SHAPE = (2, 3, 4, 4, 6)  # B, C, T, H, W


def _sigma(t: torch.Tensor) -> torch.Tensor:
    """Per-sample sigma from the model's timesteps ([B], or [B, seq] whose last token is not frame 0)."""
    t = t[:, -1] if t.ndim == 2 else t
    return (t / 1000).reshape(-1, 1, 1, 1, 1)


def _exact_velocity(x0: torch.Tensor, seen: list[torch.Tensor] | None = None):
    # On the straight path x_t = (1-s) x0 + s noise, so v = noise - x0 = (x_t - x0) / s.
    def denoise(x_t, t, cond):
        if seen is not None:
            seen.append(t.clone())
        return (x_t - x0) / _sigma(t)

    return denoise


class _Counter:
    """A velocity model `v = a * x + c` recording its calls."""

    def __init__(self, a: float = 0.5):
        self.a = a
        self.batches: list[int] = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        c = cond["c"] if isinstance(cond, dict) else cond
        return self.a * x + c


@pytest.mark.parametrize("name", ["euler", "unipc"])
@pytest.mark.parametrize(("shift", "steps"), [(1.0, 6), (5.0, 25)])
def test_exact_velocity_recovers_data_point(name, shift, steps):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    seen: list[torch.Tensor] = []
    out = sample_flow(
        _exact_velocity(x0, seen), noise, scheduler=make_scheduler(name, shift), num_steps=steps, cond=None
    )
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
    assert len(seen) == steps
    assert seen[0].dtype == torch.float32 and seen[0].shape == (2,)
    # The model never sees sigma 0 (the final step lands on it) and timesteps decrease.
    levels = [float(t[0]) for t in seen]
    assert levels[0] == pytest.approx(1000, abs=0.01) and levels[-1] > 0
    assert levels == sorted(levels, reverse=True)


def test_make_scheduler_config():
    unipc = make_scheduler("unipc", 5.0)
    assert unipc.config.prediction_type == "flow_prediction"
    assert unipc.config.use_flow_sigmas and unipc.config.flow_shift == 5.0
    assert make_scheduler("euler", 3.0).config.shift == 3.0
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("ddim", 1.0)


@pytest.mark.parametrize("uncond", [None, "given"])
def test_guidance_scale_one_makes_one_conditional_call(uncond):
    noise = torch.randn(SHAPE)
    cond = torch.full(SHAPE, 0.3)
    model = _Counter()
    out = sample_flow(
        model,
        noise,
        scheduler=make_scheduler("euler", 1.0),
        num_steps=5,
        cond=cond,
        uncond=None if uncond is None else torch.full(SHAPE, -9.0),
        guidance_scale=1.0,
    )
    assert model.batches == [2] * 5
    plain = sample_flow(_Counter(), noise, scheduler=make_scheduler("euler", 1.0), num_steps=5, cond=cond)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)


def test_cfg_math_on_constant_velocities():
    torch.testing.assert_close(cfg_combine(torch.tensor(3.0), torch.tensor(1.0), 4.0), torch.tensor(9.0))
    noise = torch.randn(SHAPE)
    c1, c2, g = torch.full(SHAPE, 0.7), torch.full(SHAPE, -0.2), 4.5
    model = _Counter(a=0.0)  # v = cond: constant along the path, so Euler is exact
    out = sample_flow(
        model,
        noise,
        scheduler=make_scheduler("euler", 3.0),
        num_steps=4,
        cond=c1,
        uncond=c2,
        guidance_scale=g,
    )
    # x(0) = x(1) - integral of v over sigma in [0, 1] = noise - (c2 + g (c1 - c2)).
    torch.testing.assert_close(out, noise - (c2 + g * (c1 - c2)), rtol=0, atol=1e-5)
    assert model.batches == [4] * 4  # cond and uncond batched into one call per step


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_batched_and_separate_cfg_agree(name):
    noise = torch.randn(SHAPE)
    cond, uncond = {"c": torch.randn(SHAPE)}, {"c": torch.randn(SHAPE)}
    runs = {}
    for batch_cfg in (True, False):
        model = _Counter(a=-0.8)
        runs[batch_cfg] = sample_flow(
            model,
            noise,
            scheduler=make_scheduler(name, 5.0),
            num_steps=6,
            cond=cond,
            uncond=uncond,
            guidance_scale=3.0,
            batch_cfg=batch_cfg,
        )
        assert model.batches == ([4] * 6 if batch_cfg else [2] * 12)
    torch.testing.assert_close(runs[True], runs[False])


def test_unequal_shapes_fall_back_to_two_calls():
    model = _Counter(a=0.0)
    sample_flow(
        lambda x, t, c: model(x, t, c.mean() * torch.ones_like(x)),
        torch.randn(SHAPE),
        scheduler=make_scheduler("euler", 1.0),
        num_steps=2,
        cond=torch.randn(2, 7),
        uncond=torch.randn(1, 7),
        guidance_scale=2.0,
    )
    assert model.batches == [2] * 4


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_ti2v_first_frame_stays_clean(name):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    first = torch.randn(2, 3, 1, 4, 6, generator=g)
    target = torch.cat([first, x0[:, :, 1:]], dim=2)
    seen: list[torch.Tensor] = []
    out = sample_flow(
        _exact_velocity(target, seen),
        noise,
        scheduler=make_scheduler(name, 5.0),
        num_steps=10,
        cond=None,
        first_frame_latent=first,
        progress=True,
    )
    assert torch.equal(out[:, :, :1], first)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-4)
    per_frame = 2 * 3  # (H/2) * (W/2) tokens per latent frame
    for t in seen:
        assert t.shape == (2, 4 * per_frame)
        assert bool((t[:, :per_frame] == 0).all()) and bool((t[:, per_frame:] > 0).all())
