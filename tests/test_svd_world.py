"""Ctrl-World SVD world model (models/svd_world: frame-level UNet parity and context routing, action
encoder, sizes, views) and its EDM loss and sampler (systems/ctrl_world/world_edm over diffusion/edm:
preconditioning, weighting, future-only frames, CFG drop, schedule, fixed history, guidance)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

from worldtune.diffusion.edm import Precond, karras_sigmas
from worldtune.models.svd_world import (
    ActionEncoder,
    CtrlWorldModel,
    FrameLevelUNet,
    split_views,
    stack_views,
    svd_unet_config,
    tiny_unet_config,
)
from worldtune.systems.ctrl_world import world_edm
from worldtune.systems.ctrl_world.config import CtrlWorldModelConfig

H, F, C, A = 2, 3, 4, 7  # history frames, predicted frames, latent channels, action dim


def make_model(seed: int = 0, latent_channels: int = C, text_dim: int | None = None, latent_scale: float = 1.0,
               **settings) -> tuple[CtrlWorldModel, CtrlWorldModelConfig]:
    """A tiny model and the `model:` section it was built from (its conditioning and the EDM settings)."""
    torch.manual_seed(seed)
    m = CtrlWorldModelConfig(size="tiny", **settings)
    return CtrlWorldModel.tiny(m, latent_channels, action_dim=A, text_dim=text_dim, latent_scale=latent_scale), m


def batch(b: int = 2, c: int = C, h: int = 8, w: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, H + F, c, h, w, generator=g), torch.randn(b, H + F, A, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unet_inputs(b=2, f=3, h=8, w=8, seed=0):
    g = gen(seed)
    x = torch.randn(b, f, 2 * C, h, w, generator=g)
    ctx = torch.randn(b, f, 32, generator=g)
    ids = torch.tensor([[7.0, 127.0, 0.0]]).expand(b, 3)
    return x, torch.tensor([0.3, -0.7][:b]), ctx, ids


# ------------------------------------------------------------------------------------ FrameLevelUNet


@pytest.mark.parametrize("hw", [(8, 8), (9, 14)])
def test_frame_level_false_equals_diffusers_forward(hw):
    torch.manual_seed(0)
    ours = FrameLevelUNet(**tiny_unet_config(C)).eval()
    ref = UNetSpatioTemporalConditionModel(**tiny_unet_config(C)).eval()
    ref.load_state_dict(ours.state_dict())
    x, t, ctx, ids = unet_inputs(h=hw[0], w=hw[1])
    with torch.no_grad():
        for context in (ctx, ctx[:, :1]):
            a = ours(x, t, context, ids, frame_level=False).sample
            assert torch.equal(a, ref(x, t, context, ids).sample)
        assert torch.equal(
            ours(x, 0.25, ctx, ids, return_dict=False, frame_level=False)[0], ref(x, 0.25, ctx, ids)[0]
        )
        assert not torch.allclose(ours(x, t, ctx, ids, frame_level=True).sample, a)


def _capture_attn2(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(
        lambda mod, args, kwargs: store.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
    )


def test_frame_level_context_reaches_spatial_and_temporal_attention():
    torch.manual_seed(0)
    unet = FrameLevelUNet(**tiny_unet_config(C)).eval()
    x, t, ctx, ids = unet_inputs(b=2, f=3, h=8, w=8)
    attn = unet.down_blocks[0].attentions[0]
    spatial, temporal = [], []
    handles = [
        _capture_attn2(attn.transformer_blocks[0].attn2, spatial),
        _capture_attn2(attn.temporal_transformer_blocks[0].attn2, temporal),
    ]
    with torch.no_grad():
        unet(x, t, ctx, ids, frame_level=True)
        unet(x, t, ctx, ids, frame_level=False)
    for hd in handles:
        hd.remove()
    # frame-level: frame i of sample b sees only token (b, i)
    assert spatial[0].shape == (2 * 3, 1, 32)
    assert torch.equal(spatial[0][:, 0], ctx.reshape(6, 32))
    # temporal blocks (diffusers' own, as upstream): the clip's first-frame token, at every position
    assert temporal[0].shape == (2 * 8 * 8, 1, 32)
    assert torch.equal(temporal[0][:, 0], ctx[:, 0].repeat_interleave(64, dim=0))
    # diffusers' behaviour: every frame sees the whole context
    assert spatial[1].shape == (6, 3, 32) and torch.equal(spatial[1], ctx.repeat_interleave(3, dim=0))
    # k tokens per frame, and a length that is not a multiple of F
    assert unet.frame_context(torch.randn(2, 6, 32), 2, 3, True).shape == (6, 2, 32)
    with pytest.raises(ValueError):
        unet.frame_context(torch.randn(2, 4, 32), 2, 3, True)


# ------------------------------------------------------------------------------------- ActionEncoder


def test_action_encoder_shapes_and_text_modes():
    torch.manual_seed(0)
    actions, text = torch.randn(2, 5, A), torch.randn(2, 16)
    plain = ActionEncoder(A, 32, (24, 24))
    assert plain(actions).shape == (2, 5, 32) and plain.text_mode is None
    rep = ActionEncoder(A, 32, (24, 24), text_dim=16)
    assert rep.text_mode == "repeat" and rep.text_linear is None
    torch.testing.assert_close(
        rep(actions, text) - rep(actions), torch.cat([text, text], -1)[:, None].expand(2, 5, 32)
    )
    lin = ActionEncoder(A, 32, (24, 24), text_dim=12)
    assert lin.text_mode == "linear" and lin(actions, torch.randn(2, 12)).shape == (2, 5, 32)
    assert ActionEncoder(A, 32, (24, 24), text_dim=16, text_proj="linear").text_linear is not None
    with pytest.raises(ValueError):
        ActionEncoder(A, 32, (24, 24), text_dim=12, text_proj="repeat")


# ------------------------------------------------------------------------------------- training loss


def test_training_loss_finite_and_gradients_reach_encoder_and_unet():
    model, m = make_model(text_dim=16)
    latents, actions = batch()
    out = world_edm.training_loss(model, m, H, latents, actions, torch.randn(2, 16), generator=gen())
    assert torch.isfinite(out["loss"]) and out["loss_per_sample"].shape == (2,)
    out["loss"].backward()
    cross = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    for p in (
        model.action_encoder.action_encode[0].weight,
        model.unet.conv_in.weight,
        cross.to_v.weight,
        model.unet.conv_out.weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # one context token per frame: the softmax over a single key is 1, so to_q / to_k get no gradient
    assert cross.to_k.weight.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="expected latents"):
        world_edm.training_loss(model, m, H, latents[:, 1:], actions)  # frames of latents and actions differ
    with pytest.raises(ValueError, match="expected latents"):
        world_edm.training_loss(model, m, H, latents[:, :H], actions[:, :H])  # history only, nothing to denoise


def _record_unet_calls(model: CtrlWorldModel, store: list, zero_output: bool = False, echo: bool = False):
    """Record (sample, timestep, context) of every UNet call; optionally replace its output."""

    def hook(mod, args, kwargs, output):
        store.append(tuple(a.detach().clone() for a in args[:3]))
        if zero_output:
            return UNetSpatioTemporalConditionOutput(sample=torch.zeros_like(output.sample))
        if echo:  # output = the noisy-latent channels of the input, frame by frame
            return UNetSpatioTemporalConditionOutput(sample=args[0][:, :, : output.sample.shape[2]].clone())
        return None

    return model.unet.register_forward_hook(hook, with_kwargs=True)


def test_training_inputs_follow_the_edm_recipe():
    model, m = make_model(history_noise=0.0, cond_noise_max=0.0, latent_scale=0.5, cfg_drop=0.0)
    latents, actions = batch(b=2, h=16, w=16)
    latents[:, H:] = 0  # future frames zero -> their noisy input is c_in * sigma * n
    latents[:, H] = torch.randn(2, C, 16, 16, generator=gen(3))  # current frame
    calls: list = []
    handle = _record_unet_calls(model, calls)
    sigma = torch.tensor([80.0, 0.5])
    out = world_edm.training_loss(model, m, H, latents, actions, sigma=sigma, generator=gen())
    handle.remove()
    sample, timestep, context = calls[0]
    assert sample.shape == (2, H + F, 2 * C, 16, 16)
    torch.testing.assert_close(timestep, sigma.log() / 4)  # c_noise
    torch.testing.assert_close(sample[:, :H, :C], latents[:, :H])  # history without noise
    cond = (latents[:, H] / 0.5)[:, None].expand(2, H + F, C, 16, 16)
    torch.testing.assert_close(sample[:, :, C:], cond)  # current frame / latent_scale, on every frame
    assert abs(sample[0, H + 1 :, :C].std().item() - 1.0) < 0.05  # c_in * (0 + 80 n) ~ n
    torch.testing.assert_close(context, model.encode_context(actions, H))
    torch.testing.assert_close(out["weight"], (sigma**2 + 1) / sigma**2)
    torch.testing.assert_close(out["sigma"], sigma)


def test_edm_weighting_with_a_zero_network():
    model, m = make_model(cfg_drop=0.0)
    latents, actions = batch(b=2, h=16, w=16)
    latents.zero_()
    sigma = torch.tensor([0.3, 4.0])
    handle = _record_unet_calls(model, [], zero_output=True)
    out = world_edm.training_loss(model, m, H, latents, actions, sigma=sigma, generator=gen())
    handle.remove()
    # x0_hat = c_skip * sigma * n, so weight * mse = mean(n^2) / (sigma^2 + 1), mean(n^2) ~ 1
    torch.testing.assert_close(out["loss_per_sample"], 1 / (sigma**2 + 1), rtol=0.1, atol=0)
    pc = Precond.at(sigma)
    torch.testing.assert_close(pc.weight, 1 / pc.c_out**2)
    torch.testing.assert_close(pc.c_skip + pc.c_out**2, torch.ones(2))  # EDM with sigma_data = 1


@pytest.mark.parametrize("sigma_data", [1.0, 0.4])
def test_edm_preconditioning_keeps_unit_variance_for_any_sigma_data(sigma_data):
    """EDM's design: with data of std sigma_data, the UNet's input and its ideal output have unit variance."""
    g = gen(4)
    x0 = torch.randn(200_000, generator=g) * sigma_data
    n = torch.randn(200_000, generator=g)
    for sigma in (0.05, 0.5, 3.0, 80.0):
        pc = Precond.at(torch.tensor(sigma), sigma_data)
        x = x0 + sigma * n
        ideal = (x0 - pc.c_skip * x) / pc.c_out  # the F that makes x0_hat exact
        assert abs(float((pc.c_in * x).std()) - 1) < 0.01
        assert abs(float(ideal.std()) - 1) < 0.01
        torch.testing.assert_close(pc.c_skip * x + pc.c_out * ideal, x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pc.weight, pc.c_out**-2)
    assert float(Precond.at(torch.tensor(2.0), sigma_data).c_out) < 0  # SVD's sign


def test_residual_model_denoises_the_change_from_the_current_frame():
    """Residual models denoise `frames - current frame`: a clip that does not move scores like an all-zero
    clip of the plain model, and samples are the plain model's plus the current frame."""
    latents, actions = batch(b=2, h=16, w=16)
    still = latents.clone()
    still[:, H:] = latents[:, H : H + 1]
    sigma = torch.tensor([0.3, 4.0])
    losses, samples = {}, {}
    for residual in (False, True):
        model, m = make_model(cfg_drop=0.0, residual=residual)
        model.eval()
        handle = _record_unet_calls(model, [], zero_output=True)
        clip = still if residual else torch.zeros_like(still)
        losses[residual] = world_edm.training_loss(model, m, H, clip, actions, sigma=sigma, generator=gen())["loss_per_sample"]
        samples[residual] = world_edm.sample(model, m, H, latents[:, : H + 1], actions, num_inference_steps=4, generator=gen())
        handle.remove()
    torch.testing.assert_close(losses[True], losses[False])
    current = latents[:, H : H + 1].expand(-1, F, -1, -1, -1)
    torch.testing.assert_close(samples[True], current + samples[False])  # same noise, same trajectory


