"""Trainer behaviour on one process: stages, schedule, EMA, non-finite steps, validation, export."""

from __future__ import annotations

import json
import math

import pytest
import torch
from custom_recipe import RECIPE

from conftest import example_config, step_metric, train_example
from worldtune.data.video import probe_video
from worldtune.train import checkpoint as ckpt
from worldtune.train.export import export_run, load_weights
from worldtune.train.loop import NonFiniteLossError
from worldtune.train.optim import lr_factor
from worldtune.train.rng import seed_all

STAGES = {"head": {"trainable_models": "head", "max_steps": 4},
          "trunk": {"trainable_models": "trunk", "learning_rate": 5e-3, "max_steps": 4}}


def initial_weights(tmp_path) -> dict[str, torch.Tensor]:
    seed_all(7)  # the trainer builds the model right after seeding with cfg.seed
    model = RECIPE.build(example_config(tmp_path / "unused")).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_stages_switch_trainable_modules_and_learning_rate(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": None, "training_stages": STAGES})
    init = initial_weights(tmp_path)
    after_head = load_weights(run / "checkpoints" / "step_00000004")
    after_trunk = load_weights(run / "checkpoints" / "step_00000008")
    assert {k.split(".")[0] for k in changed(init, after_head)} == {"head"}
    assert changed(init, after_head) == {k for k in init if k.startswith("head.")}
    trunk_changes = changed(after_head, after_trunk)
    assert {k.split(".")[0] for k in trunk_changes} == {"encoder", "blocks"}
    lrs = step_metric(run, "train/lr")
    assert [lrs[s] for s in (1, 4, 5, 8)] == [1e-2, 1e-2, 5e-3, 5e-3]
    state = ckpt.read_trainer_state(run / "checkpoints" / "step_00000008")
    assert state["progress"]["stage"] == "trunk"
    assert set(state["trainable_keys"]) == set(init)


def test_stage_naming_an_unknown_module_fails_early(tmp_path):
    from worldtune.config import ConfigError

    with pytest.raises(ConfigError, match="'decoder' matches no parameter"):
        train_example(tmp_path / "run", train={"trainable_models": "decoder"})


def test_warmup_then_cosine_schedule(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 10, "warmup_steps": 4, "lr_scheduler": "cosine", "min_lr_ratio": 0.1})
    lrs = step_metric(run, "train/lr")
    assert [lrs[s] for s in (1, 2, 3, 4)] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[10] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 6))))
    assert all(lrs[s] > lrs[s + 1] for s in range(5, 10))
    assert lr_factor(0, warmup_steps=0, total_steps=10, schedule="constant", min_ratio=0) == 1.0
    assert lr_factor(10, warmup_steps=0, total_steps=10, schedule="cosine", min_ratio=0.2) == pytest.approx(0.2)


def test_ema_tracks_weights_and_exports(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 6, "ema_decay": 0.5})
    model = load_weights(ckpt.latest_checkpoint(run))
    ema = load_weights(ckpt.latest_checkpoint(run), "ema")
    init = initial_weights(tmp_path)
    assert set(ema) == set(model)
    for key in model:  # the average lies between the start and the end, closer to the end
        assert not torch.equal(ema[key], model[key])
        assert (ema[key] - model[key]).abs().max() < (init[key] - model[key]).abs().max()
    paths = export_run(run, ema=True, name="ema")
    assert torch.equal(torch.load(paths[1], weights_only=True)["head.weight"], ema["head.weight"])


def test_ema_update_rule():
    from worldtune.train.ema import EMA

    layer = torch.nn.Linear(2, 1)
    start = layer.weight.detach().clone()
    ema = EMA(layer, {"weight"}, decay=0.75)
    with torch.no_grad():
        layer.weight.add_(4.0)
    ema.update(layer)
    assert torch.allclose(ema.shadow["weight"], start + 1.0)  # 0.75*w + 0.25*(w+4)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    run = tmp_path / "run"
    result = train_example(run, data={"nan_items": [0, 1, 2]}, train={"max_steps": 12, "batch_size": 4})
    skipped = step_metric(run, "train/skipped_steps")
    losses = step_metric(run)
    nan_steps = [s for s, v in losses.items() if math.isnan(v)]
    assert nan_steps and result.skipped_steps == len(nan_steps) == skipped[12]
    assert all(math.isfinite(v.float().sum()) for v in load_weights(result.last_checkpoint).values())


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path):
    run = tmp_path / "run"
    every_item = list(range(48))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        train_example(run, data={"nan_items": every_item},
                      train={"max_steps": 12, "max_consecutive_nonfinite": 3})
    assert ckpt.latest_checkpoint(run) is None  # nothing was saved from a broken run


