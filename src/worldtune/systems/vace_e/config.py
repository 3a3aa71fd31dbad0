"""VACE-E's config sections, with the seed's key names (`enable_vace_e`, `vace_e_layers`, ...).

The seed writes its keys at the top level of the file (`vace_e_layers: "0,5,10,15,20,25"`); the
loader moves them into these sections (`config.KEY_ALIASES`), so its YAML works as written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from worldtune.config import ConfigError, RunConfig
from worldtune.data.formats.vace_e import VaceEDataConfig
from worldtune.models.lora import LoraSettings
from worldtune.models.wan.vace_e import VaceEConfig
from worldtune.systems.vidar.config import OutputConfig
from worldtune.systems.wan_parts import SamplingConfig, WanModelConfig

log = logging.getLogger("worldtune")

# LoRA goes on the DiT only: not on the (frozen) VACE blocks, not on the VACE-E branch, which
# trains whole (peft matches target suffixes anywhere; this regex excludes those modules).
DIT_ONLY_LORA = r"(vace_e|vace_blocks)\..*"


@dataclass
class VaceEBranchConfig:
    """Sizes of the VACE-E encoders (the blocks take the DiT's)."""

    task_dim: int = 512
    num_heads: int = 8
    motion_layers: int = 2
    object_layers: int = 2
    pose_frequencies: int = 6


@dataclass
class VaceEModelConfig(WanModelConfig):
    size: str = "wan2.1-vace-1.3b"
    enable_vace_e: bool = True
    # DiT blocks that receive a VACE-E hint (the seed's comma-separated string).
    vace_e_layers: str = "0,5,10,15,20,25"
    # Text, hand motion and objects feed the branch (false: the embodiment image only).
    vace_e_task_processing: bool = True
    vace_e: VaceEBranchConfig = field(default_factory=VaceEBranchConfig)
    # The embodiment image's encoder: Wan2.1-I2V-14B-480P's CLIP (file or folder), "tiny", or null
    # (no embodiment features).
    clip: str | None = None
    # The embodiment image is VACE's reference frame too (one latent frame before the video).
    vace_reference: bool = True
    # Scale of the VACE control's and of the VACE-E branch's hints.
    vace_scale: float = 1.0
    vace_e_scale: float = 1.0
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=32, alpha=32.0, exclude_modules=DIT_ONLY_LORA))
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(shift=5.0, guidance_scale=5.0))

    def layers(self) -> tuple[int, ...]:
        try:
            layers = tuple(int(x) for x in str(self.vace_e_layers).replace(" ", "").strip("[]()").split(",") if x)
        except ValueError:
            raise ConfigError(f"model.vace_e_layers: expected block indices like \"0,5,10\", got {self.vace_e_layers!r}") from None
        if not layers:
            raise ConfigError("model.vace_e_layers: name at least one DiT block")
        return layers

    def branch(self, image_dim: int, temporal_stride: int) -> VaceEConfig:
        b = self.vace_e
        return VaceEConfig(vace_e_layers=self.layers(), task_dim=b.task_dim, num_heads=b.num_heads,
                           motion_layers=b.motion_layers, object_layers=b.object_layers,
                           pose_frequencies=b.pose_frequencies, image_dim=image_dim,
                           task_processing=self.vace_e_task_processing, temporal_stride=temporal_stride)

    def check(self) -> None:
        self.layers()


@dataclass
class VramOptimizationConfig:
    """The seed's `vram_optimization` section."""

    enabled: bool = False
    # The optimizer's state (and, under FSDP2, the parameters and gradients) in CPU memory: FSDP2's
    # CPU offload (`dist.cpu_offload`), which needs torchrun.
    offload_optimizer: bool = False
    # The frozen models (VAE, T5, CLIP) wait in CPU memory and visit the device only to encode.
    cpu_offload: bool = False
    # < 1: reduce gradients in bf16 (half the bytes) instead of fp32.
    gradient_compression: float = 1.0


@dataclass
class VaceERunConfig(RunConfig):
    model: VaceEModelConfig = field(default_factory=VaceEModelConfig)
    data: VaceEDataConfig = field(default_factory=VaceEDataConfig)
    vram_optimization: VramOptimizationConfig = field(default_factory=VramOptimizationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def check(self) -> None:
        vram = self.vram_optimization
        if not vram.enabled:
            return
        # The seed's switches, spelled as the trainer's settings they mean.
        if vram.offload_optimizer:
            self.dist.cpu_offload = True
        if vram.gradient_compression < 1.0:
            self.dist.reduce_dtype = "bf16"
