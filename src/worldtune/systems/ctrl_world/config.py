"""Ctrl-World's config sections: the world model and the converted data (`dataset.CtrlWorldDataConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import RunConfig
from worldtune.models.svd_world import CtrlWorldConfig
from worldtune.systems.ctrl_world.dataset import CtrlWorldDataConfig

__all__ = ["CtrlWorldDataConfig", "CtrlWorldModelConfig", "CtrlWorldRunConfig"]


@dataclass
class CtrlWorldModelConfig(CtrlWorldConfig):
    """The world model: the network's conditioning (`CtrlWorldConfig`: frame_level_cond, his_cond_zero,
    motion_bucket_id, fps, noise_aug_strength, relative_action_dims / _scale), plus what it is built
    from and how it is trained and sampled (EDM)."""

    # svd: the published SVD img2vid UNet (from svd_path/unet, else random); tiny: a CPU-sized UNet.
    size: str = "svd"
    # Stable Video Diffusion folder (unet/, vae/); the VAE decodes validation and rollout videos.
    svd_path: str | None = None
    # A pretrained Ctrl-World `checkpoint-N.pt` (or our export) loaded with strict=False.
    ckpt_path: str | None = None
    # How the converter encoded frames: svd (SVD VAE latents x scaling factor) | space_to_depth.
    latent_space: str = "svd"
    space_to_depth_factor: int = 4
    latent_channels: int = 4
    action_dim: int = 7
    # The instruction's CLIP text embedding added to the action tokens (needs clip_path).
    text_cond: bool = True
    clip_path: str | None = None
    # Per-sample probability of zeroing the whole context in training (classifier-free guidance).
    cfg_drop: float = 0.05
    guidance_scale: float = 2.0
    num_inference_steps: int = 25
    # EDM: training log-sigma ~ N(p_mean, p_std); the sampler's Karras schedule spans sigma_min..sigma_max;
    # history frames get sigma ~ |N(0, history_noise)|, the condition frame sigma ~ U(0, cond_noise_max).
    p_mean: float = 0.7
    p_std: float = 1.6
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    sigma_data: float = 1.0
    history_noise: float = 0.3
    cond_noise_max: float = 0.2
    # Denoise the change from the current frame (not upstream; for small models trained from scratch).
    residual: bool = False
    # With `residual`: magnify each view's changes so that every camera's changes have spread sigma_data
    # (`sigma_data / latent_delta_rms` of the view, from stat.json): a camera whose picture barely
    # changes is then not drowned by one whose whole image moves; samples are divided back.
    normalise_views: bool = False
    # Explicit per-view factors instead (in `data.views` order); empty: normalise_views decides.
    view_scales: list[float] = field(default_factory=list)
    # With `residual`: predicted changes smaller than this fraction of sigma_data (in the space the model
    # denoises, where `normalise_views` makes every view's typical change sigma_data) are set to zero,
    # so that what the model means as "no change" comes back exact (sampling only; 0: off).
    change_deadzone: float = 0.0
    # Share of training clips replaced by a still one: the current frame held over the whole clip, every
    # action that frame's (a robot at rest and a world that waits). Teaches "no commanded motion, no
    # change" exactly, which recordings show too rarely for a small model to learn (not upstream).
    still_prob: float = 0.0
    # Start the UNet's output layer at zero (a model trained from scratch: with `residual` it then begins by
    # predicting "no change" exactly). Pretrained weights, when loaded, replace it.
    zero_init_output: bool = False
    # tiny size only: UNet widths, cross-attention width, action MLP widths.
    tiny_block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    tiny_cross_attention_dim: int = 32
    tiny_action_widths: list[int] = field(default_factory=lambda: [64, 64])
    tiny_num_attention_heads: int = 8


@dataclass
class CtrlWorldRunConfig(RunConfig):
    model: CtrlWorldModelConfig = field(default_factory=CtrlWorldModelConfig)
    data: CtrlWorldDataConfig = field(default_factory=CtrlWorldDataConfig)
