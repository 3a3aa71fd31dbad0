"""VACE-E: Wan2.1-VACE plus a branch that reads a demonstration (hand motion, object trajectories,
the task prompt and an embodiment image) and adds its hints after chosen DiT blocks.

The original (`LiZhYun/EgoXEdit`, `diffsynth/models/wan_video_vace_E.py`) squeezes every modality to
one 16-D vector and broadcasts a single "cross-attention" token to every video token; its motion
encoder cannot tell time order. Ours keeps the structure and names where they are the same and
fixes the rest:

- **Encoders** (`hand_motion_encoder`, `object_trajectory_encoder`, `text_encoder`,
  `embodiment_encoder`): per-timestep tokens, not one vector. Motion and object tokens carry their
  frame's time (a sinusoid of the clip frame index) and object tokens their object id
  (`object_type_embedding`); transformer layers with key-padding masks, so padding is never read.
- **Task-embodiment fusion** (`task_fusion`): task tokens (text, hands, objects) through
  `task_to_model_proj`, embodiment tokens (CLIP) through `embodiment_to_model_proj`, scaled by the
  learnable `task_weight` / `embodiment_weight` and tagged by `modality_embedding`, after a learnable
  `null_token` that is always present (a sample without any condition still attends to something).
- **VACE-E blocks** (`vace_blocks`, one per `vace_e_layers` entry): a DiT block (weights copied from
  the DiT block it serves, as the original does) preceded by `task_video_cross_attn`, a real
  cross-attention from every video token to the fused condition tokens. Its queries carry the
  token's position (`video_position_proj`: frame time in clip frames, row, column), because Wan's
  own cross-attention has no position and a hand at (x, y) must land at a place in the frame.
  Each block's hint is `after_proj(c)`, and `after_proj` starts at zero: before training, VACE-E
  is exactly the pretrained VACE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from worldtune.models.wan.dit import BlockInputs
from worldtune.models.wan.layers import FP32LayerNorm, WanBlock, attention, sinusoidal_embedding
from worldtune.models.wan.sizes import WanConfig
from worldtune.models.wan.vace import WanVaceModel

# Condition keys a VACE-E forward reads (each optional; a missing modality is simply absent):
#   text [B, Lt, text_dim] + text_mask [B, Lt]            T5 features of the task prompt
#   hand_motion [B, T, 20] + hand_mask [B, T]             the clip's frames, 20-D each
#   objects [B, T, N, 9] + object_mask [B, T, N] + object_ids [B, N] (1-based; 0: unknown)
#   embodiment [B, Li, image_dim] + embodiment_mask [B, Li]   CLIP tokens of the embodiment image
Condition = dict[str, torch.Tensor]
SPATIAL_FREQUENCIES = 6  # sinusoids per spatial axis of the query positions


@dataclass(frozen=True)
class VaceEConfig:
    """The branch's sizes. `vace_e_layers` and `task_processing` are the seed's keys."""

    vace_e_layers: tuple[int, ...] = (0, 5, 10, 15, 20, 25)
    task_dim: int = 512  # the encoders' width
    num_heads: int = 8  # the encoders' heads
    motion_layers: int = 2
    object_layers: int = 2
    hand_dim: int = 20
    object_dim: int = 9
    image_dim: int = 1280  # CLIP ViT-H/14 penultimate tokens
    max_objects: int = 10
    # Fourier frequencies of the hand and object poses (pi 2^k, k < this; 0: raw values only).
    pose_frequencies: int = 6
    # The seed's vace_e_task_processing: text, hands and objects (false: the embodiment image only).
    task_processing: bool = True
    # Clip frames per latent frame (the VAE's temporal stride): a video token's time in frames.
    temporal_stride: int = 4


def time_features(frames: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoids of (fractional) frame indices [...] -> [..., width], float32."""
    flat = sinusoidal_embedding(width, frames.reshape(-1).float()).float()
    return flat.view(*frames.shape, width)


