"""Wan DiT configurations: the published sizes in one place, plus `tiny` for CPU tests.

Numbers from the upstream configs (Wan-Video/Wan2.1 `wan/configs`, Wan-Video/Wan2.2
`wan/configs/wan_ti2v_5B.py`) and the released `config.json` files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_TYPES = ("t2v", "i2v", "ti2v", "vace")


@dataclass(frozen=True)
class WanConfig:
    """Constructor arguments of the original `WanModel` (and `VaceWanModel`), same names."""

    model_type: str = "t2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # i2v: CLIP image token width (ViT-H/14 penultimate layer).
    image_dim: int = 1280
    # VACE: blocks that receive a hint (default every second block) and the hint input channels.
    vace_layers: tuple[int, ...] | None = None
    vace_in_dim: int | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def resolved_vace_layers(self) -> tuple[int, ...]:
        if self.vace_layers is not None:
            return tuple(self.vace_layers)
        return tuple(range(0, self.num_layers, 2))

    def replace(self, **changes) -> WanConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> WanConfig:
        """From an original `config.json` (unknown keys such as `_class_name` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("patch_size", "vace_layers"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


_T2V_1_3B = WanConfig(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
_T2V_14B = WanConfig(model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

SIZES: dict[str, WanConfig] = {
    "tiny": WanConfig(model_type="t2v", in_dim=16, out_dim=16, dim=24, ffn_dim=32, num_heads=2,
                      num_layers=2, text_dim=32, freq_dim=256, text_len=16),
    # Wan2.2-TI2V layout (48-channel latents) at toy width, for CPU tests and the tiny recipes.
    "tiny-ti2v": WanConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=24, ffn_dim=32, num_heads=2,
                           num_layers=2, text_dim=32, freq_dim=256, text_len=32),
    # The same layout a few times wider and deeper: CPU experiments that must learn something.
    "small-ti2v": WanConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=256, ffn_dim=768, num_heads=4,
                            num_layers=4, text_dim=32, freq_dim=256, text_len=32),
    # Wan2.1-VACE layout (16-channel latents, 96-channel control) at toy width, for VACE-E's tests.
    "tiny-vace": WanConfig(model_type="vace", in_dim=16, out_dim=16, dim=32, ffn_dim=64, num_heads=2,
                           num_layers=4, text_dim=32, freq_dim=256, text_len=32, vace_layers=(0, 2),
                           vace_in_dim=96),
    # The same over pixels folded 2x2 (12 channels; control 2 x 12 + 4 mask channels): VACE-E's
    # learning test, which scores pixels without a trained VAE in between.
    "tiny-vace-pixels": WanConfig(model_type="vace", in_dim=12, out_dim=12, dim=96, ffn_dim=192, num_heads=4,
                                  num_layers=4, text_dim=32, freq_dim=256, text_len=32, vace_layers=(0, 2),
                                  vace_in_dim=28),
    "wan2.1-t2v-1.3b": _T2V_1_3B,
    "wan2.1-t2v-14b": _T2V_14B,
    "wan2.1-vace-1.3b": _T2V_1_3B.replace(model_type="vace", vace_layers=tuple(range(0, 30, 2)), vace_in_dim=96),
    "wan2.1-i2v-14b": _T2V_14B.replace(model_type="i2v", in_dim=36),
    "wan2.2-ti2v-5b": WanConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336,
                                num_heads=24, num_layers=30),
}


# Parameters of each released size, as its checkpoint holds them (diffusers' classes count the same,
# tests/test_wan_parity.py); a build of the size must reproduce them.
PARAMETER_COUNTS: dict[str, int] = {
    "wan2.1-t2v-1.3b": 1_418_996_800,
    "wan2.1-t2v-14b": 14_288_491_584,
    "wan2.1-vace-1.3b": 2_153_972_032,
    "wan2.1-i2v-14b": 16_394_878_784,
    "wan2.2-ti2v-5b": 4_999_787_712,
}


def wan_config(name_or_config: str | WanConfig, **overrides) -> WanConfig:
    """A named size (see SIZES), optionally with fields replaced."""
    if isinstance(name_or_config, WanConfig):
        return name_or_config.replace(**overrides) if overrides else name_or_config
    if name_or_config not in SIZES:
        raise ValueError(f"unknown Wan size {name_or_config!r}; known: {', '.join(SIZES)}")
    config = SIZES[name_or_config]
    return config.replace(**overrides) if overrides else config
