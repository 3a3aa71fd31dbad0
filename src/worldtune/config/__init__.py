"""Typed run configuration: nested dataclasses, loaded from YAML, overridden with dotted keys.

A run config is a `RunConfig` subclass chosen by the recipe (`recipe: lam` in the YAML selects the
recipe's own dataclass, whose `model` and `data` sections are typed). OmegaConf structured configs
do the merging and type checking, so an unknown key, a wrong type or a missing required value is
reported with its full dotted name before any model is built.

    cfg = load_config("configs/lam/train.yaml", ["train.learning_rate=1e-3"], schema_of=...)

`worldtune.systems.load_config` is the same with the systems registry choosing the schema. The
seeds' own key names and script flags, accepted beside ours, are in `seed_names.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from worldtune.config.errors import ConfigError as ConfigError
from worldtune.config.seed_names import KEY_ALIASES
from worldtune.config.seed_names import SEED_FLAGS as SEED_FLAGS  # the seeds' names, part of this interface
from worldtune.config.seed_names import SEED_SWITCHES as SEED_SWITCHES
from worldtune.config.seed_names import SEED_VALUE_FLAGS as SEED_VALUE_FLAGS
from worldtune.config.seed_names import seed_flag_overrides as seed_flag_overrides

BASE_KEY = "_base_"

@dataclass
class StageConfig:
    """One training stage: which modules learn, how fast, for how long (seed 1 `training_stages`)."""

    description: str = ""
    # Comma-separated module names, recipe aliases (e.g. "lora", "heads") or parameter-name globs.
    trainable_models: str = "auto"
    # Learning rate of this stage; null means train.learning_rate.
    learning_rate: float | None = None
    # Length: exactly one of max_steps / epochs.
    max_steps: int | None = None
    epochs: int | None = None


@dataclass
class TrainConfig:
    """Optimisation and loop settings shared by every recipe."""

    # Length of the run: max_steps, num_epochs or the sum of the stages (the smallest wins).
    max_steps: int | None = None
    num_epochs: int | None = None
    # Per-rank micro-batch; the effective batch is batch_size * gradient_accumulation * world size.
    batch_size: int = 1
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    # constant | cosine (after the linear warmup, within each stage).
    lr_scheduler: str = "constant"
    # Cosine decays to learning_rate * min_lr_ratio.
    min_lr_ratio: float = 0.0
    # Gradient clipping; null or 0 disables clipping (the norm is still logged).
    max_grad_norm: float | None = 1.0
    # EMA of trainable weights; null disables.
    ema_decay: float | None = None
    # Each epoch visits the dataset this many times (DiffSynth's dataset_repeat).
    dataset_repeat: int = 1
    shuffle: bool = True
    num_workers: int = 0
    # Used when training_stages is empty; "auto" is the recipe's default (e.g. "lora" when LoRA is on).
    trainable_models: str = "auto"
    # The seeds' `freeze` list (e.g. [t5, vae]): modules that must not train. Recipes check it
    # against what they keep frozen; what trains is `trainable_models`.
    freeze: list[str] = field(default_factory=list)
    training_stages: dict[str, StageConfig] = field(default_factory=dict)
    # Non-finite loss or gradients: the step is skipped; this many in a row stop the run.
    max_consecutive_nonfinite: int = 10
    # Overfit one fixed batch (the first batch_size items, no shuffling): a sanity check of the
    # model and loss; each "epoch" is one step. Recipes may report PASS / FAIL at the end.
    test_mode: bool = False

    def check(self) -> None:
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.gradient_accumulation", self.gradient_accumulation)
        _check_positive("train.dataset_repeat", self.dataset_repeat)
        for key in ("max_steps", "num_epochs"):
            if getattr(self, key) is not None:
                _check_positive(f"train.{key}", getattr(self, key))
        _check_choice("train.lr_scheduler", self.lr_scheduler, ("constant", "cosine"))
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas: expected two values, got {list(self.betas)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: must be in (0, 1), got {self.ema_decay}")
        for name, stage in self.training_stages.items():
            if (stage.max_steps is None) == (stage.epochs is None):
                raise ConfigError(
                    f"train.training_stages.{name}: set exactly one of max_steps and epochs"
                )
        if not self.training_stages and self.max_steps is None and self.num_epochs is None:
            raise ConfigError("train.max_steps: set train.max_steps, train.num_epochs or training_stages")


@dataclass
class CheckpointConfig:
    """Where and how often the trainer saves resumable checkpoints."""

    # 0: no step-based saves (only every_epochs and the end of the run).
    every_steps: int = 1000
    keep_last: int = 3
    # auto: continue from the newest complete checkpoint in the run directory, if any;
    # none: always start fresh; or a path to one checkpoint directory.
    resume: str = "auto"
    # Also save every N epochs (0: only every_steps).
    every_epochs: int = 0
    # A resume whose settings differ from the checkpoint's config.yaml. error: stop before anything
    # is written, listing the changed keys; continue: resume with the new values (the optimizer's
    # learning rate, betas, eps and weight decay included) and say which changed. These may always
    # change: output_dir, train.max_steps / num_epochs (extending a run), train.num_workers,
    # checkpoint.*, validation.*, log.*, dist.{activation_checkpointing, compile_blocks, cpu_offload,
    # reshard_after_forward, backend}, and train.batch_size / gradient_accumulation as long as the
    # effective batch (x ranks) stays the same.
    on_config_change: str = "error"

    def check(self) -> None:
        if self.every_steps < 0 or self.every_epochs < 0:
            raise ConfigError("checkpoint.every_steps / every_epochs: must be >= 0")
        _check_positive("checkpoint.keep_last", self.keep_last)
        _check_choice("checkpoint.on_config_change", self.on_config_change, ("error", "continue"))


@dataclass
class ValidationConfig:
    """Periodic validation: loss on the validation set, and samples written as mp4."""

    # 0 disables; validation never runs at step 0.
    every_steps: int = 0
    # Also validate every N epochs (0: only every_steps).
    every_epochs: int = 0
    # Number of fixed validation items sampled and written as videos (Ctrl-World `video_num`).
    video_num: int = 2
    # Validation-loss batches per validation (0 disables the loss pass).
    max_batches: int = 8
    fps: int = 10
    # Seed 1's switches: false turns validation off; save_videos false keeps only the numbers.
    enabled: bool = True
    save_videos: bool = True
    # Which of the recipe's sample metrics to compute and log (empty: all it has), e.g. seed 1's
    # video_quality, motion_accuracy, task_alignment.
    metrics: list[str] = field(default_factory=list)


@dataclass
class LogConfig:
    """Console, JSONL, TensorBoard and Weights & Biases logging."""

    log_frequency: int = 10
    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_entity: str | None = None
    # online | offline | disabled
    wandb_mode: str = "online"
    experiment_name: str | None = None
    progress_bar: bool = True
    # Upload the final checkpoint to W&B as a model artifact (seed 1's logging.save_model_artifacts).
    save_model_artifacts: bool = False

    def check(self) -> None:
        _check_positive("log.log_frequency", self.log_frequency)
        _check_choice("log.wandb_mode", self.wandb_mode, ("online", "offline", "disabled"))


@dataclass
class DistConfig:
    """How the model is laid out on devices. FSDP2 applies under torchrun (world size > 1)."""

    # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32: parameter / compute dtype.
    mixed_precision: str = "auto"
    # Gradient reduction dtype under FSDP.
    reduce_dtype: str = "fp32"
    activation_checkpointing: bool = False
    # Keep the activations autograd saves in CPU memory (pinned) until backward: seed 1's
    # use_gradient_checkpointing_offload. Trades host transfers for device memory.
    activation_offload: bool = False
    compile_blocks: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    backend: str = "auto"
    # torch intra-op threads per process; null: OMP_NUM_THREADS if set (outside multi-rank torchrun),
    # else the cores this process may use (affinity mask) / local ranks. Workers: 1 each (utils/threads.py).
    num_threads: int | None = None

    def check(self) -> None:
        _check_choice("dist.mixed_precision", self.mixed_precision, ("auto", "bf16", "fp16", "fp32"))
        _check_choice("dist.reduce_dtype", self.reduce_dtype, ("fp32", "bf16"))
        _check_choice("dist.backend", self.backend, ("auto", "nccl", "gloo"))
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"dist.num_threads: must be >= 1 or null (the usable cores), got {self.num_threads}")


@dataclass
class RunConfig:
    """Base of every recipe's config; recipes subclass it with typed `model` and `data`."""

    recipe: str = MISSING
    output_dir: str = MISSING
    seed: int = 42
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    model: Any = None
    data: Any = None