def test_relative_action_dims_encode_the_change_from_the_current_frame():
    """Chosen dimensions reach the encoder as `(a_t - a_current) * scale`, the rest unchanged; a model with
    relative pose dims gives the same context for the same motion from two different poses."""
    _, actions = batch()
    model, m = make_model(relative_action_dims=[0, 2], relative_action_scale=4.0)
    out = model.relative_actions(actions, H)
    torch.testing.assert_close(out[..., [0, 2]], (actions[..., [0, 2]] - actions[:, H : H + 1, [0, 2]]) * 4.0)
    torch.testing.assert_close(out[..., [1, 3, 4, 5, 6]], actions[..., [1, 3, 4, 5, 6]])
    assert torch.equal(out[:, H, [0, 2]], torch.zeros(2, 2))
    shifted = actions.clone()
    shifted[..., [0, 2]] += 0.5
    torch.testing.assert_close(model.encode_context(shifted, H), model.encode_context(actions, H))
    assert make_model()[0].relative_actions(actions, H) is actions  # upstream: absolute
    with pytest.raises(ValueError, match=r"relative_action_dims \[7\]"):
        make_model(relative_action_dims=[7])


def test_loss_covers_only_frames_after_the_history():
    """The network echoes its (noisy) input, so history frames produce outputs; they must not be scored."""
    model, m = make_model(cfg_drop=0.0)
    latents, actions = batch()
    handle = _record_unet_calls(model, [], echo=True)

    def loss(x):
        return world_edm.training_loss(model, m, H, x, actions, sigma=torch.tensor([1.5, 0.4]), generator=gen(5))["loss"]

    base = loss(latents)
    changed = latents.clone()
    changed[:, :H] += 3.0
    assert torch.equal(loss(changed), base)
    for k in (H, H + 1, H + F - 1):  # the current frame counts (upstream's slice [:, num_history:])
        changed = latents.clone()
        changed[:, k] += 3.0
        assert not torch.allclose(loss(changed), base)
    handle.remove()


