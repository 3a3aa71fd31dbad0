"""The training loop shared by every recipe.

    cfg = worldtune.systems.load_config("configs/lam/train.yaml")
    Trainer(cfg, worldtune.systems.get_recipe(cfg.recipe)).fit()

One optimizer step = `gradient_accumulation` micro-batches on every rank. Checkpoints are taken
only between optimizer steps, so a resumed run repeats exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import Subset

from worldtune.config import ConfigError, RunConfig, to_yaml
from worldtune.train import checkpoint as ckpt
from worldtune.train.data import EpochBatchSampler, SeededDataset, derive_seed, move_to_device
from worldtune.train.distributed import (
    activation_offload,
    all_reduce_mean,
    autocast,
    default_blocks,
    init_distributed,
    peak_memory_gb,
    prepare_model,
    shutdown,
)
from worldtune.train.ema import EMA
from worldtune.train.loader import close_loader, make_loader, raise_carried_error, report_skipped
from worldtune.train.logging import RunLogger
from worldtune.train.optim import build_optimizer, build_scheduler, load_scheduler_state, scheduler_state
from worldtune.train.recipe import Recipe
from worldtune.train.rng import capture_rng_state, restore_rng_state, seed_all
from worldtune.train.run_lock import acquire_for_run
from worldtune.train.stages import Stage, apply_trainable, plan_stages, stage_index_at, trainable_names
from worldtune.train.validation import Validator
from worldtune.utils.logging import get_logger

log = get_logger()


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the run stopped and how to resume it."""


@dataclass
class Progress:
    """Everything about where the run is, saved in trainer_state.json."""

    step: int = 0
    epoch: int = 0
    samples_in_epoch: int = 0  # global data positions consumed in the current epoch
    skipped_steps: int = 0
    consecutive_nonfinite: int = 0
    stage: str = ""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_checkpoint: Path | None
    skipped_steps: int