def _check_positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key}: must be >= 1, got {value}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")


# ----------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> DictConfig:
    """Read a YAML file, following `_base_: other.yaml` (relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping")
    raw = _apply_aliases(raw)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    return OmegaConf.merge(read_yaml(path.parent / str(base)), raw)


def _apply_aliases(raw: DictConfig) -> DictConfig:
    plain = OmegaConf.to_container(raw, resolve=False)
    for alias, target in sorted(KEY_ALIASES.items(), key=lambda kv: kv[0].count(".")):
        value = _pop_dotted(plain, alias)
        if value is not _ABSENT:
            _set_dotted(plain, target, value)
    return OmegaConf.create(plain)


_ABSENT = object()


def _pop_dotted(tree: dict, key: str) -> Any:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.get(part) if isinstance(tree, dict) else None
        if tree is None:
            return _ABSENT
    if not isinstance(tree, dict):
        return _ABSENT
    return tree.pop(leaf, _ABSENT)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    if isinstance(value, dict) and isinstance(tree.get(leaf), dict):
        tree[leaf].update(value)
    else:
        tree[leaf] = value


def parse_overrides(overrides: list[str]) -> DictConfig:
    """`["train.learning_rate=1e-4", ...]` -> a config tree (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    try:
        return _apply_aliases(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {err}") from err


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                schema_of: Callable[[str], type[RunConfig]],
                infer_recipe: Callable[[DictConfig], str | None] | None = None) -> RunConfig:
    """Load, merge and validate a run config; `schema_of(recipe name)` gives the config dataclass.

    A file without `recipe:` (the seeds' own YAML files name none) gets the one `infer_recipe`
    reads from its keys, and `runs/<recipe>` as `output_dir` when it names none.
    `worldtune.systems.load_config` passes the registry's lookup; this module knows no recipes.
    """
    tree = read_yaml(path) if path is not None else OmegaConf.create({})
    tree = OmegaConf.merge(tree, parse_overrides(overrides or []))
    recipe_name = tree.get("recipe")
    if recipe_name is None and infer_recipe is not None:
        recipe_name = infer_recipe(tree)
        if recipe_name is not None:
            tree.recipe = recipe_name
            if tree.get("output_dir") is None:
                tree.output_dir = f"runs/{recipe_name}"
    if recipe_name is None:
        raise ConfigError(f"{path}: recipe: missing (e.g. `recipe: lam`)")
    return build_config(schema_of(str(recipe_name)), tree, source=str(path))


def build_config(schema_cls: type[RunConfig], tree: DictConfig | dict, source: str = "config") -> RunConfig:
    """Validate `tree` against `schema_cls`, naming the key of the first problem."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema_cls), tree)
        cfg = OmegaConf.to_object(merged)
        check_sections(cfg)
        return cfg
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: {key}: {reason}") from err
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def check_sections(obj: Any) -> None:
    """Run `check()` (cross-field validation) on every dataclass section, depth first."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value.values() if isinstance(value, dict) else [value]
        for item in values:
            check_sections(item)
    if hasattr(obj, "check"):
        obj.check()


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, as saved in the run directory and beside each checkpoint."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