def test_cfg_drop_rate_and_train_mode_only():
    model, m = make_model(cfg_drop=0.3)
    context = torch.ones(20000, 2, 3)
    dropped_ctx, dropped = world_edm.drop_context(context, m.cfg_drop, gen())
    assert abs(dropped.float().mean().item() - 0.3) < 0.02
    assert torch.equal(dropped_ctx[dropped], torch.zeros_like(dropped_ctx[dropped]))
    assert torch.equal(dropped_ctx[~dropped], context[~dropped])

    model, m = make_model(cfg_drop=1.0)
    latents, actions = batch()
    calls: list = []
    handle = _record_unet_calls(model, calls)
    assert world_edm.training_loss(model, m, H, latents, actions, generator=gen())["dropped"].all()
    model.eval()
    assert not world_edm.training_loss(model, m, H, latents, actions, generator=gen())["dropped"].any()
    handle.remove()
    assert calls[0][2].abs().sum() == 0 and calls[1][2].abs().sum() > 0


def test_a_few_steps_reduce_the_loss():
    model, m = make_model(cfg_drop=0.0)
    latents, actions = batch(b=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sigma = torch.tensor([1.0, 2.0])
    losses = []
    for _ in range(8):
        loss = world_edm.training_loss(model, m, H, latents, actions, sigma=sigma, generator=gen(11))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------------ sampling


def svd_scheduler() -> EulerDiscreteScheduler:
    """SVD img2vid's scheduler config."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_min=0.002,
        sigma_max=700.0,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )


def test_karras_sigmas_match_svd_scheduler():
    sch = svd_scheduler()
    for n in (4, 25):
        sch.set_timesteps(n)
        torch.testing.assert_close(karras_sigmas(n), sch.sigmas)
        torch.testing.assert_close(Precond.at(sch.sigmas[:-1]).c_noise, sch.timesteps)


def test_sample_shape_and_fixed_history():
    model, m = make_model(latent_scale=0.5)
    model.eval()
    latents, actions = batch()
    calls: list = []
    handle = _record_unet_calls(model, calls)
    out = world_edm.sample(model, m, H, 
        latents[:, : H + 1], actions, num_inference_steps=3, guidance_scale=2.0, generator=gen()
    )
    handle.remove()
    assert out.shape == (2, F, C, 8, 8) and torch.isfinite(out).all()
    assert len(calls) == 3
    cond = (latents[:, H] / 0.5)[:, None].expand(2, H + F, C, 8, 8)
    for sample, _, context in calls:
        assert sample.shape[0] == 4  # [uncond, cond]
        assert torch.equal(sample[:, :H, :C], latents[:, :H].repeat(2, 1, 1, 1, 1))
        assert torch.equal(sample[:, :, C:], cond.repeat(2, 1, 1, 1, 1))
        assert context[:2].abs().sum() == 0 and context[2:].abs().sum() > 0
    with pytest.raises(ValueError):
        world_edm.sample(model, m, H, latents[:, :H], actions)


def test_guidance_one_is_the_conditional_euler_of_svds_scheduler():
    model, m = make_model()
    model.eval()
    latents, actions = batch(b=1)
    history, steps = latents[:, : H + 1], 4
    noise = torch.randn(1, F, C, 8, 8, generator=gen(9))
    calls: list = []
    handle = _record_unet_calls(model, calls)
    ours = world_edm.sample(model, m, H, history, actions, num_inference_steps=steps, guidance_scale=1.0, noise=noise)
    handle.remove()
    assert all(c[0].shape[0] == 1 for c in calls)  # no unconditional pass

    # reference: upstream's loop (diffusers scheduler, history + scaled latents, channel-concat condition)
    sch = svd_scheduler()
    sch.set_timesteps(steps)
    x = noise * sch.sigmas[0]
    cond = latents[:, H : H + 1].expand(1, H + F, C, 8, 8)
    ctx = model.encode_context(actions, H)
    ids = torch.tensor([[7.0, 127.0, 0.0]])
    with torch.no_grad():
        for t in sch.timesteps:
            inp = torch.cat([latents[:, :H], sch.scale_model_input(x, t)], dim=1)
            v = model.unet(torch.cat([inp, cond], dim=2), t, ctx, ids, frame_level=True).sample[:, H:]
            x = sch.step(v, t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)

    # the CFG path at guidance ~1 reduces to the conditional one; real guidance changes the result
    near_one = world_edm.sample(model, m, H, 
        history,
        actions,
        num_inference_steps=steps,
        guidance_scale=1.0 + 1e-6,
        min_guidance_scale=None,
        noise=noise,
    )
    torch.testing.assert_close(near_one, ours, rtol=1e-3, atol=1e-3)
    strong = world_edm.sample(model, m, H, history, actions, num_inference_steps=steps, guidance_scale=3.0, noise=noise)
    assert not torch.allclose(strong, ours, atol=1e-3)
    heun = world_edm.sample(model, m, H, 
        history, actions, num_inference_steps=2, guidance_scale=1.0, noise=noise, solver="heun"
    )
    assert heun.shape == ours.shape and torch.isfinite(heun).all()


# ----------------------------------------------------------------------------------- sizes and views


def test_svd_size_parameter_count_matches_diffusers():
    with torch.device("meta"):
        model = CtrlWorldModel.svd()
        ref = UNetSpatioTemporalConditionModel(**svd_unet_config())
    n_ours = sum(p.numel() for p in model.unet.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    assert 1.5e9 < n_ours < 1.55e9
    assert sum(p.numel() for p in model.action_encoder.parameters()) == (7 + 1024 + 1024 + 3) * 1024
    assert model.action_encoder.text_mode == "repeat"  # CLIP's 512 tiled to 1024, as upstream
    assert model.latent_scale == pytest.approx(0.18215)


def test_diffusers_weights_load_through_from_svd(tmp_path):
    torch.manual_seed(0)
    ref = UNetSpatioTemporalConditionModel(**tiny_unet_config(C))
    ref.save_pretrained(tmp_path / "unet")
    model = CtrlWorldModel.from_svd(tmp_path, subfolder="unet", action_dim=A, text_dim=16)
    assert isinstance(model.unet, FrameLevelUNet)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.unet.state_dict()[k], v), k


def test_views_and_48_channel_pixel_latents():
    views = [torch.randn(2, 5, 3, 4, 6) for _ in range(3)]
    stacked = stack_views(views)
    assert stacked.shape == (2, 5, 3, 12, 6) and torch.equal(stacked[..., 4:8, :], views[1])
    assert all(torch.equal(a, b) for a, b in zip(split_views(stacked, 3), views, strict=True))
    with pytest.raises(ValueError):
        split_views(stacked, 5)

    model, m = make_model(latent_channels=48)
    assert model.unet.config.in_channels == 96 and model.unet.config.out_channels == 48
    latents = stack_views([torch.randn(1, H + F, 48, 2, 4) for _ in range(3)])  # 3 views, 6 x 4
    actions = torch.randn(1, H + F, A)
    assert math.isfinite(world_edm.training_loss(model, m, H, latents, actions, generator=gen())["loss"].item())
    out = world_edm.sample(model.eval(), m, H, latents[:, : H + 1], actions, num_inference_steps=2)
    assert out.shape == (1, F, 48, 6, 4)
