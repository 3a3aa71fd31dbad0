"""The causal Wan DiT: a rollout through the KV cache equals the block-causal forward over the same
frames; one block covering everything is the bidirectional WanModel; eviction equals a forward over
the frames left in the window; teacher forcing equals the cached rollout over clean context."""

from __future__ import annotations

import pytest
import torch

from worldtune.models.wan.causal import CausalWanModel
from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.kv_cache import KVCache
from worldtune.models.wan.sizes import wan_config

SIZES = ["tiny", "tiny-ti2v"]  # Wan2.1 T2V (Self-Forcing's base) and Wan2.2 TI2V (Vidarc's)
FRAMES, H, W = 5, 4, 6  # latent frames, latent grid (2 x 3 tokens per frame with patch 2)


def models(size: str, **causal) -> tuple[WanModel, CausalWanModel]:
    torch.manual_seed(0)
    base = WanModel(wan_config(size))
    with torch.no_grad():  # upstream starts the output layer at zero: give it weights to compare
        base.head.head.weight.normal_(std=0.1)
    causal_model = CausalWanModel(wan_config(size), **causal)
    causal_model.load_state_dict(base.state_dict())
    return base.eval(), causal_model.eval()


def inputs(model: WanModel, frames: int = FRAMES):
    g = torch.Generator().manual_seed(1)
    c = model.config
    x = torch.randn(1, c.in_dim, frames, H, W, generator=g)
    t = torch.rand(1, frames, generator=g) * 1000  # a different noise level per frame
    context = torch.randn(1, 7, c.text_dim, generator=g)
    return x, t, context


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs().max() / b.abs().max()) < 1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_same_parameters_as_wan_model(size):
    base, causal = models(size)
    assert list(base.state_dict()) == list(causal.state_dict())


