"""Our Wan DiT: t2v, i2v (Wan2.1) and ti2v (Wan2.2) in one plain nn.Module.

Parameter names are the original Wan names, so official, DiffSynth-Studio and community
checkpoints load without conversion. Inputs are batched tensors (all videos of a batch share one
shape), not the upstream lists, so there is no sequence padding.

    model = WanModel(wan_config("wan2.2-ti2v-5b"))
    velocity = model(latents, timestep, text_embeddings)

Hooks for the recipes built on top: `extra_hints` adds tensors after chosen blocks (VACE-E) and
`return_hidden_states` returns every block's output (extra heads), without copying block code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from worldtune.models.wan.layers import (
    FP32LayerNorm,
    Head,
    ImageProjection,
    RMSNorm,
    WanBlock,
    sinusoidal_embedding,
)
from worldtune.models.wan.rope import Rope3D
from worldtune.models.wan.sizes import WanConfig


@dataclass
class BlockInputs:
    """What every block needs besides the tokens."""

    e0: torch.Tensor  # [B, 1 or L, 6, dim] float32
    context: torch.Tensor  # [B, text_len, dim]
    rope: tuple[torch.Tensor, torch.Tensor]
    image_context: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class WanOutput:
    sample: torch.Tensor  # [B, out_dim, F, H, W]
    hidden_states: list[torch.Tensor]  # each block's output tokens [B, L, dim]
    grid: tuple[int, int, int]


class WanModel(nn.Module):
    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.config = c = config
        # Drawn before any submodule exists, so a model built on meta and initialised later (shard by
        # shard) gets the same value, hence the same weights, as one built on the CPU.
        self.init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(self._make_block() for _ in range(c.num_layers))
        self.head = Head(c.dim, c.out_dim, c.patch_size, c.eps)
        if c.model_type == "i2v":
            self.img_emb = ImageProjection(c.image_dim, c.dim)
        self.rope = Rope3D(c.head_dim)
        self._make_extra_modules()
        self.init_weights()

    def _make_extra_modules(self) -> None:
        """Subclasses add their modules here, before the one initialisation of every parameter."""

    def _make_block(self) -> WanBlock:
        c = self.config
        return WanBlock(c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps,
                        with_image=c.model_type == "i2v")

    # ------------------------------------------------------------------ initialisation

    def init_weights(self) -> None:
        """Upstream's initialisation (Xavier linears, small embeddings, a zero output layer), each
        tensor from its own generator seeded by (init_seed, name): any one tensor can be produced
        alone, as sharded loading does, and equals the whole-model initialisation."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if not param.is_meta:
                    param.copy_(self.initial_value(name))

    def initial_value(self, name: str) -> torch.Tensor:
        """The initial value of parameter `name`, a float32 CPU tensor of its full shape. A layer
        wrapped by LoRA (`q.base_layer.weight`) starts as the plain layer does (`q.weight`)."""
        module_name, _, attr = name.rpartition(".")
        module = self.get_submodule(module_name)
        module = getattr(module, "base_layer", module)  # named without the LoRA layer around it
        plain = name.replace(".base_layer.", ".")
        value = torch.empty(getattr(module, attr).shape, dtype=torch.float32, device="cpu")
        generator = torch.Generator().manual_seed(name_seed(self.init_seed, plain))
        return self._init_rule(plain.rpartition(".")[0], module, attr)(value, generator)

    def _init_rule(self, module_name: str, module: nn.Module, attr: str):
        """How upstream initialises one tensor: fn(empty tensor, generator) -> the tensor."""
        if attr == "modulation":  # randn / sqrt(dim), as the blocks and the head create it
            return lambda t, g: t.normal_(generator=g).div_(t.shape[-1] ** 0.5)
        if isinstance(module, (RMSNorm, FP32LayerNorm, nn.LayerNorm)):
            return (lambda t, g: t.fill_(1.0)) if attr == "weight" else (lambda t, g: t.zero_())
        if isinstance(module, nn.Linear):
            if attr == "bias" or module_name == "head.head":
                return lambda t, g: t.zero_()
            if module_name.startswith(("text_embedding.", "time_embedding.")):
                return lambda t, g: t.normal_(std=0.02, generator=g)
            return lambda t, g: nn.init.xavier_uniform_(t, generator=g)
        if isinstance(module, nn.Conv3d):
            fan_in = module.weight[0].numel()
            if attr == "weight" and module_name == "patch_embedding":  # Xavier over the flattened kernel
                return lambda t, g: nn.init.xavier_uniform_(t.view(t.shape[0], -1), generator=g).view(t.shape)
            return lambda t, g: t.uniform_(-(fan_in**-0.5), fan_in**-0.5, generator=g)  # PyTorch's Conv default
        raise ValueError(f"no initialisation rule for {module_name}.{attr} ({type(module).__name__})")

    # ------------------------------------------------------------------ pieces

    def embed_video(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[B, C, F, H, W] (+ i2v condition y, concatenated on channels) -> tokens [B, L, dim], grid."""
        if y is not None:
            x = torch.cat([x, y], dim=1)
        if x.shape[1] != self.config.in_dim:
            raise ValueError(f"expected {self.config.in_dim} input channels, got {x.shape[1]}")
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        grid = tuple(x.shape[2:])
        # Contiguous tokens: otherwise every LayerNorm copies its (token-fastest) input, twice a step.
        return x.flatten(2).transpose(1, 2).contiguous(), grid

    def embed_time(self, timestep: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps [B] or per token [B, L] -> (e [B, 1|L, dim], e0 [B, 1|L, 6, dim]), float32."""
        if timestep.ndim == 1:
            timestep = timestep[:, None]
        elif timestep.shape[1] != num_tokens:
            raise ValueError(f"per-token timesteps have {timestep.shape[1]} entries for {num_tokens} tokens")
        batch, length = timestep.shape
        freq = sinusoidal_embedding(self.config.freq_dim, timestep.flatten()).float()
        weight_dtype = self.time_embedding[0].weight.dtype
        with torch.autocast(device_type=timestep.device.type, enabled=False):
            e = self.time_embedding(freq.to(weight_dtype)).float()
            e0 = self.time_projection(e.to(weight_dtype)).float()
        return e.view(batch, length, -1), e0.view(batch, length, 6, -1)

    def embed_context(self, context: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Text embeddings, zero-padded to text_len as upstream (padding changes the output)."""
        text_len = self.config.text_len
        if isinstance(context, (list, tuple)):
            context = torch.stack([_pad_rows(u, text_len) for u in context])
        elif context.shape[1] != text_len:
            context = torch.stack([_pad_rows(u, text_len) for u in context])
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))

    def block_inputs(self, e0: torch.Tensor, context: torch.Tensor | list[torch.Tensor],
                     grid: tuple[int, int, int], device: torch.device, clip_fea: torch.Tensor | None = None,
                     frame_offset: int = 0) -> BlockInputs:
        image_context = None
        if self.config.model_type == "i2v":
            if clip_fea is None:
                raise ValueError("i2v model needs clip_fea (CLIP image tokens)")
            image_context = self.img_emb(clip_fea.to(self.img_emb.proj[1].weight.dtype))
        rope = self.rope.cos_sin(grid, device, frame_offset)
        return BlockInputs(e0, self.embed_context(context), rope, image_context)

    def run_blocks(self, tokens: torch.Tensor, inputs: BlockInputs, hints: dict[int, torch.Tensor] | None = None,
                   hint_scale: float = 1.0, capture: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All blocks; `hints[i]` is added (times hint_scale) to the output of block i."""
        hidden: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            tokens = self._call_block(block, tokens, inputs)
            if hints and index in hints:
                tokens = tokens + hints[index] * hint_scale
            if capture:
                hidden.append(tokens)
        return tokens, hidden

    def _call_block(self, block: nn.Module, tokens: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        # Activation checkpointing is applied per block from outside (train/distributed.py).
        return block(tokens, inputs.e0, inputs.context, inputs.rope, inputs.image_context, inputs.mask)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int], channels: int | None = None) -> torch.Tensor:
        """[B, L, prod(patch)*C] -> [B, C, F*pt, H*ph, W*pw]; C is out_dim unless given."""
        f, h, w = grid
        c = self.config.out_dim if channels is None else channels
        pt, ph, pw = self.config.patch_size
        x = tokens.view(tokens.shape[0], f, h, w, pt, ph, pw, c)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(tokens.shape[0], c, f * pt, h * ph, w * pw)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | list[torch.Tensor], *,
                y: torch.Tensor | None = None, clip_fea: torch.Tensor | None = None,
                extra_hints: dict[int, torch.Tensor] | None = None, hint_scale: float = 1.0,
                frame_offset: int = 0, return_hidden_states: bool = False) -> torch.Tensor | WanOutput:
        """Predicted velocity [B, out_dim, F, H, W] in float32 (or a WanOutput with hidden states)."""
        tokens, grid = self.embed_video(x, y)
        e, e0 = self.embed_time(timestep, tokens.shape[1])
        inputs = self.block_inputs(e0, context, grid, tokens.device, clip_fea, frame_offset)
        tokens, hidden = self.run_blocks(tokens, inputs, extra_hints, hint_scale, return_hidden_states)
        sample = self.unpatchify(self.head(tokens, e), grid).float()
        return WanOutput(sample, hidden, grid) if return_hidden_states else sample


def name_seed(seed: int, name: str) -> int:
    """A generator seed from the model's seed and a tensor name, the same in every process (unlike
    Python's salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _pad_rows(u: torch.Tensor, length: int) -> torch.Tensor:
    if u.shape[0] > length:
        raise ValueError(f"context has {u.shape[0]} tokens, more than text_len {length}")
    return torch.cat([u, u.new_zeros(length - u.shape[0], u.shape[1])])
