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

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.layers import Head
from worldtune.models.wan.sizes import WanConfig

MOTION_CHANNELS = 2  # dx, dy: the recordings' channels 2-3 are not motion (see data/formats/sim_physics_files.py)
ORIGINAL_MOTION_CHANNELS = 4  # the original head's outputs per pixel (motion_head.pth)


@dataclass
class PhysicsOutput:
    sample: torch.Tensor  # velocity [B, out_dim, F, h, w]
    motion: torch.Tensor  # [B, 2, F, h, w] pixels of the output frames, since the previous latent frame
    log_depth: torch.Tensor  # [B, 1, F, h, w] log metres


class WanPhysicsModel(WanModel):
    """A Wan DiT (TI2V for the seed) with `motion_head` and `depth_head`."""

    added_modules = ("motion_head.", "depth_head.")  # not in a base checkpoint: they start fresh

    def _make_extra_modules(self) -> None:
        c = self.config
        self.motion_head = Head(c.dim, MOTION_CHANNELS, c.patch_size, c.eps)
        self.depth_head = Head(c.dim, 1, c.patch_size, c.eps)

    def _init_rule(self, module_name: str, module: nn.Module, attr: str):
        if not module_name.startswith(("motion_head", "depth_head")):
            return super()._init_rule(module_name, module, attr)
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
        motion = self.unpatchify(self.motion_head(tokens, e), grid, MOTION_CHANNELS).float()
        return PhysicsOutput(sample, motion, self.unpatchify(self.depth_head(tokens, e), grid, 1).float())


def make_physics_model(config: WanConfig) -> WanPhysicsModel:
    return WanPhysicsModel(config)


# --------------------------------------------------------------------------- original files

def to_original_motion_head(state: dict[str, torch.Tensor], patch: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Our motion head (2 channels) as the original's `motion_head.pth` (4 channels: 2-3 zero)."""
    cells = patch[0] * patch[1] * patch[2]
    weight = state["head.weight"].view(cells, MOTION_CHANNELS, -1)
    bias = state["head.bias"].view(cells, MOTION_CHANNELS)
    full_w = weight.new_zeros(cells, ORIGINAL_MOTION_CHANNELS, weight.shape[-1])
    full_b = bias.new_zeros(cells, ORIGINAL_MOTION_CHANNELS)
    full_w[:, :MOTION_CHANNELS], full_b[:, :MOTION_CHANNELS] = weight, bias
    return {"modulation": state["modulation"], "head.weight": full_w.flatten(0, 1), "head.bias": full_b.flatten()}


def from_original_motion_head(state: dict[str, torch.Tensor], patch: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The original's `motion_head.pth` (channels `(x y z c)`, c fastest) -> our (dx, dy) head."""
    cells = patch[0] * patch[1] * patch[2]
    rows = state["head.weight"].shape[0]
    if rows % cells or rows // cells < MOTION_CHANNELS:
        raise ValueError(f"motion head has {rows} outputs: not channels x {cells} patch cells")
    channels = rows // cells
    weight = state["head.weight"].view(cells, channels, -1)[:, :MOTION_CHANNELS].reshape(-1, state["head.weight"].shape[1])
    bias = state["head.bias"].view(cells, channels)[:, :MOTION_CHANNELS].reshape(-1)
    return {"modulation": state["modulation"], "head.weight": weight, "head.bias": bias}


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
