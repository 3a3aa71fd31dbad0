"""Sim-Physics: a Wan DiT with a motion head and a depth head on its last hidden states.

The original (`Windsao/Sim4VideoGen`, `diffsynth/models/wan_video_dit_motion.py`) hooks `dit.head`
to catch the last block's tokens and the timestep embedding, and gives each head the structure of
Wan's own output head: a non-affine LayerNorm, adaLN shift / scale from `modulation` (zeros at
start) plus the timestep embedding, a linear layer to `channels x patch` values, unpatchified to
the latent grid. Ours are the same modules (`Head`, so the state-dict keys are the original's:
`modulation`, `head.weight`, `head.bias`), reached without a hook: `forward` returns them beside
the velocity. The motion head predicts (dx, dy) in output pixels, the depth head log-metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.layers import Head
from worldtune.models.wan.physics_heads import SpatioTemporalHead
from worldtune.models.wan.sizes import WanConfig

MOTION_CHANNELS = 2  # dx, dy: the recordings' channels 2-3 are not motion (see data/formats/sim_physics_files.py)
ORIGINAL_MOTION_CHANNELS = 4  # the original head's outputs per pixel (motion_head.pth)


@dataclass
class PhysicsOutput:
    sample: torch.Tensor  # velocity [B, out_dim, F, h, w]
    motion: torch.Tensor  # [B, 2, F, h, w] pixels of the output frames, since the previous latent frame
    log_depth: torch.Tensor  # [B, 1, F, h, w] log metres


@dataclass(frozen=True)
class HeadKinds:
    """Which head each output gets: `plain` (Wan's output-head structure, the original's default),
    or a spatio-temporal one, `simple` or `full` (`physics_heads.py`)."""

    motion: str = "plain"
    depth: str = "plain"
    features: int = 256  # the full head's channels
    temporal_blocks: int = 2

    def make(self, kind: str, dim: int, channels: int, patch: tuple[int, int, int], eps: float) -> nn.Module:
        if kind == "plain":
            return Head(dim, channels, patch, eps)
        return SpatioTemporalHead(dim, channels, patch, eps, kind=kind, features=self.features,
                                  temporal_blocks=self.temporal_blocks)


class WanPhysicsModel(WanModel):
    """A Wan DiT (TI2V for the seed) with `motion_head` and `depth_head`."""

    added_modules = ("motion_head.", "depth_head.")  # not in a base checkpoint: they start fresh

    def __init__(self, config: WanConfig, heads: HeadKinds | None = None) -> None:
        self.__dict__["head_kinds"] = heads or HeadKinds()  # read by _make_extra_modules, inside __init__
        super().__init__(config)

    def _make_extra_modules(self) -> None:
        c, kinds = self.config, self.head_kinds
        self.motion_head = kinds.make(kinds.motion, c.dim, MOTION_CHANNELS, c.patch_size, c.eps)
        self.depth_head = kinds.make(kinds.depth, c.dim, 1, c.patch_size, c.eps)

    def _init_rule(self, module_name: str, module: nn.Module, attr: str):
        if not module_name.startswith(("motion_head", "depth_head")):
            return super()._init_rule(module_name, module, attr)
        head_name, _, inner = module_name.partition(".")
        head = getattr(self, head_name)
        if isinstance(head, SpatioTemporalHead):
            rule = head.init_rule(inner, attr)
            return rule if rule is not None else super()._init_rule(module_name, module, attr)
        if attr == "modulation" or attr == "bias":
            return lambda t, g: t.zero_()  # the original's: zero modulation, zero bias
        if module_name.endswith(".head"):
            return lambda t, g: nn.init.xavier_uniform_(t, gain=0.01, generator=g)
        return super()._init_rule(module_name, module, attr)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | list[torch.Tensor], *,
                y: torch.Tensor | None = None, heads: bool = True, **kwargs) -> torch.Tensor | PhysicsOutput:
        """The velocity, and with `heads` the motion and log-depth of every latent frame."""
        tokens, grid = self.embed_video(x, y)
        e, e0 = self.embed_time(timestep, tokens.shape[1])
        inputs = self.block_inputs(e0, context, grid, tokens.device, kwargs.get("clip_fea"))
        tokens, _ = self.run_blocks(tokens, inputs)
        sample = self.unpatchify(self.head(tokens, e), grid).float()
        if not heads:
            return sample
        motion = self.unpatchify(self._head(self.motion_head, tokens, e, grid), grid, MOTION_CHANNELS).float()
        return PhysicsOutput(sample, motion, self.unpatchify(self._head(self.depth_head, tokens, e, grid), grid, 1).float())

    @staticmethod
    def _head(head: nn.Module, tokens: torch.Tensor, e: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return head(tokens, e, grid) if isinstance(head, SpatioTemporalHead) else head(tokens, e)


# --------------------------------------------------------------------------- original files

FINAL_LAYERS = ("head", "output_conv.1")  # the plain and simple heads' linear layer, the full head's 1x1 conv


def _final_layer(state: dict[str, torch.Tensor]) -> str:
    for name in FINAL_LAYERS:
        if f"{name}.weight" in state and f"{name}.bias" in state:
            return name
    raise KeyError(f"no {' / '.join(n + '.weight' for n in FINAL_LAYERS)} with its bias")


def to_original_motion_head(state: dict[str, torch.Tensor], patch: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Our motion head (2 channels) as the original's `motion_head.pth` (4 channels: 2-3 zero); the
    final layer's outputs are `(x y z c)`, c fastest. Every other tensor is kept as it is."""
    name, cells = _final_layer(state), math.prod(patch)
    weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
    full_w = weight.new_zeros(cells, ORIGINAL_MOTION_CHANNELS, *weight.shape[1:])
    full_b = bias.new_zeros(cells, ORIGINAL_MOTION_CHANNELS)
    full_w[:, :MOTION_CHANNELS] = weight.view(cells, MOTION_CHANNELS, *weight.shape[1:])
    full_b[:, :MOTION_CHANNELS] = bias.view(cells, MOTION_CHANNELS)
    return {**state, f"{name}.weight": full_w.flatten(0, 1), f"{name}.bias": full_b.flatten()}


