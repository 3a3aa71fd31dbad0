"""Sim-Physics' config sections: the Wan model, the scenes, and the head losses (seed names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import ConfigError, RunConfig
from worldtune.data.formats.sim_physics import SimPhysicsDataConfig
from worldtune.models.wan.physics import HeadKinds
from worldtune.systems.vidar.config import OutputConfig
from worldtune.systems.wan_parts import WanModelConfig


@dataclass
class PhysicsModelConfig(WanModelConfig):
    # Heads compared with the targets at the frames' resolution (the predictions upsampled), as the
    # original's --full_res_heads; false: targets brought down to the latent grid instead.
    full_res_heads: bool = True
    # The timestep at which evaluation reads the heads (a lightly noised clip, as in training).
    eval_timestep: float = 200.0
    # The original's spatio-temporal heads (attention across frames; models/wan/physics_heads.py):
    # per head on or off, and its type, simple (one temporal module) or full (a 4-scale pyramid
    # with a temporal module per scale and DPT fusion). Its stage-1 script turns both on, full.
    use_spatiotemporal_motion: bool = False
    use_spatiotemporal_depth: bool = False
    spatiotemporal_motion_type: str = "full"
    spatiotemporal_depth_type: str = "full"
    spatiotemporal_features: int = 256
    num_temporal_blocks: int = 2

    def check(self) -> None:
        for key in ("spatiotemporal_motion_type", "spatiotemporal_depth_type"):
            if getattr(self, key) not in ("simple", "full"):
                raise ConfigError(f"model.{key} must be simple or full, got {getattr(self, key)!r}")
        if self.spatiotemporal_features < 2 or self.num_temporal_blocks < 1:
            raise ConfigError("model.spatiotemporal_features must be >= 2 and model.num_temporal_blocks >= 1")

    def head_kinds(self) -> HeadKinds:
        return HeadKinds(motion=self.spatiotemporal_motion_type if self.use_spatiotemporal_motion else "plain",
                         depth=self.spatiotemporal_depth_type if self.use_spatiotemporal_depth else "plain",
                         features=self.spatiotemporal_features, temporal_blocks=self.num_temporal_blocks)


@dataclass
class PhysicsLossConfig:
    """The seed's loss weights, and the loss types (ours; the original had MSE only)."""

    motion_loss_weight: float = 1.0
    depth_loss_weight: float = 1.0
    warp_loss_weight: float = 0.1
    # epe (end-point error, pixels) | l1 | mse
    motion_loss: str = "epe"
    # Moving and still pixels weigh alike in the motion loss (see losses.motion_loss). On by default:
    # with a few moving pixels, the plain mean pulls an end-point error to predicting no motion.
    motion_balanced: bool = True
    # silog (scale-invariant log) | l1 | mse, on log depth over valid pixels
    depth_loss: str = "silog"
    silog_lambda: float = 0.85
    # The heads learn from clips noised at most this much (they are read at model.eval_timestep):
    # with the video loss off, sigma is drawn in [0, heads_max_sigma]; with it on, the head losses
    # count only for the samples drawn below it. Through heavy noise motion cannot be seen, and an
    # L1-like loss then pulls every prediction to no motion.
    heads_max_sigma: float = 1.0
    # The video flow-matching loss: auto = on while the DiT (or its LoRA) trains, off in stage 1.
    video_loss: str = "auto"
    video_loss_weight: float = 1.0

    def check(self) -> None:
        # YAML 1.1 reads a bare `on` / `off` as a boolean
        self.video_loss = {"true": "on", "false": "off"}.get(str(self.video_loss).lower(), self.video_loss)
        if not 0 < self.heads_max_sigma <= 1:
            raise ConfigError(f"loss.heads_max_sigma must be in (0, 1], got {self.heads_max_sigma}")
        for key, value, choices in (("motion_loss", self.motion_loss, ("epe", "l1", "mse")),
                                    ("depth_loss", self.depth_loss, ("silog", "l1", "mse")),
                                    ("video_loss", self.video_loss, ("auto", "on", "off"))):
            if value not in choices:
                raise ConfigError(f"loss.{key} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class PhysicsRunConfig(RunConfig):
    model: PhysicsModelConfig = field(default_factory=lambda: PhysicsModelConfig(size="wan2.2-ti2v-5b", lora_rank=32))
    data: SimPhysicsDataConfig = field(default_factory=SimPhysicsDataConfig)
    loss: PhysicsLossConfig = field(default_factory=PhysicsLossConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