def test_validation_writes_videos_never_at_step_zero(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 6}, validation={"every_steps": 3, "video_num": 2, "max_batches": 1})
    videos = sorted(p.name for p in (run / "samples").glob("*.mp4"))
    assert videos == [f"train_steps_{s}_{i}.mp4" for s in (3, 6) for i in (0, 1)]
    info = probe_video(run / "samples" / "train_steps_3_0.mp4")
    assert (info.num_frames, info.width, info.height) == (5, 32, 16)  # ground truth beside prediction
    assert sorted(step_metric(run, "val/loss")) == [3, 6]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epochs_with_dataset_repeat_and_accumulation(tmp_path):
    run = tmp_path / "run"
    # 48 items x 2 repeats / (4 per micro-batch x 3 accumulation) = 8 steps per epoch.
    result = train_example(run, train={"max_steps": None, "num_epochs": 2, "dataset_repeat": 2,
                                       "gradient_accumulation": 3})
    assert result.step == 16
    epochs = step_metric(run, "train/epoch")
    assert epochs[8] == 0 and epochs[9] == 1


def test_keep_last_and_checkpoint_contents(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 10}, checkpoint={"every_steps": 2, "keep_last": 2})
    names = [p.name for p in ckpt.complete_checkpoints(run)]
    assert names == ["step_00000008", "step_00000010"]
    last = run / "checkpoints" / "step_00000010"
    assert (last / "config.yaml").read_text() == (run / "config.yaml").read_text()
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["progress"]["step"] == 10 and state["scheduler"]["last_epoch"] == 10
    rng = torch.load(last / "rng" / "rank_0.pt", weights_only=True)
    assert set(rng) >= {"torch", "numpy", "python"}


def test_export_writes_safetensors_and_pt(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    train_example(run, train={"max_steps": 3})
    st_path, pt_path = export_run(run)
    assert (st_path.name, pt_path.name) == ("model.safetensors", "model.pt")
    a, b = load_file(st_path), torch.load(pt_path, weights_only=True)
    assert set(a) == set(b) == set(initial_weights(tmp_path)) and all(torch.equal(a[k], b[k]) for k in a)
    seed_all(0)
    fresh = RECIPE.build(example_config(tmp_path / "x")).model
    report = fresh.load_state_dict(b, strict=False)
    assert not report.missing_keys and not report.unexpected_keys
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        export_run(tmp_path / "empty")


def test_tensorboard_and_offline_wandb_logging(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 2},
                  log={"tensorboard": True, "wandb_project": "worldtune-test", "wandb_mode": "offline"})
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*"))
    assert (run / "wandb_id.txt").read_text().strip()


def test_test_mode_overfits_one_fixed_batch(tmp_path):
    run = tmp_path / "run"
    result = train_example(run, train={"max_steps": None, "num_epochs": 40, "test_mode": True, "batch_size": 4,
                                       "learning_rate": 3e-2},
                           checkpoint={"every_steps": 1000, "every_epochs": 20})
    assert result.step == 40  # one step per "epoch"
    losses = step_metric(run)
    assert losses[40] < 0.05 * losses[1]
    assert [p.name for p in ckpt.complete_checkpoints(run)] == ["step_00000020", "step_00000040"]


def test_validation_every_epochs(tmp_path):
    run = tmp_path / "run"
    # 48 items / batch 4 = 12 steps per epoch.
    train_example(run, train={"max_steps": 24}, validation={"every_epochs": 1, "video_num": 0, "max_batches": 1})
    assert sorted(step_metric(run, "val/loss")) == [12, 24]
