"""The IDM's config sections: the network (`IDMConfig`) plus its loss and input size, and the
Vidar episode data cut into single frames with their actions."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import ConfigError, RunConfig
from worldtune.data.formats.episodes import EpisodeDataConfig
from worldtune.models.idm import PUBLISHED_IMAGE_SIZE, IDMConfig

# Two arms x (6 joints + gripper): the layout of Vidar's 14-D actions, and the dimensions its flip
# augmentation negates (upstream `handle_flip`: the joints that change sign in a mirror image).
BIMANUAL_GROUPS = {"left_arm": [0, 1, 2, 3, 4, 5], "left_gripper": [6],
                   "right_arm": [7, 8, 9, 10, 11, 12], "right_gripper": [13]}
BIMANUAL_FLIP_NEGATE = [0, 4, 5, 7, 11, 12]


@dataclass
class IdmModelSection(IDMConfig):
    """`IDMConfig` (the published size by default) plus what training and labelling need."""

    image_size: int = PUBLISHED_IMAGE_SIZE  # the tiled frame is resized to this square (upstream 518)
    mask_lambda: float = 3e-3  # Eq. 4's lambda: weight of the mask's mean |m| beside the Huber loss
    huber_delta: float = 1.0  # in normalised action units (smooth L1 with beta 1)
    # Action dimensions reported together as val/action_mae/<group> (joint units). Empty: the
    # bimanual groups for 14-D actions, else one group "all".
    action_groups: dict[str, list[int]] = field(default_factory=dict)

    def groups(self) -> dict[str, list[int]]:
        if self.action_groups:
            return {k: list(v) for k, v in self.action_groups.items()}
        if self.output_dim == 14:
            return BIMANUAL_GROUPS
        return {"all": list(range(self.output_dim))}

    def check(self) -> None:
        if self.image_size < 2 ** self.unet_num_layers:
            raise ConfigError(f"model.image_size {self.image_size} is below the U-Net's 2**{self.unet_num_layers}")
        if self.mask_lambda < 0 or self.huber_delta <= 0:
            raise ConfigError("model.mask_lambda must be >= 0 and model.huber_delta > 0")
        for name, dims in self.action_groups.items():
            if not dims or any(not 0 <= d < self.output_dim for d in dims):
                raise ConfigError(f"model.action_groups.{name}: {dims} are not dimensions of {self.output_dim}")


@dataclass
class IdmDataConfig(EpisodeDataConfig):
    """Every frame of every episode, tiled as the Vidar recipe tiles cameras, with its row of
    actions.npy, in items of `num_frames` consecutive frames (1: upstream's single frames; 5 or 9
    decode far less video, see `systems/idm/data.py`); plus training augmentation."""

    num_frames: int = 1
    height: int = 720  # upstream's composite before the 518 resize ("480 + 240")
    width: int = 640
    stride: int = 8
    # Colour jitter (training only): brightness, contrast, saturation factors drawn in [1 - v, 1 + v].
    color_jitter: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    # Mirror augmentation (training only): with this probability the frame is flipped left-right,
    # the two arms' halves of the action swapped (`flip_swap_halves`) and `flip_negate` negated.
    # Valid when the camera tiling is mirror-symmetric (one camera, or left / right wrist views
    # placed symmetrically); 0 turns it off.
    flip_prob: float = 0.0
    flip_swap_halves: bool = True
    flip_negate: list[int] = field(default_factory=lambda: list(BIMANUAL_FLIP_NEGATE))

    def check(self) -> None:
        if len(self.color_jitter) != 3 or any(not 0 <= v < 1 for v in self.color_jitter):
            raise ConfigError(f"data.color_jitter: three values in [0, 1), got {list(self.color_jitter)}")
        if not 0 <= self.flip_prob <= 1:
            raise ConfigError(f"data.flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.flip_prob > 0:
            dim = self.action_dim
            if dim is None or (self.flip_swap_halves and dim % 2):
                raise ConfigError(f"data.flip_prob: swapping the arms' halves needs an even action_dim, got {dim}")
            if any(not 0 <= d < dim for d in self.flip_negate):
                raise ConfigError(f"data.flip_negate: {list(self.flip_negate)} are not dimensions of {dim}")


@dataclass
class IdmRunConfig(RunConfig):
    model: IdmModelSection = field(default_factory=IdmModelSection)
    data: IdmDataConfig = field(default_factory=IdmDataConfig)

    def check(self) -> None:
        if self.data.action_dim != self.model.output_dim:
            raise ConfigError(f"data.action_dim {self.data.action_dim} != model.output_dim {self.model.output_dim}")
