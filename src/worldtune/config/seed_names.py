"""The seeds' names for our config keys: keys in their YAML files (`KEY_ALIASES`) and their training
scripts' flags (`SEED_FLAGS`, `SEED_VALUE_FLAGS`, `SEED_SWITCHES`), so that a seed user's file and
command line work as written."""

from __future__ import annotations

from collections.abc import Sequence

from worldtune.config.errors import ConfigError

# Names used by the seed scripts, accepted as spellings of ours so that a seed user's YAML or
# override works unchanged. Keys are dotted paths in the user's file; values are our paths.
KEY_ALIASES: dict[str, str] = {
    "training": "train",
    "logging": "log",
    "train.lr": "train.learning_rate",
    "train.num_steps": "train.max_steps",
    "train.warmup": "train.warmup_steps",
    "train.gradient_accumulation_steps": "train.gradient_accumulation",
    "train.train_batch_size": "train.batch_size",
    "checkpoint.checkpointing_steps": "checkpoint.every_steps",
    "validation.frequency": "validation.every_epochs",
    "validation.num_samples": "validation.video_num",
    # Seed 1 (VACE-E) writes its settings at the top level of the file.
    "training_stages": "train.training_stages",
    "use_gradient_checkpointing": "dist.activation_checkpointing",
    "use_gradient_checkpointing_offload": "dist.activation_offload",
    "enable_vace_e": "model.enable_vace_e",
    "vace_e_layers": "model.vace_e_layers",
    "vace_e_task_processing": "model.vace_e_task_processing",
    "dataset_base_path": "data.dataset_base_path",
    "robot_data_path": "data.robot_data_path",
    "task_metadata_path": "data.task_metadata_path",
    "max_hand_motion_length": "data.max_hand_motion_length",
    "max_object_trajectory_length": "data.max_object_trajectory_length",
    "max_objects": "data.max_objects",
    "fallback_to_video_only": "data.fallback_to_video_only",
}


# The seeds' training-script flags (`train.py --config X --learning_rate 1e-4 --output_dir Y`), as
# the config keys they set; `worldtune train` and `inspect` accept them beside dotted overrides.
SEED_FLAGS: dict[str, str] = {
    "output_dir": "output_dir",
    "output_path": "output_dir",
    "seed": "seed",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "num_epochs": "train.num_epochs",
    "max_steps": "train.max_steps",
    "dataset_repeat": "train.dataset_repeat",
    "test_mode": "train.test_mode",
    "mixed_precision": "dist.mixed_precision",
    "ckpt_dir": "model.ckpt_dir",
    "pt_dir": "model.pt_dir",
    "data_dir": "data.data_dir",
    "manifest_path": "data.manifest_path",
    "dataset_base_path": "data.dataset_base_path",
    "task_metadata_path": "data.task_metadata_path",
    "height": "data.height",
    "width": "data.width",
    "wandb_project": "log.wandb_project",
    "vace_e_layers": "model.vace_e_layers",
    "robot_data_path": "data.robot_data_path",
    "max_hand_motion_length": "data.max_hand_motion_length",
    "max_object_trajectory_length": "data.max_object_trajectory_length",
    "max_objects": "data.max_objects",
    "fallback_to_video_only": "data.fallback_to_video_only",
    "use_gradient_checkpointing": "dist.activation_checkpointing",
    "use_gradient_checkpointing_offload": "dist.activation_offload",
    "vram_optimization": "vram_optimization.enabled",
    "cpu_offload": "vram_optimization.cpu_offload",
    "offload_optimizer": "vram_optimization.offload_optimizer",
    "compile_model": "dist.compile_blocks",
    # seed 4's train_wan22_ti2v_motion_depth.py
    "dataset_metadata_path": "data.dataset_metadata_path",
    "dataset_preset": "data.dataset_preset",
    "motion_loss_weight": "loss.motion_loss_weight",
    "depth_loss_weight": "loss.depth_loss_weight",
    "warp_loss_weight": "loss.warp_loss_weight",
    "lora_rank": "model.lora_rank",
    "save_steps": "checkpoint.every_steps",
    "gradient_accumulation_steps": "train.gradient_accumulation",
    "num_frames": "data.num_frames",
    "spatiotemporal_motion_type": "model.spatiotemporal_motion_type",
    "spatiotemporal_depth_type": "model.spatiotemporal_depth_type",
}
# Flags whose values are spelled differently: flag -> (our key, {their value: ours}).
SEED_VALUE_FLAGS: dict[str, tuple[str, dict[str, str]]] = {
    "training_mode": ("train.trainable_models", {"heads_only": "heads", "lora": "lora,heads", "full": "dit,heads"}),
}
# Flags that take no value, and the override each stands for.
SEED_SWITCHES: dict[str, str] = {
    "test_mode": "train.test_mode=true",
    "debug": "log.log_frequency=1",  # the seeds' debug runs: every step's numbers on the console
    "verbose_logging": "log.log_frequency=1",
    "save_intermediate_outputs": "validation.save_videos=true",
    # seed 4's
    "full_res_heads": "model.full_res_heads=true",
    "use_spatiotemporal_motion": "model.use_spatiotemporal_motion=true",
    "use_spatiotemporal_depth": "model.use_spatiotemporal_depth=true",
    "validate_dataset_paths": "data.on_bad_sample=skip",  # the original drops rows naming a missing scene
}
_BOOLEANS = {"true": True, "false": False}


def seed_flag_overrides(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """`(--config value or None, dotted overrides)` from a command line mixing `key=value` items with
    the seeds' `--flag value` / `--switch` forms; `--a.b value` is any dotted key."""
    config, overrides, i = None, [], 0
    while i < len(args):
        item = args[i]
        if not item.startswith("--"):
            overrides.append(item)
            i += 1
            continue
        name, _, inline = item[2:].partition("=")
        takes_value = inline != "" or (i + 1 < len(args) and not args[i + 1].startswith("--") and "=" not in args[i + 1])
        if name in SEED_SWITCHES and name not in SEED_FLAGS:
            # `--debug`, or `--debug True` / `--debug=False` as seed 1 writes it
            value = inline or (args[i + 1] if takes_value else "")
            if value and value.lower() not in _BOOLEANS:
                raise ConfigError(f"--{name}: a switch takes no value or True / False, got {value!r}")
            if _BOOLEANS.get(value.lower(), True):
                overrides.append(SEED_SWITCHES[name])
            i += 1 if inline or not value else 2
            continue
        if name in SEED_SWITCHES and not inline and not takes_value:
            overrides.append(SEED_SWITCHES[name])
            i += 1
            continue
        if not takes_value:
            raise ConfigError(f"--{name}: expected a value (flags: {', '.join(sorted(SEED_FLAGS))})")
        value = inline or args[i + 1]
        i += 1 if inline else 2
        if name == "config":
            config = value
        elif name in SEED_VALUE_FLAGS:
            key, values = SEED_VALUE_FLAGS[name]
            if value not in values:
                raise ConfigError(f"--{name}: one of {', '.join(values)}; got {value!r}")
            overrides.append(f"{key}={values[value]}")
        elif name in SEED_FLAGS or "." in name:
            overrides.append(f"{SEED_FLAGS.get(name, name)}={value}")
        else:
            raise ConfigError(f"--{name}: not a flag worldtune knows (flags: {', '.join(sorted(SEED_FLAGS))}, "
                              f"--config, --debug, or any dotted key such as --train.learning_rate)")
    return config, overrides