@pytest.mark.parametrize("size", SIZES)
def test_one_block_over_all_frames_is_the_bidirectional_model(size):
    base, causal = models(size, num_frame_per_block=FRAMES)
    x, t, context = inputs(base)
    with torch.no_grad():
        assert close(causal(x, t, context), base(x, t.repeat_interleave(H * W // 4, dim=1), context))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("per_block", [1, 2])
def test_cached_rollout_equals_the_block_causal_forward(size, per_block):
    _, causal = models(size, num_frame_per_block=per_block)
    x, t, context = inputs(causal)
    with torch.no_grad():
        full = causal(x, t, context)
        cache = causal.new_cache(1, H, W, kv_cache_length=FRAMES)
        text = causal.text_kv(context)
        # Frame 0 prefilled with its block, then block by block, each first at a wrong noise level
        # (a denoising step) and then again at the real one (the re-run overwrites its keys).
        outs, start = [], 0
        while start < FRAMES:
            n = min(per_block, FRAMES - start)
            block = x[:, :, start : start + n]
            causal.forward_cached(block, torch.full((1, n), 999.0), cache, start, text_kv=text)
            outs.append(causal.forward_cached(block, t[:, start : start + n], cache, start, text_kv=text))
            start += n
    assert close(torch.cat(outs, dim=2), full)
    assert cache.positions == list(range(FRAMES))


@pytest.mark.parametrize("size", SIZES)
def test_prefill_of_several_blocks_is_block_causal(size):
    _, causal = models(size)
    x, t, context = inputs(causal)
    t[:, :3] = 0
    with torch.no_grad():
        full = causal(x, t, context)
        cache = causal.new_cache(1, H, W, kv_cache_length=FRAMES)
        causal.prefill(x[:, :, :3], cache, context=context)
        rest = causal.forward_cached(x[:, :, 3:], t[:, 3:], cache, 3, context=context)
    assert close(rest, full[:, :, 3:])


@pytest.mark.parametrize("size", SIZES)
def test_eviction_equals_a_forward_over_the_window(size):
    """A cache of 4 frames with 1 sink: frame 4 sees frames 0 (the sink), 2, 3 at their own
    positions, and the keys of frames 2 and 3 are those computed when they were written (frame 3's
    saw frame 1): the windowed whole-sequence forward, where each block sees what the cache held."""
    _, causal = models(size)
    x, t, context = inputs(causal)
    with torch.no_grad():
        cache = causal.new_cache(1, H, W, kv_cache_length=4, sink_size=1)
        text = causal.text_kv(context)
        for frame in range(FRAMES):
            out = causal.forward_cached(x[:, :, frame : frame + 1], t[:, frame : frame + 1], cache, frame, text_kv=text)
        reference = causal(x, t, context, window=(4, 1))
        unwindowed = causal(x, t, context)
    assert cache.positions == [0, 2, 3, 4] and cache.evicted == 1
    assert close(out, reference[:, :, -1:])
    assert not close(out, unwindowed[:, :, -1:])  # frame 1 is really gone


@pytest.mark.parametrize("size", SIZES)
def test_teacher_forcing_equals_rollout_over_clean_context(size):
    _, causal = models(size)
    x, t, context = inputs(causal)
    clean = torch.randn_like(x)
    with torch.no_grad():
        teacher = causal.forward_teacher(clean, x, torch.zeros(1), t, context)
        cache = causal.new_cache(1, H, W, kv_cache_length=FRAMES)
        text = causal.text_kv(context)
        outs = []
        for frame in range(FRAMES):
            outs.append(causal.forward_cached(x[:, :, frame : frame + 1], t[:, frame : frame + 1], cache, frame,
                                              text_kv=text))
            causal.prefill(clean[:, :, frame : frame + 1], cache, frame, text_kv=text)  # the clean re-run
    assert close(teacher, torch.cat(outs, dim=2))


def test_closed_loop_drop_and_refill_equals_prefilling_the_observation():
    _, causal = models("tiny")
    x, t, context = inputs(causal)
    observed = torch.randn_like(x)
    with torch.no_grad():
        cache = causal.new_cache(1, H, W, kv_cache_length=FRAMES)
        causal.prefill(x[:, :, :2], cache, context=context)
        causal.prefill(x[:, :, 2:3], cache, 2, context=context)  # a predicted frame
        cache.drop_last(1)
        causal.prefill(observed[:, :, 2:3], cache, 2, context=context)  # what the robot saw instead
        after = causal.forward_cached(x[:, :, 3:4], t[:, 3:4], cache, 3, context=context)
        fresh = causal.new_cache(1, H, W, kv_cache_length=FRAMES)
        causal.prefill(torch.cat([x[:, :, :2], observed[:, :, 2:3]], dim=2), fresh, context=context)
        expected = causal.forward_cached(x[:, :, 3:4], t[:, 3:4], fresh, 3, context=context)
    assert close(after, expected)


def test_gradient_step_leaves_the_cache_out_of_the_graph():
    _, causal = models("tiny")
    x, t, context = inputs(causal)
    cache = causal.new_cache(1, H, W, kv_cache_length=FRAMES)
    with torch.no_grad():
        causal.prefill(x[:, :, :2], cache, context=context)
    out = causal.forward_cached(x[:, :, 2:3], t[:, 2:3], cache, 2, context=context)
    with torch.no_grad():
        causal.prefill(x[:, :, 2:3], cache, 2, context=context)  # overwrites the slot the graph read
    out.square().mean().backward()
    assert causal.blocks[0].self_attn.q.weight.grad is not None
    assert not cache.k.requires_grad


def test_cache_buffer_is_fixed_and_bad_writes_are_refused():
    cache = KVCache(2, 1, 6, 2, 12, capacity_frames=3, sink_size=1)
    buffer = cache.k.data_ptr()
    for frame in range(6):
        cache.place([frame])
    assert cache.k.data_ptr() == buffer and cache.positions == [0, 4, 5]
    with pytest.raises(ValueError, match="neither follow the cache"):
        cache.place([9])
    with pytest.raises(ValueError, match="at least sink_size \\+ 1"):
        KVCache(2, 1, 6, 2, 12, capacity_frames=2, sink_size=2)
    with pytest.raises(ValueError, match="do not fit"):
        KVCache(2, 1, 6, 2, 12, capacity_frames=3, sink_size=1).place([0, 1, 2, 3])


def test_make_causal_keeps_the_weights():
    from worldtune.models.wan.causal import make_causal

    base, causal = models("tiny")
    x, t, context = inputs(base)
    converted = make_causal(base, num_frame_per_block=1)
    assert isinstance(converted, CausalWanModel)
    with torch.no_grad():
        assert torch.equal(converted(x, t, context), causal(x, t, context))


@pytest.mark.filterwarnings("ignore")  # flex attention warns that eager mode (CPU) is unfused
@pytest.mark.parametrize("size", SIZES)
def test_flex_attention_block_masks_equal_the_dense_masks(size):
    """What CUDA runs ("auto": flex attention with block masks) equals the dense-mask SDPA of the CPU."""
    _, causal = models(size, num_frame_per_block=2)
    x, t, context = inputs(causal)
    clean = torch.randn_like(x)

    def every_mask():
        return [causal(x, t, context), causal(x, t, context, window=(3, 1)),
                causal.forward_teacher(clean, x, torch.zeros(1), t, context)]

    with torch.no_grad():
        dense = every_mask()
        causal.attention_backend = "flex"
        flex = every_mask()
    assert all(close(a, b) for a, b in zip(flex, dense, strict=True))
