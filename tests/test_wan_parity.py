"""Our Wan DiT against diffusers' WanTransformer3DModel / WanVACETransformer3DModel, same weights."""

from __future__ import annotations

import pytest
import torch

from wan_helpers import build_ours, diffusers_twin, tiny_config
from worldtune.diffusion.flow_matching import ti2v_token_timesteps
from worldtune.models.wan.sizes import SIZES

B, F, H, W = 2, 3, 8, 8  # latent grid -> 3 x 4 x 4 = 48 tokens


def inputs(config, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, config.in_dim - (4 if config.model_type == "i2v" else 0), F, H, W, generator=g)
    t = torch.tensor([937.0, 210.5])
    # 5 real tokens, zero-padded to text_len for diffusers, which does not pad internally.
    context = torch.randn(B, 5, config.text_dim, generator=g)
    padded = torch.cat([context, context.new_zeros(B, config.text_len - 5, config.text_dim)], dim=1)
    return x, t, context, padded, g


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def test_t2v_matches_diffusers():
    config = tiny_config("t2v")
    theirs, ours = diffusers_twin(config)
    x, t, context, padded, _ = inputs(config)
    expected = theirs(x, t, padded, return_dict=False)[0]
    assert relative_error(ours(x, t, context), expected) < 1e-4
    assert relative_error(ours(x, t, [c for c in context]), expected) < 1e-4  # list form, as upstream


@torch.no_grad()
def test_ti2v_per_token_timesteps_match_diffusers():
    config = tiny_config("ti2v", in_dim=16, out_dim=16)
    theirs, ours = diffusers_twin(config, seed=3)
    x, _, context, padded, _ = inputs(config)
    t = ti2v_token_timesteps(torch.tensor([700.0, 300.0]), x.shape)  # frame-0 tokens at 0
    assert t.shape == (B, 48) and (t[:, :16] == 0).all()
    expected = theirs(x, t, padded, return_dict=False)[0]
    got = ours(x, t, context)
    assert relative_error(got, expected) < 1e-4
    # Per-token timesteps that are all equal reduce to the scalar timestep.
    flat = torch.full((B, 48), 500.0)
    assert torch.allclose(ours(x, flat, context), ours(x, torch.full((B,), 500.0), context), atol=1e-5)


@torch.no_grad()
def test_i2v_with_clip_tokens_and_y_matches_diffusers():
    config = tiny_config("i2v", text_len=512)  # diffusers hard-codes 512 text tokens to split off the image ones
    theirs, ours = diffusers_twin(config, seed=5)
    x, t, context, padded, g = inputs(config)
    y = torch.randn(B, 4, F, H, W, generator=g)
    clip = torch.randn(B, 7, config.image_dim, generator=g)
    expected = theirs(torch.cat([x, y], 1), t, padded, encoder_hidden_states_image=clip, return_dict=False)[0]
    assert relative_error(ours(x, t, context, y=y, clip_fea=clip), expected) < 1e-4


@torch.no_grad()
def test_vace_with_context_scale_matches_diffusers():
    config = tiny_config("vace")
    theirs, ours = diffusers_twin(config, seed=7)
    x, t, context, padded, g = inputs(config)
    control = torch.randn(B, 6, F, H, W, generator=g)
    expected = theirs(x, t, padded, control_hidden_states=control,
                      control_hidden_states_scale=torch.tensor([0.7, 0.7]), return_dict=False)[0]
    got = ours(x, t, context, vace_context=control, vace_context_scale=0.7)
    assert relative_error(got, expected) < 1e-4
    assert relative_error(got, ours(x, t, context)) > 1e-3  # the hints really contribute


@torch.no_grad()
def test_bf16_model_close_to_fp32():
    config = tiny_config("t2v")
    _, ours = diffusers_twin(config)
    x, t, context, _, _ = inputs(config)
    reference = ours(x, t, context)
    low = ours.to(torch.bfloat16)(x.bfloat16(), t, context.bfloat16())
    assert low.dtype == torch.float32  # upcast at the output, as upstream
    assert relative_error(low, reference) < 3e-2


@torch.no_grad()
def test_hooks_hidden_states_and_extra_hints():
    config = tiny_config("t2v")
    _, ours = diffusers_twin(config)
    x, t, context, _, _ = inputs(config)
    out = ours(x, t, context, return_hidden_states=True)
    assert len(out.hidden_states) == config.num_layers and out.hidden_states[0].shape == (B, 48, config.dim)
    assert torch.equal(out.sample, ours(x, t, context))
    zero = {1: torch.zeros(B, 48, config.dim)}
    assert torch.equal(ours(x, t, context, extra_hints=zero), out.sample)
    hint = {0: torch.randn(B, 48, config.dim)}
    assert not torch.allclose(ours(x, t, context, extra_hints=hint), out.sample)


def test_fresh_vace_equals_its_base_model():
    config = tiny_config("vace")
    torch.manual_seed(0)
    vace = build_ours(config)
    x, t, context, _, g = inputs(config)
    with torch.no_grad():
        base = vace(x, t, context)
        hinted = vace(x, t, context, vace_context=torch.randn(B, 6, F, H, W, generator=g))
    assert torch.equal(base, hinted)  # before_proj / after_proj start at zero


def test_gradient_checkpointing_gives_same_gradients():
    """The trainer's activation checkpointing (`dist.activation_checkpointing`, per block) is the
    DiT's only one; it leaves the gradients as they are."""
    import copy

    from worldtune.config import DistConfig
    from worldtune.train.distributed import DistEnv, default_blocks, prepare_model

    config = tiny_config("t2v")
    _, ours = diffusers_twin(config)
    checkpointed = copy.deepcopy(ours)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    prepare_model(checkpointed, default_blocks(checkpointed), DistConfig(activation_checkpointing=True), env)
    x, t, context, _, _ = inputs(config)
    grads, ffn_calls = [], []
    for model in (ours, checkpointed):
        calls = []
        model.blocks[0].ffn.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        model(x, t, context).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        ffn_calls.append(len(calls))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert ffn_calls == [1, 2]  # the checkpointed block ran again in backward
    assert not hasattr(ours, "enable_gradient_checkpointing")


@pytest.mark.parametrize("name", sorted(SIZES))
def test_named_sizes_match_diffusers_parameter_counts(name):
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    from wan_helpers import original_config_to_diffusers

    config = SIZES[name]
    with torch.device("meta"):
        ours = build_ours(config)
        kwargs = original_config_to_diffusers(config.to_dict())
        cls = WanVACETransformer3DModel if kwargs.pop("_class_name") == "WanVACETransformer3DModel" else WanTransformer3DModel
        theirs = cls(**kwargs)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    low, high = PUBLISHED[name]
    assert low <= count <= high, f"{name}: {count:,} parameters"


# Parameter counts of the released checkpoints, in billions (rounded bounds).
PUBLISHED = {
    "tiny": (0, 1e6),
    "tiny-ti2v": (0, 1e6),
    "small-ti2v": (1e6, 1e7),
    "tiny-vace": (0, 1e6),
    "tiny-vace-pixels": (0, 2e6),
    "wan2.1-t2v-1.3b": (1.40e9, 1.44e9),
    "wan2.1-vace-1.3b": (2.0e9, 2.2e9),
    "wan2.1-t2v-14b": (14.0e9, 14.5e9),
    "wan2.1-i2v-14b": (16.0e9, 16.8e9),
    "wan2.2-ti2v-5b": (4.9e9, 5.1e9),
}