class Trainer:
    def __init__(self, cfg: RunConfig, recipe: Recipe) -> None:
        self.cfg = cfg
        self.recipe = recipe
        self.run_dir = Path(cfg.output_dir)

    # ------------------------------------------------------------------ setup

    def fit(self) -> TrainResult:
        self.env = init_distributed(self.cfg.dist)
        lock = None
        try:
            lock = acquire_for_run(self.run_dir, self.env)  # before anything is written to the run directory
            return self._fit()
        except KeyboardInterrupt as interrupt:
            raise self._interrupted() from interrupt
        finally:
            if getattr(self, "loader", None) is not None:
                close_loader(self.loader)
            if lock is not None:
                lock.release()
            shutdown(self.env)

    def _interrupted(self) -> TrainingInterrupted:
        """Where a Ctrl-C left the run: its step, and the checkpoint that the same command resumes."""
        progress = getattr(self, "progress", None)
        where = f"at step {progress.step}" if progress is not None else "before training started"
        last = ckpt.latest_checkpoint(self.run_dir)
        if last is None:
            return TrainingInterrupted(f"interrupted {where}; no checkpoint written yet; "
                                       "run the same command to start again")
        step = int(ckpt.CHECKPOINT_RE.match(last.name).group(1))
        return TrainingInterrupted(f"interrupted {where}; last complete checkpoint: step {step} ({last}); "
                                   "run the same command to resume")

    def _fit(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        seed_all(cfg.seed)  # identical model initialisation on every rank
        resume_from = ckpt.resolve_resume(self.run_dir, cfg.checkpoint.resume)
        self.config_changes = self._check_config_changes(resume_from) if resume_from is not None else []
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.parts = self.recipe.build(cfg)
        self._build_data()
        self.stages = plan_stages(cfg.train, self.steps_per_epoch)
        self.total_steps = self.stages[-1].end_step
        aliases = self.parts.trainable_aliases
        self.stage_params = [trainable_names(self.parts.model, s.trainable_models, aliases) for s in self.stages]
        blocks = self.parts.blocks if self.parts.blocks is not None else default_blocks(self.parts.model)
        self.model = prepare_model(self.parts.model, blocks, cfg.dist, env)
        if self.parts.load_after_shard is not None:  # a model built on meta: each rank loads its shards
            self.parts.load_after_shard(self.model, env)
        for module in self.parts.frozen.values():
            module.to(env.device).requires_grad_(False).eval()
        self.ema_names = set().union(*self.stage_params) if cfg.train.ema_decay else set()

        self.progress = Progress()
        if resume_from is not None:
            self.progress = Progress(**ckpt.read_trainer_state(resume_from)["progress"])
        seed_all(derive_seed(cfg.seed, env.rank, self.progress.step))
        self.stage_index = stage_index_at(self.stages, self.progress.step)
        self._enter_stage(self.stage_index)
        self.ema = EMA(self.model, self.ema_names, cfg.train.ema_decay) if self.ema_names else None
        if resume_from is not None:
            self._restore(resume_from)
        self.validator = Validator(self, self.parts)
        with RunLogger(self.run_dir, cfg.log, is_main=env.is_main, config=_plain(cfg),
                       total_steps=self.total_steps, resume_step=self.progress.step) as self.logger:
            return self._train_loop()

    def _build_data(self) -> None:
        cfg, env = self.cfg, self.env
        dataset = self.parts.train_dataset
        repeat, shuffle = cfg.train.dataset_repeat, cfg.train.shuffle
        if cfg.train.test_mode:  # one fixed batch, seen once per step
            dataset = Subset(dataset, range(min(len(dataset), cfg.train.batch_size * env.world_size)))
            repeat, shuffle = cfg.train.gradient_accumulation, False
            log.info("train.test_mode: overfitting one fixed batch of %d items", len(dataset))
        self.sampler = EpochBatchSampler(
            len(dataset), cfg.train.batch_size, rank=env.rank, world_size=env.world_size,
            seed=cfg.seed, repeat=repeat, shuffle=shuffle,
        )
        self.steps_per_epoch = self.sampler.micro_batches // cfg.train.gradient_accumulation
        # Yield exactly the micro-batches the epoch uses, so no worker prefetches a dropped one.
        self.sampler.micro_batches = self.steps_per_epoch * cfg.train.gradient_accumulation
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size: the dataset has {len(dataset)} items x {cfg.train.dataset_repeat} repeats, "
                f"fewer than one optimizer step needs ({cfg.train.batch_size} x "
                f"{cfg.train.gradient_accumulation} accumulation x {env.world_size} ranks)"
            )
        self.loader = make_loader(SeededDataset(dataset, cfg.seed), self.sampler, self.parts, cfg, env)

    def _enter_stage(self, index: int) -> None:
        """Set requires_grad for the stage and build a fresh optimizer and schedule."""
        stage = self.stages[index]
        self.stage_index = index
        trainable = apply_trainable(self.model, self.stage_params[index])
        self.optimizer = build_optimizer(self.model.parameters(), self.cfg.train, stage.learning_rate)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train, stage.num_steps)
        self.trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        self.progress.stage = stage.name
        log.info("stage %r: steps %d-%d, lr %.3g, %s trainable parameters (%s)", stage.name,
                 stage.start_step, stage.end_step, stage.learning_rate, f"{trainable:,}", stage.trainable_models)

    # ------------------------------------------------------------------ checkpoints

    def _app_state(self) -> dict[str, Any]:
        state = {"model": get_model_state_dict(self.model),
                 "optim": get_optimizer_state_dict(self.model, self.optimizer)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _save(self) -> Path:
        trainer_state = {
            "progress": self.progress.__dict__,
            "scheduler": scheduler_state(self.scheduler),
            "world_size": self.env.world_size,
            "trainable_keys": sorted(set().union(*self.stage_params)),
            "ema": self.ema is not None,
        }
        path = ckpt.save_checkpoint(self.run_dir, self.progress.step, self._app_state(), trainer_state,
                                    capture_rng_state(), to_yaml(self.cfg), self.env, self.cfg.checkpoint.keep_last)
        self.last_saved_step = self.progress.step
        return path

    def _restore(self, path: Path) -> None:
        state = self._app_state()
        trainer_state, rng_state = ckpt.load_checkpoint(path, state, self.env)
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        load_scheduler_state(self.scheduler, trainer_state["scheduler"])
        if rng_state is not None:
            restore_rng_state(rng_state)
        else:
            log.warning("%s has no RNG state for rank %d (saved with %d ranks); seeding it afresh",
                        path, self.env.rank, trainer_state["world_size"])
        if self.config_changes:
            self._apply_optimizer_settings()
        log.info("resumed from %s at step %d (epoch %d)", path, self.progress.step, self.progress.epoch)

    def _check_config_changes(self, checkpoint: Path) -> list[ckpt.ConfigChange]:
        """Stop a resume whose settings differ from the checkpoint's, unless the config allows it.

        Runs before anything is written, so a refused resume leaves the run directory as it was.
        """
        changes = ckpt.config_changes(checkpoint, self.cfg, self.env.world_size)
        if not changes:
            return []
        listing = ", ".join(str(change) for change in changes)
        if self.cfg.checkpoint.on_config_change == "continue":
            log.warning("resuming from %s with changed settings, which apply from here on "
                        "(checkpoint.on_config_change=continue): %s", checkpoint, listing)
            return changes
        raise ckpt.ConfigChangedError(
            f"{self.run_dir}: the config differs from the one {checkpoint.name} was trained with: {listing}. "
            f"To resume with the new values, add checkpoint.on_config_change=continue; to start a new run, "
            f"give it another output_dir (or delete {ckpt.checkpoints_root(self.run_dir)})"
        )

    def _apply_optimizer_settings(self) -> None:
        """The config's learning rate, betas, eps and weight decay over the checkpoint's: loading the
        optimizer and scheduler state brings back the values they were saved with."""
        train, stage = self.cfg.train, self.stages[self.stage_index]
        scheduler = self.scheduler
        scheduler.base_lrs = [stage.learning_rate for _ in self.optimizer.param_groups]
        for group, factor in zip(self.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group.update(lr=stage.learning_rate * factor(scheduler.last_epoch), initial_lr=stage.learning_rate,
                         betas=(train.betas[0], train.betas[1]), eps=train.eps, weight_decay=train.weight_decay)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what get_last_lr reports

    # ------------------------------------------------------------------ loop

    def _train_loop(self) -> TrainResult:
        progress = self.progress
        self.last_saved_step = progress.step if progress.step else -1
        self.model.train()
        if progress.samples_in_epoch >= self._epoch_samples():  # resumed with a larger global batch
            self._roll_epoch()
        iterator = self._epoch_iterator()
        while progress.step < self.total_steps:
            index = stage_index_at(self.stages, progress.step)
            if index != self.stage_index:
                self._enter_stage(index)
            metrics = self._train_step(iterator)
            progress.step += 1
            epoch_ended = progress.samples_in_epoch >= self._epoch_samples()
            if epoch_ended:
                self._roll_epoch()
            self._after_step(metrics, epoch_ended)
            if epoch_ended:
                iterator = self._epoch_iterator()
        if self.last_saved_step != progress.step:
            self._save()
        if self.cfg.log.save_model_artifacts:
            self.logger.log_artifact(ckpt.latest_checkpoint(self.run_dir), f"checkpoint-{progress.step}")
        final = self.recipe.on_train_end(self.parts, self)
        if final:
            self.logger.log(progress.step, final)
        self.logger.plot_loss_curve()
        if progress.skipped_steps:
            log.warning("%d steps were skipped for non-finite loss or gradients", progress.skipped_steps)
        return TrainResult(self.run_dir, progress.step, ckpt.latest_checkpoint(self.run_dir),
                           progress.skipped_steps)

    def _roll_epoch(self) -> None:
        self.progress.epoch += 1
        self.progress.samples_in_epoch = 0
        report_skipped(self.parts.train_dataset, self.progress.epoch)

    def _epoch_samples(self) -> int:
        return self.steps_per_epoch * self.cfg.train.gradient_accumulation * self.sampler.global_batch

    def _epoch_iterator(self):
        self.sampler.set_epoch(self.progress.epoch, self.progress.samples_in_epoch)
        return iter(self.loader)

    def _train_step(self, iterator) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        accumulation = cfg.train.gradient_accumulation
        start = time.perf_counter()
        data_wait = 0.0
        totals: dict[str, torch.Tensor] = {}
        samples = 0
        for _ in range(accumulation):
            fetch = time.perf_counter()
            batch = raise_carried_error(next(iterator))
            data_wait += time.perf_counter() - fetch
            samples += self.recipe.batch_size_of(batch)
            batch = move_to_device(batch, env.device)
            with autocast(cfg.dist, env), activation_offload(cfg.dist, env):
                out = self.recipe.loss(self.parts, batch)
            (out["loss"] / accumulation).backward()
            for key, value in out.items():
                value = value.detach().float() / accumulation
                totals[key] = totals[key] + value if key in totals else value
        self.progress.samples_in_epoch += accumulation * self.sampler.global_batch
        grad_norm = self._grad_norm()
        keys = sorted(totals)
        reduced = all_reduce_mean(torch.stack([totals[k] for k in keys] + [grad_norm]), env).tolist()
        values = dict(zip(keys, reduced[:-1], strict=True))
        norm = reduced[-1]  # already global under FSDP: the mean over ranks leaves it unchanged
        lr = self.optimizer.param_groups[0]["lr"]
        values.update(self._apply_update(math.isfinite(values["loss"]) and math.isfinite(norm)))
        step_time = time.perf_counter() - start
        metrics = {f"train/{k}": v for k, v in values.items()}
        metrics["train/epoch"] = float(self.progress.epoch)
        metrics.update({"train/lr": lr, "train/grad_norm": norm, "perf/step_time": step_time,
                        "perf/samples_per_s": samples * env.world_size / step_time,
                        "perf/data_wait": data_wait / step_time,
                        "perf/peak_mem_gb": peak_memory_gb(env.device)})
        return metrics

    def _grad_norm(self) -> torch.Tensor:
        """Global gradient norm (clipping it when configured); a full tensor even under FSDP."""
        grads = [p.grad for p in self.trainable_params if p.grad is not None]
        max_norm = self.cfg.train.max_grad_norm
        if not grads:
            return torch.zeros((), device=self.env.device)
        if max_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return norm.detach().float()

    def _apply_update(self, finite: bool) -> dict[str, float]:
        """Optimiser, scheduler, the recipe's own update and EMA; returns the recipe's values."""
        progress = self.progress
        extra: dict[str, float] = {}
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            extra = self.recipe.after_update(self.parts) or {}
            if self.ema is not None:
                self.ema.update(self.model)
            progress.consecutive_nonfinite = 0
        else:
            progress.skipped_steps += 1
            progress.consecutive_nonfinite += 1
            log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                        progress.step + 1, progress.consecutive_nonfinite)
        self.optimizer.zero_grad(set_to_none=True)
        limit = self.cfg.train.max_consecutive_nonfinite
        if progress.consecutive_nonfinite >= limit:
            raise NonFiniteLossError(
                f"{progress.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient "
                f"(up to step {progress.step + 1}); stopping. Lower train.learning_rate, check the data, "
                f"or raise train.max_consecutive_nonfinite. Last good checkpoint: "
                f"{ckpt.latest_checkpoint(self.run_dir)}"
            )
        return extra

    def _after_step(self, metrics: dict[str, float], epoch_ended: bool) -> None:
        cfg, step = self.cfg, self.progress.step
        metrics["train/skipped_steps"] = float(self.progress.skipped_steps)
        self.logger.log(step, metrics)
        if step % cfg.log.log_frequency == 0 or step == 1:
            self.logger.console(step, metrics)
        self.logger.advance(step)
        validation_due = _due(step, cfg.validation.every_steps) or (
            epoch_ended and self._epoch_due(cfg.validation.every_epochs))
        if validation_due and cfg.validation.enabled:
            self._validate()
        if _due(step, cfg.checkpoint.every_steps) or (epoch_ended and self._epoch_due(cfg.checkpoint.every_epochs)):
            self._save()

    def _epoch_due(self, every_epochs: int) -> bool:
        """At the end of an epoch (progress.epoch already counts it): is it the Nth?"""
        return _due(self.progress.epoch, every_epochs)

    def _validate(self) -> None:
        metrics = self.validator.run(self.progress.step)
        if metrics:
            self.logger.log(self.progress.step, metrics)
            self.logger.console(self.progress.step, metrics)
        self.logger.plot_loss_curve()
        self.model.train()


def _due(count: int, every: int) -> bool:
    return every > 0 and count % every == 0


def _plain(cfg: RunConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


__all__ = ["NonFiniteLossError", "Stage", "Trainer", "TrainResult"]
