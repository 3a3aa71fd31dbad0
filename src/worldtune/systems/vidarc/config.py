"""Vidarc's config sections (seed 2, stage 2): Vidar's model and data sections plus the seed's
`self_forcing`, `loss` and `output` sections (`configs/vidar/vidarc_causal.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import ConfigError
from worldtune.systems.vidar.config import LossConfig, VidarConfig

SELF_FORCING_MODES = ("teacher", "self")


@dataclass
class SelfForcingConfig:
    """How the causal model is trained and rolled out."""

    causal: bool = True  # the seed's switch; Vidarc is causal
    # teacher: ground-truth clean context in one sequence (diffusion forcing, Eq. 6);
    # self: context from the model's own rollout through the KV cache, no gradient, then one
    # denoising step with gradient per block at a random exit step (Self-Forcing).
    mode: str = "teacher"
    chunk_size: int = 16  # latent frames per training window (the first one is the clean condition)
    kv_cache_length: int = 64  # latent frames the cache holds at inference (rolling beyond that)
    sink_size: int = 0  # first frames the rolling cache never evicts
    num_frame_per_block: int = 1  # latent frames generated together (Vidarc: 1)
    # Self mode: the few-step schedule of the rollout (timesteps out of 1000, warped by the sampling
    # shift as Self-Forcing's `warp_denoising_step`), one of which is the exit step with gradient.
    denoising_steps: list[float] = field(default_factory=lambda: [1000.0, 750.0, 500.0, 250.0])
    # The clean context's noise level (sigma): teacher mode draws it in [0, context_noise] per frame
    # (noise augmentation), self mode re-noises each finished block to it before caching it.
    context_noise: float = 0.0

    def check(self) -> None:
        if not self.causal:
            raise ConfigError("self_forcing.causal: false trains the bidirectional model: use recipe vidar")
        if self.mode not in SELF_FORCING_MODES:
            raise ConfigError(f"self_forcing.mode must be one of {SELF_FORCING_MODES}, got {self.mode!r}")
        if self.chunk_size < 2:
            raise ConfigError(f"self_forcing.chunk_size must be >= 2 latent frames, got {self.chunk_size}")
        if self.kv_cache_length < self.sink_size + 1:
            raise ConfigError(f"self_forcing.kv_cache_length ({self.kv_cache_length}) must be at least "
                              f"sink_size + 1 ({self.sink_size + 1})")
        if self.num_frame_per_block < 1 or not self.denoising_steps:
            raise ConfigError("self_forcing.num_frame_per_block must be >= 1 and denoising_steps non-empty")
        if not 0 <= self.context_noise < 1:
            raise ConfigError(f"self_forcing.context_noise is a sigma in [0, 1), got {self.context_noise}")


@dataclass
class CausalLossConfig(LossConfig):
    """The seed's stage-2 `loss`: causal flow matching (Eq. 6), optionally embodiment-aware (Eq. 7:
    each latent element weighted by 1 + eta * U(x_1), U the IDM's mask on the latent grid)."""

    type: str = "causal_flow_matching"


@dataclass
class VidarcConfig(VidarConfig):
    self_forcing: SelfForcingConfig = field(default_factory=SelfForcingConfig)
    loss: CausalLossConfig = field(default_factory=CausalLossConfig)

    def check(self) -> None:
        if self.model.model_class not in ("WanModelCausal", "WanModel"):
            raise ConfigError(f"model.model_class: Vidarc trains WanModelCausal, got {self.model.model_class!r}")
        if self.loss.type != "causal_flow_matching":
            raise ConfigError(f"loss.type: Vidarc trains with causal_flow_matching, got {self.loss.type!r}")