def from_original_motion_head(state: dict[str, torch.Tensor], patch: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The original's `motion_head.pth` (channels `(x y z c)`, c fastest) -> our (dx, dy) head."""
    name, cells = _final_layer(state), math.prod(patch)
    weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
    if weight.shape[0] % cells or weight.shape[0] // cells < MOTION_CHANNELS:
        raise ValueError(f"motion head has {weight.shape[0]} outputs: not channels x {cells} patch cells")
    channels = weight.shape[0] // cells
    kept_w = weight.view(cells, channels, *weight.shape[1:])[:, :MOTION_CHANNELS].flatten(0, 1)
    kept_b = bias.view(cells, channels)[:, :MOTION_CHANNELS].flatten()
    return {**state, f"{name}.weight": kept_w, f"{name}.bias": kept_b}


ORIGINAL_FILES = ("motion_head.pth", "depth_head.pth", "lora_weights.pth")


def read_original_files(folder: str | Path, patch: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The original's `final/` (or `checkpoint-<step>/`) folder as weights under our names:
    `motion_head.*` (its dx, dy rows), `depth_head.*`, and the LoRA tensors as they are
    (`blocks.<i>.self_attn.q.lora_A.default.weight`: peft's names, ours too)."""
    from worldtune.utils.weight_files import CheckpointError

    folder = Path(folder)
    if not (folder / "motion_head.pth").is_file() or not (folder / "depth_head.pth").is_file():
        raise CheckpointError(folder, "no motion_head.pth / depth_head.pth (the original's final/ folder)")

    def load(name: str) -> dict[str, torch.Tensor]:
        try:
            state = torch.load(folder / name, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as err:
            raise CheckpointError(folder / name, f"cannot read ({err})") from err
        if not isinstance(state, dict):
            raise CheckpointError(folder / name, "not a state dict")
        return state

    try:
        motion = from_original_motion_head(load("motion_head.pth"), patch)
    except (KeyError, ValueError) as err:
        raise CheckpointError(folder / "motion_head.pth", f"not a motion head ({err})") from err
    weights = {f"motion_head.{k}": v for k, v in motion.items()}
    weights.update({f"depth_head.{k}": v for k, v in load("depth_head.pth").items()})
    if (folder / "lora_weights.pth").is_file():
        weights.update(load("lora_weights.pth"))
    return weights
