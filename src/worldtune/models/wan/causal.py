"""`CausalWanModel`: the Wan DiT generating latent frames block by block (Vidarc, Self-Forcing).

The parameters and their names are `WanModel`'s, so `vidar.pt` / `vidarc.pt` and the base weights
load unchanged; only attention changes. A *block* is `num_frame_per_block` latent frames (Vidarc:
1; with `independent_first_frame`, frame 0 is a block of its own and later frames are grouped).
A token attends to every token of its own block and of earlier blocks.

Three ways to run it, all exactly the same function of the same inputs (tests check it):
- `forward(x, t, context)`: the whole sequence under the block-causal mask (training, reference);
  `frame_positions` places the frames at arbitrary time positions (RoPE) and blocks;
- `forward_teacher(clean, noisy, ...)`: teacher forcing in one sequence, `[clean | noisy]`, each
  noisy block attending to the clean blocks before it and to itself (Self-Forcing's layout);
- `forward_cached(x, t, cache, start_frame, ...)`: only the new frames, attending to the earlier
  frames' keys / values in a `KVCache` (inference, self-forcing rollouts). Every call writes its
  frames' keys into the cache; calling again for the same frames overwrites them (denoising steps,
  then the clean re-run at t = 0). `prefill` writes conditioning frames, `KVCache.drop_last` plus
  `prefill` replaces predicted frames by observed ones (the closed loop).

Timesteps are per sample `[B]`, per frame `[B, F]` or per token `[B, L]` (Wan2.2 TI2V's clean first
frame at t = 0). On CPU, attention takes a dense boolean mask; the mask is None wherever every key
is visible, so SDPA's fused kernels run in the common case (one new block over a cache).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from worldtune.models.wan.dit import BlockInputs, WanModel, WanOutput
from worldtune.models.wan.kv_cache import KVCache
from worldtune.models.wan.layers import SelfAttention, attention
from worldtune.models.wan.sizes import WanConfig

TextKV = list[tuple[torch.Tensor, torch.Tensor]]  # per transformer block: text keys, values [B, Lc, H, D]
AttentionMask = Any  # a boolean [Lq, Lk] tensor, or a flex-attention BlockMask


class CausalWanModel(WanModel):
    # "auto": flex attention with block masks on CUDA, SDPA with dense boolean masks elsewhere;
    # "sdpa" or "flex" to force one (flex on CPU runs unfused: for tests).
    attention_backend: str = "auto"

    def __init__(self, config: WanConfig, num_frame_per_block: int = 1, independent_first_frame: bool = False) -> None:
        if num_frame_per_block < 1:
            raise ValueError(f"num_frame_per_block must be >= 1, got {num_frame_per_block}")
        self.num_frame_per_block = num_frame_per_block
        self.independent_first_frame = independent_first_frame
        super().__init__(config)

    # ------------------------------------------------------------------ blocks and masks

    def block_of(self, position: int) -> int:
        """The causal block of the latent frame at time `position`."""
        n = self.num_frame_per_block
        if self.independent_first_frame:
            return 0 if position == 0 else 1 + (position - 1) // n
        return position // n

    def _blocks(self, positions: list[int], frame_tokens: int, device: torch.device) -> torch.Tensor:
        ids = torch.tensor([self.block_of(p) for p in positions], device=device)
        return ids.repeat_interleave(frame_tokens)

    def causal_mask(self, query_positions: list[int], key_positions: list[int], frame_tokens: int,
                    device: torch.device, window: tuple[int, int] | None = None) -> AttentionMask | None:
        """Key block <= query block, as `[Lq, Lk]` booleans or a flex-attention block mask (None when
        every key is visible).

        `window = (kv_cache_length, sink_size)`: also what a rolling cache of that many frames keeps
        when the query's block is written: the first `sink_size` frames and the latest ones, up to
        the block's last frame (so a whole-sequence forward trains what the cache computes)."""
        q_blocks = {self.block_of(p) for p in query_positions}
        if window is None and max(self.block_of(p) for p in key_positions) <= min(q_blocks):
            return None
        q_block = self._blocks(query_positions, frame_tokens, device)
        k_block = self._blocks(key_positions, frame_tokens, device)
        if window is None:
            def rule(q, k):
                return k_block[k] <= q_block[q]
        else:
            length, sink = window
            ends: dict[int, int] = {}  # block -> the frame after its last frame
            for p in query_positions:
                ends[self.block_of(p)] = max(ends.get(self.block_of(p), 0), p + 1)
            q_end = torch.tensor([ends[self.block_of(p)] for p in query_positions], device=device)
            q_end = q_end.repeat_interleave(frame_tokens)
            k_pos = torch.tensor(key_positions, device=device).repeat_interleave(frame_tokens)

            def rule(q, k):
                kept = (k_pos[k] < sink) | (k_pos[k] >= q_end[q] - (length - sink))
                return (k_block[k] <= q_block[q]) & kept
        return self._mask(rule, len(q_block), len(k_block), device)

    def _teacher_mask(self, blocks: torch.Tensor, device: torch.device) -> AttentionMask:
        """`[clean | noisy]` of `L` tokens each: clean tokens see clean blocks up to their own; a noisy
        block sees the clean blocks before it and itself."""
        length = len(blocks)

        def rule(q, k):
            bq, bk = blocks[q % length], blocks[k % length]
            clean_q, clean_k = q < length, k < length
            noisy_rule = torch.where(clean_k, bk < bq, bk == bq)
            return torch.where(clean_q, clean_k & (bk <= bq), noisy_rule)
        return self._mask(rule, 2 * length, 2 * length, device)

    def _mask(self, rule, q_len: int, k_len: int, device: torch.device) -> AttentionMask:
        """The mask `rule(query index, key index)` describes: a dense boolean tensor for SDPA, or with
        `attention_backend` "flex" (the default on CUDA: "auto") a block mask for flex attention,
        which skips the masked tiles and never holds the `[Lq, Lk]` matrix."""
        backend = self.attention_backend
        if backend == "flex" or (backend == "auto" and device.type == "cuda"):
            from torch.nn.attention.flex_attention import create_block_mask

            return create_block_mask(lambda b, h, q, k: rule(q, k), None, None, q_len, k_len, device=device)
        q = torch.arange(q_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        return rule(q, k)

    @staticmethod
    def token_timesteps(timestep: torch.Tensor, frames: int, frame_tokens: int) -> torch.Tensor:
        """`[B]`, per frame `[B, F]` or per token `[B, F*frame_tokens]` -> per token `[B, L]` (or `[B]`)."""
        if timestep.ndim == 2 and timestep.shape[1] == frames and frames != frames * frame_tokens:
            return timestep.repeat_interleave(frame_tokens, dim=1)
        return timestep

    # ------------------------------------------------------------------ whole sequence

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | list[torch.Tensor] | None = None,
                *, y: torch.Tensor | None = None, frame_positions: list[int] | None = None,
                window: tuple[int, int] | None = None, cache: KVCache | None = None, start_frame: int = 0,
                text_kv: TextKV | None = None, clean: torch.Tensor | None = None, t_clean: torch.Tensor | None = None,
                y_clean: torch.Tensor | None = None, extra_hints: dict[int, torch.Tensor] | None = None,
                hint_scale: float = 1.0, return_hidden_states: bool = False, **unused) -> torch.Tensor | WanOutput:
        """One entry for the three modes, so that FSDP's hook on `forward` gathers the root's
        parameters whichever runs: with `cache`, the cached forward (`forward_cached`); with `clean`,
        teacher forcing (`forward_teacher`); else the block-causal forward over all frames of `x`
        (at `frame_positions`, default 0..F-1; `window = (kv_cache_length, sink_size)` limits each
        block to what a rolling cache keeps)."""
        if unused.get("clip_fea") is not None or unused.get("frame_offset"):
            raise ValueError("the causal model takes frame_positions (and no CLIP image tokens)")
        if cache is not None:
            return self._forward_cached(x, timestep, cache, start_frame, context, text_kv, y)
        if clean is not None:
            return self._forward_teacher(clean, x, t_clean, timestep, context, y_clean, y)
        tokens, grid = self.embed_video(x, y)
        f, h, w = grid
        positions = list(range(f)) if frame_positions is None else list(frame_positions)
        if len(positions) != f:
            raise ValueError(f"{len(positions)} frame_positions for {f} latent frames")
        e, e0 = self.embed_time(self.token_timesteps(timestep, f, h * w), tokens.shape[1])
        rope = self.rope.cos_sin_frames(positions, h, w, tokens.device)
        mask = self.causal_mask(positions, positions, h * w, tokens.device, window)
        inputs = BlockInputs(e0, self.embed_context(context), rope, None, mask)
        tokens, hidden = self.run_blocks(tokens, inputs, extra_hints, hint_scale, return_hidden_states)
        sample = self.unpatchify(self.head(tokens, e), grid).float()
        return WanOutput(sample, hidden, grid) if return_hidden_states else sample

    def forward_teacher(self, clean: torch.Tensor, noisy: torch.Tensor, t_clean: torch.Tensor, t_noisy: torch.Tensor,
                        context: torch.Tensor | list[torch.Tensor], *, y_clean: torch.Tensor | None = None,
                        y_noisy: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: the velocity for `noisy` frames, noisy block i seeing the clean frames of
        blocks before i (at `t_clean`: 0, or a small augmentation noise) and itself."""
        return self(noisy, t_noisy, context, clean=clean, t_clean=t_clean, y_clean=y_clean, y=y_noisy)

    def _forward_teacher(self, clean, noisy, t_clean, t_noisy, context, y_clean, y_noisy) -> torch.Tensor:
        clean_tokens, grid = self.embed_video(clean, y_clean)
        noisy_tokens, _ = self.embed_video(noisy, y_noisy)
        f, h, w = grid
        length = clean_tokens.shape[1]
        t = torch.cat([self._per_token(t_clean, clean, f, h * w), self._per_token(t_noisy, noisy, f, h * w)], dim=1)
        e, e0 = self.embed_time(t, 2 * length)
        cos, sin = self.rope.cos_sin_frames(list(range(f)), h, w, clean.device)
        rope = (torch.cat([cos, cos]), torch.cat([sin, sin]))
        mask = self._teacher_mask(self._blocks(list(range(f)), h * w, clean.device), clean.device)
        inputs = BlockInputs(e0, self.embed_context(context), rope, None, mask)
        tokens, _ = self.run_blocks(torch.cat([clean_tokens, noisy_tokens], dim=1), inputs)
        return self.unpatchify(self.head(tokens[:, length:], e[:, length:]), grid).float()

    def _per_token(self, t: torch.Tensor, x: torch.Tensor, frames: int, frame_tokens: int) -> torch.Tensor:
        t = t.to(x.device)
        t = t[:, None].expand(x.shape[0], frames) if t.ndim == 1 else t
        return self.token_timesteps(t, frames, frame_tokens)

    # ------------------------------------------------------------------ with a KV cache

    def new_cache(self, batch: int, height: int, width: int, kv_cache_length: int, sink_size: int = 0,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> KVCache:
        """An empty cache for latents of `height` x `width` (the latent grid, before patching)."""
        c = self.config
        frame_tokens = (height // c.patch_size[1]) * (width // c.patch_size[2])
        weight = self.patch_embedding.weight
        return KVCache(c.num_layers, batch, frame_tokens, c.num_heads, c.head_dim, kv_cache_length, sink_size,
                       dtype or weight.dtype, device or weight.device)

    def text_kv(self, context: torch.Tensor | list[torch.Tensor]) -> TextKV:
        """Every block's text keys and values for a prompt, computed once and reused for each frame."""
        text = self.embed_context(context)
        return [block.cross_attn.context_kv(text) for block in self.blocks]

    def forward_cached(self, x: torch.Tensor, timestep: torch.Tensor, cache: KVCache, start_frame: int, *,
                       context: torch.Tensor | list[torch.Tensor] | None = None, text_kv: TextKV | None = None,
                       y: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity for the frames of `x`, which sit at `start_frame`, `start_frame + 1`, ...: they
        attend to the cached frames and to each other (block-causally); their keys / values are
        written into the cache (appended, or overwriting the same frames from an earlier call).
        `text_kv` (from `text_kv(context)`) saves recomputing the text keys at every call."""
        return self(x, timestep, context, cache=cache, start_frame=start_frame, text_kv=text_kv, y=y)

    def _forward_cached(self, x, timestep, cache, start_frame, context, text_kv, y) -> torch.Tensor:
        if text_kv is None and context is None:
            raise ValueError("the cached forward needs context or text_kv")
        text = self.embed_context(context) if text_kv is None else None  # each block projects it
        tokens, grid = self.embed_video(x, y)
        f, h, w = grid
        if h * w != cache.frame_tokens:
            raise ValueError(f"a latent frame has {h * w} tokens here, the cache was made for {cache.frame_tokens}")
        positions = list(range(start_frame, start_frame + f))
        slot = cache.place(positions)
        e, e0 = self.embed_time(self.token_timesteps(timestep, f, h * w), tokens.shape[1])
        rope = self.rope.cos_sin_frames(positions, h, w, tokens.device)
        mask = self.causal_mask(positions, cache.positions[: slot + f], h * w, tokens.device)
        for layer, block in enumerate(self.blocks):
            attend = functools.partial(_cached_attention, cache, layer, slot, mask)
            tokens = block(tokens, e0, text, rope, attend=attend, context_kv=None if text_kv is None else text_kv[layer])
        return self.unpatchify(self.head(tokens, e), grid).float()

    def prefill(self, x: torch.Tensor, cache: KVCache, start_frame: int = 0, *,
                context: torch.Tensor | list[torch.Tensor] | None = None, text_kv: TextKV | None = None,
                y: torch.Tensor | None = None) -> None:
        """Write clean frames (conditioning, or observed frames in the closed loop) into the cache at t = 0."""
        t = torch.zeros(x.shape[0], device=x.device)
        self.forward_cached(x, t, cache, start_frame, context=context, text_kv=text_kv, y=y)


def _cached_attention(cache: KVCache, layer: int, slot: int, mask: torch.Tensor | None,
                      self_attn: SelfAttention, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Self-attention of the new frames over the cache's earlier frames and themselves.

    Without gradient the new keys are written first and attention reads the buffer in place. With
    gradient (a self-forcing step), the cache must not be part of the graph: attention runs on a
    copy joined with the new keys, and the cache gets the detached keys."""
    q, k, v = self_attn.qkv(h, rope)
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
        k_prev, v_prev = cache.keys(layer, slot)
        k_all, v_all = torch.cat([k_prev.to(k.dtype), k], dim=1), torch.cat([v_prev.to(v.dtype), v], dim=1)
        cache.write(layer, slot, k, v)
    else:
        cache.write(layer, slot, k, v)
        k_all, v_all = cache.keys(layer, slot + k.shape[1] // cache.frame_tokens)
        k_all, v_all = k_all.to(q.dtype), v_all.to(q.dtype)
    return self_attn.o(attention(q, k_all, v_all, mask).type_as(h))


def make_causal(model: WanModel, num_frame_per_block: int = 1, independent_first_frame: bool = False) -> CausalWanModel:
    """Turn a built `WanModel` into the causal model in place: the same parameters (base weights,
    `vidar.pt`, LoRA adapters, on any device or still on meta), only the forward changes. This is
    how a recipe gets the causal model out of the loading code that builds `WanModel`s."""
    if type(model) is not WanModel:
        raise TypeError(f"make_causal takes a plain WanModel, got {type(model).__name__}")
    if num_frame_per_block < 1:
        raise ValueError(f"num_frame_per_block must be >= 1, got {num_frame_per_block}")
    model.__class__ = CausalWanModel
    model.num_frame_per_block = num_frame_per_block
    model.independent_first_frame = independent_first_frame
    return model
