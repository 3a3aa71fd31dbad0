"""`IDMConfig`: the sizes of the masked inverse dynamics model (an OmegaConf-friendly section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IDMConfig:
    """Hyper-parameters of `IDM`. The defaults are Vidar's released model (about 92M parameters):
    a 5-level U-Net of base width 64 for the mask and a ResNet-50 ([3, 4, 6, 3] bottlenecks) for
    the 14-D bimanual joint positions (two arms x (6 joints + gripper))."""

    output_dim: int = 14  # action dimensions; 14 bimanual, 9 in upstream's Franka-style variant
    in_channels: int = 3  # RGB frames
    unet_base_channels: int = 64  # width of the U-Net's first level; level i has base * 2**i
    unet_num_layers: int = 5  # max-pool levels; the input side must be >= 2**unet_num_layers
    resnet_stem_channels: int = 64  # the 7x7 stem's width
    resnet_stage_channels: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths
    resnet_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottlenecks per stage (ResNet-50)

    def validate(self) -> None:
        """Reject sizes the modules cannot be built with, naming the field."""
        positive = {"output_dim": self.output_dim, "in_channels": self.in_channels,
                    "unet_base_channels": self.unet_base_channels, "unet_num_layers": self.unet_num_layers,
                    "resnet_stem_channels": self.resnet_stem_channels}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"IDMConfig.{name} must be >= 1, got {value}")
        for name in ("resnet_stage_channels", "resnet_blocks"):
            values = tuple(getattr(self, name))
            if len(values) != 4 or min(values) < 1:
                raise ValueError(f"IDMConfig.{name} must be 4 positive integers (one per stage), got {values}")

    @classmethod
    def published(cls, output_dim: int = 14) -> IDMConfig:
        """Vidar's released size (`idm.pt`)."""
        return cls(output_dim=output_dim)

    @classmethod
    def tiny(cls, output_dim: int = 14, **overrides) -> IDMConfig:
        """A few-hundred-k-parameter model for CPU tests (64x64 frames): the same structure with
        narrow layers, a 3-level U-Net and one bottleneck per stage."""
        values = dict(output_dim=output_dim, unet_base_channels=8, unet_num_layers=3, resnet_stem_channels=8,
                      resnet_stage_channels=(8, 16, 32, 64), resnet_blocks=(1, 1, 1, 1))
        values.update(overrides)
        return cls(**values)