def fourier_features(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[..., D] -> [..., D * (1 + 2 * frequencies)]: the values, then sin and cos of pi 2^k x.

    Poses are continuous; with these a linear layer can compare two positions (cos of their
    difference is a sum of products of these), which is what attending "near the hand" needs."""
    if frequencies == 0:
        return x
    scales = (2.0 ** torch.arange(frequencies, device=x.device, dtype=torch.float32)) * math.pi
    angles = x.float()[..., None] * scales
    return torch.cat([x.float(), angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class SequenceEncoder(nn.Module):
    """`input_projection` (of the values' Fourier features), optional time / id embeddings,
    transformer layers over the valid tokens, `output_norm`. Tokens [B, L, in] + valid [B, L] ->
    [B, L, width]."""

    def __init__(self, in_dim: int, width: int, num_heads: int, num_layers: int, frequencies: int = 0) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.input_projection = nn.Linear(in_dim * (1 + 2 * frequencies), width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, num_heads, 2 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        x = fourier_features(x, self.frequencies)
        h = self.input_projection(x.to(self.input_projection.weight.dtype))
        if added is not None:
            h = h + added.to(h.dtype)
        # A row with no valid token would give NaN in attention; it is masked out later anyway.
        padding = ~(valid | ~valid.any(dim=1, keepdim=True))
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return self.output_norm(h)


class ObjectTrajectoryEncoder(SequenceEncoder):
    """Object poses [B, T, N, 9] -> T*N tokens, each with its frame's time and its object's id."""

    def __init__(self, in_dim: int, width: int, num_heads: int, num_layers: int, max_objects: int,
                 frequencies: int) -> None:
        super().__init__(in_dim, width, num_heads, num_layers, frequencies)
        self.object_type_embedding = nn.Embedding(max_objects + 1, width)  # id 0: unknown

    def encode(self, objects: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, n, _ = objects.shape
        frames = torch.arange(t, device=objects.device)[None, :, None].expand(b, t, n)
        ids = ids.long().clamp(0, self.object_type_embedding.num_embeddings - 1)[:, None, :].expand(b, t, n)
        added = time_features(frames, self.input_projection.out_features) + self.object_type_embedding(ids).float()
        tokens = self(objects.flatten(1, 2), valid.flatten(1, 2), added.flatten(1, 2))
        return tokens, valid.flatten(1, 2)


class TaskEmbodimentFusion(nn.Module):
    """Task tokens and embodiment tokens -> one condition sequence at the DiT's width."""

    MODALITIES = ("text", "hand_motion", "objects", "embodiment")

    def __init__(self, task_dim: int, dim: int) -> None:
        super().__init__()
        self.task_to_model_proj = nn.Sequential(nn.Linear(task_dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.embodiment_to_model_proj = nn.Sequential(nn.Linear(task_dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.task_weight = nn.Parameter(torch.full((1,), 0.5))  # [1], not a scalar: FSDP2 shards no 0-d tensor
        self.embodiment_weight = nn.Parameter(torch.full((1,), 0.5))
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.MODALITIES), dim))
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, streams: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """{modality: (tokens [B, L, task_dim], valid [B, L])} -> (tokens [B, 1 + sum L, dim], valid)."""
        dtype = self.null_token.dtype
        tokens, valid = [self.null_token.expand(batch, 1, -1)], [torch.ones(batch, 1, dtype=torch.bool,
                                                                             device=self.null_token.device)]
        for index, name in enumerate(self.MODALITIES):
            if name not in streams:
                continue
            x, ok = streams[name]
            if name == "embodiment":
                x = self.embodiment_to_model_proj(x) * self.embodiment_weight
            else:
                x = self.task_to_model_proj(x) * self.task_weight
            tokens.append((x + self.modality_embedding[index]).to(dtype))
            valid.append(ok.to(tokens[0].device))
        return torch.cat(tokens, dim=1), torch.cat(valid, dim=1)


class VaceEBlock(WanBlock):
    """A DiT block preceded by cross-attention to the condition tokens; emits `after_proj(c)`."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, cross_attn_norm: bool,
                 eps: float) -> None:
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        from worldtune.models.wan.layers import CrossAttention

        self.task_video_norm = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.task_video_cross_attn = CrossAttention(dim, num_heads, qk_norm, eps)
        self.after_proj = nn.Linear(dim, dim)

    def attend_condition(self, c: torch.Tensor, position: torch.Tensor, cond: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
        attn = self.task_video_cross_attn
        compute = attn.q.weight.dtype
        heads = (attn.num_heads, -1)
        q = attn.norm_q(attn.q((self.task_video_norm(c).float() + position).to(compute))).unflatten(-1, heads)
        k, v = attn.context_kv(cond.to(compute))
        out = attention(q, k, v, valid[:, None, None, :])  # key padding, broadcast over heads and queries
        return c + attn.o(out.to(compute)).float()

    def forward(self, c: torch.Tensor, inputs: BlockInputs, position: torch.Tensor, cond: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next c, hint); the module's forward, so FSDP2 and activation checkpointing wrap it."""
        c = self.attend_condition(c, position, cond, valid)
        c = WanBlock.forward(self, c, inputs.e0, inputs.context, inputs.rope, inputs.image_context, inputs.mask)
        return c, self.after_proj(c.to(self.after_proj.weight.dtype))


class VaceEBranch(nn.Module):
    """Encoders, fusion and VACE-E blocks; `hints(...)` -> {DiT block index: hint [B, L, dim]}."""

    def __init__(self, cfg: VaceEConfig, wan: WanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, heads = cfg.task_dim, cfg.num_heads
        if cfg.task_processing:
            self.text_encoder = SequenceEncoder(wan.text_dim, d, heads, 0)
            self.hand_motion_encoder = SequenceEncoder(cfg.hand_dim, d, heads, cfg.motion_layers,
                                                       cfg.pose_frequencies)
            self.object_trajectory_encoder = ObjectTrajectoryEncoder(cfg.object_dim, d, heads, cfg.object_layers,
                                                                     cfg.max_objects, cfg.pose_frequencies)
        self.embodiment_encoder = SequenceEncoder(cfg.image_dim, d, heads, 0)
        self.task_fusion = TaskEmbodimentFusion(d, wan.dim)
        self.video_position_proj = nn.Linear(_position_width(), wan.dim)
        self.vace_blocks = nn.ModuleList(
            VaceEBlock(wan.dim, wan.ffn_dim, wan.num_heads, wan.qk_norm, wan.cross_attn_norm, wan.eps)
            for _ in cfg.vace_e_layers)

    def condition_tokens(self, cond: Condition, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        streams: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.cfg.task_processing:
            if "text" in cond:
                streams["text"] = (self.text_encoder(cond["text"], cond["text_mask"]), cond["text_mask"])
            if "hand_motion" in cond:
                motion, valid = cond["hand_motion"], cond["hand_mask"]
                frames = torch.arange(motion.shape[1], device=motion.device).expand(motion.shape[:2])
                added = time_features(frames, self.cfg.task_dim)
                streams["hand_motion"] = (self.hand_motion_encoder(motion, valid, added), valid)
            if "objects" in cond:
                streams["objects"] = self.object_trajectory_encoder.encode(cond["objects"], cond["object_ids"],
                                                                           cond["object_mask"])
        if "embodiment" in cond:
            streams["embodiment"] = (self.embodiment_encoder(cond["embodiment"], cond["embodiment_mask"]),
                                     cond["embodiment_mask"])
        return self.task_fusion(streams, batch)

    def hints(self, tokens: torch.Tensor, inputs: BlockInputs, grid: tuple[int, int, int], cond: Condition,
              reference_frames: int = 0) -> dict[int, torch.Tensor]:
        """Hints from the video tokens (the DiT's patch-embedded input) and the condition."""
        fused, valid = self.condition_tokens(cond, tokens.shape[0])
        features = query_positions(grid, reference_frames, self.cfg.temporal_stride, tokens.device)
        position = self.video_position_proj(features.to(self.video_position_proj.weight.dtype)).float()
        c, hints = tokens, {}
        for layer, block in zip(self.cfg.vace_e_layers, self.vace_blocks, strict=True):
            c, hints[layer] = block(c, inputs, position, fused, valid)
        return hints


def _position_width() -> int:
    return 32 + 2 * 2 * SPATIAL_FREQUENCIES  # time sinusoids + (sin, cos) x frequencies x (row, column)


def query_positions(grid: tuple[int, int, int], reference_frames: int, temporal_stride: int,
                    device: torch.device) -> torch.Tensor:
    """[F*H*W, width] position features of the video tokens: the clip frame a latent frame ends on
    (latent f >= 1 covers frames 4f-3..4f; reference frames, prepended by VACE, sit at -1), then
    row and column in [0, 1] at several frequencies."""
    f, h, w = grid
    latent = torch.arange(f, device=device) - reference_frames
    frames = torch.where(latent >= 0, latent * temporal_stride, torch.full_like(latent, -1)).float()
    time = time_features(frames, 32)[:, None, None].expand(f, h, w, 32)
    scales = (2.0 ** torch.arange(SPATIAL_FREQUENCIES, device=device)) * math.pi
    rows = ((torch.arange(h, device=device) + 0.5) / h)[:, None] * scales
    cols = ((torch.arange(w, device=device) + 0.5) / w)[:, None] * scales
    rows = torch.cat([rows.sin(), rows.cos()], -1)[None, :, None].expand(f, h, w, -1)
    cols = torch.cat([cols.sin(), cols.cos()], -1)[None, None, :].expand(f, h, w, -1)
    return torch.cat([time, rows, cols], -1).reshape(f * h * w, -1)


class WanVaceEModel(WanVaceModel):
    """Wan2.1-VACE with the VACE-E branch as `vace_e`: `forward(..., vace_e=condition)`."""

    added_modules = ("vace_e.",)  # not in a VACE base checkpoint: they start fresh

    def __init__(self, config: WanConfig, vace_e: VaceEConfig) -> None:
        self.vace_e_config = vace_e
        super().__init__(config)

    def _make_extra_modules(self) -> None:
        super()._make_extra_modules()
        layers = self.vace_e_config.vace_e_layers
        if not layers or any(not 0 <= i < self.config.num_layers for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"vace_e_layers {layers}: distinct block indices below {self.config.num_layers}")
        self.vace_e = VaceEBranch(self.vace_e_config, self.config)

    # ------------------------------------------------------------------ initialisation

    def initial_value(self, name: str) -> torch.Tensor:
        """A VACE-E block starts as a copy of the DiT block it serves (its current weights: loading
        fills the DiT before the tensors a checkpoint lacks); its own modules as `_init_rule` says."""
        source = self._copied_from(name.replace(".base_layer.", "."))
        if source is None:
            return super().initial_value(name)
        module_name, _, attr = source.rpartition(".")
        module = self.get_submodule(module_name)
        value = getattr(getattr(module, "base_layer", module), attr)
        if value.is_meta:
            return super().initial_value(source)
        if hasattr(value, "full_tensor"):  # a shard: every rank fills the same names in the same order
            value = value.full_tensor()
        return value.detach().float().cpu().clone()

    def _copied_from(self, name: str) -> str | None:
        prefix = "vace_e.vace_blocks."
        if not name.startswith(prefix):
            return None
        index, _, rest = name[len(prefix):].partition(".")
        if rest.startswith(("task_video_", "after_proj")):
            return None
        return f"blocks.{self.vace_e_config.vace_e_layers[int(index)]}.{rest}"

    def _init_rule(self, module_name: str, module: nn.Module, attr: str):
        if not module_name.startswith("vace_e.") and module_name != "vace_e":
            return super()._init_rule(module_name, module, attr)
        if module_name.endswith(".after_proj"):
            return lambda t, g: t.zero_()  # the hints start at zero: step 0 is the pretrained VACE
        if attr in ("task_weight", "embodiment_weight"):
            return lambda t, g: t.fill_(0.5)
        if attr in ("modality_embedding", "null_token") or isinstance(module, nn.Embedding):
            return lambda t, g: t.normal_(std=0.02, generator=g)
        if isinstance(module, nn.MultiheadAttention):
            if attr == "in_proj_weight":
                return lambda t, g: nn.init.xavier_uniform_(t, generator=g)
            return lambda t, g: t.zero_()
        return super()._init_rule(module_name, module, attr)

    # ------------------------------------------------------------------ forward

    def collect_hints(self, tokens: torch.Tensor, inputs: BlockInputs, grid: tuple[int, int, int],
                      vace_context: torch.Tensor | None, vace_context_scale: float,
                      **extra) -> dict[int, torch.Tensor]:
        hints = super().collect_hints(tokens, inputs, grid, vace_context, vace_context_scale)
        cond = extra.get("vace_e")
        if cond is not None:
            scale = extra.get("vace_e_scale", 1.0)
            for index, hint in self.vace_e.hints(tokens, inputs, grid, cond, extra.get("reference_frames", 0)).items():
                hints[index] = hints[index] + hint * scale if index in hints else hint * scale
        return hints
