"""VACE-E end to end in the seed's layout: the branch (step 0 is plain VACE, it gets gradient, its
blocks start as the DiT's), stages, the seed's YAML keys and flags, train / kill / resume (bitwise),
export vace_e.pt, generate, eval with the three metrics, and a model that follows the hand motion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, step_metric, subprocess_env, train_then_kill
from vace_e_fixtures import write_marker_dataset
from worldtune.cli import main
from worldtune.config import ConfigError
from worldtune.data.errors import DataError
from worldtune.models.wan.factory import build_wan
from worldtune.models.wan.sizes import wan_config
from worldtune.models.wan.vace_e import VaceEConfig, WanVaceEModel
from worldtune.systems import load_config, train_run
from worldtune.train.export import load_weights

TINY = REPO / "configs" / "vace_e" / "tiny.yaml"
BRANCH = VaceEConfig(vace_e_layers=(0, 3), task_dim=16, num_heads=2, motion_layers=1, object_layers=1,
                     image_dim=4, pose_frequencies=2)


def condition(batch: int = 2, frames: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ones = lambda *shape: torch.ones(*shape, dtype=torch.bool)  # noqa: E731
    return {"text": torch.randn(batch, 7, 32, generator=g), "text_mask": ones(batch, 7),
            "hand_motion": torch.randn(batch, frames, 20, generator=g), "hand_mask": ones(batch, frames),
            "objects": torch.randn(batch, frames, 3, 9, generator=g), "object_ids": torch.tensor([[1, 2, 0]] * batch),
            "object_mask": ones(batch, frames, 3), "embodiment": torch.randn(batch, 17, 4, generator=g),
            "embodiment_mask": ones(batch, 17)}


def inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 16, 3, 4, 4, generator=g), torch.tensor([500.0, 200.0][:batch]),
            torch.randn(batch, 32, 32, generator=g)), torch.randn(batch, 96, 3, 4, 4, generator=g)


def test_step_zero_is_plain_vace_and_the_branch_gets_gradient():
    torch.manual_seed(0)
    model = WanVaceEModel(wan_config("tiny-vace"), BRANCH)
    plain = build_wan(wan_config("tiny-vace"))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("vace_e.")})
    assert torch.equal(model.vace_e.vace_blocks[1].ffn[0].weight, model.blocks[3].ffn[0].weight)  # copied block
    args, control = inputs()
    cond = condition()
    assert torch.equal(model(*args, vace_context=control, vace_e=cond), plain(*args, vace_context=control))
    torch.nn.init.normal_(model.head.head.weight, std=0.1)  # a trained head: the output reads the hidden states
    model(*args, vace_context=control, vace_e=cond).square().mean().backward()
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()
             if n.startswith("vace_e.")}
    assert all(v for n, v in grads.items() if "after_proj" in n)  # zero-init hints still learn
    with torch.no_grad():
        for block in model.vace_e.vace_blocks:
            block.after_proj.weight.normal_(std=0.1)
    model.zero_grad()
    model(*args, vace_context=control, vace_e=cond).square().mean().backward()
    assert [n for n, p in model.named_parameters() if n.startswith("vace_e.") and not bool(p.grad.abs().sum() > 0)] == []
    # the hand motion changes the output; a sample whose condition is all invalid reads the null token only
    moved = dict(cond, hand_motion=cond["hand_motion"] + 1)
    assert not torch.allclose(model(*args, vace_context=control, vace_e=moved), model(*args, vace_context=control, vace_e=cond))
    empty = {k: (v & False if k.endswith("_mask") else v) for k, v in cond.items()}
    assert torch.isfinite(model(*args, vace_context=control, vace_e=empty)).all()


def test_a_loaded_base_is_copied_into_the_branch_and_lora_stays_on_the_dit(tmp_path):
    from safetensors.torch import save_file

    from worldtune.models.lora import lora_modules
    from worldtune.systems.vace_e.config import VaceEModelConfig
    from worldtune.systems.wan_parts import build_dit

    base = build_wan(wan_config("tiny-vace"))
    with torch.no_grad():
        base.blocks[3].self_attn.q.weight.add_(1.0)  # "pretrained": differs from a fresh block
    (tmp_path / "base").mkdir()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, tmp_path / "base" / "model.safetensors")
    cfg = VaceEModelConfig(ckpt_dir=str(tmp_path / "base"), size="tiny-vace", lora_rank=4)
    model = build_dit(cfg, make=lambda c: WanVaceEModel(c, BRANCH))
    assert torch.equal(model.vace_e.vace_blocks[1].self_attn.q.weight, base.blocks[3].self_attn.q.weight)
    assert torch.equal(model.blocks[3].self_attn.q.base_layer.weight, base.blocks[3].self_attn.q.weight)
    adapted = lora_modules(model)
    assert adapted and all(name.startswith("blocks.") for name in adapted)
    args, control = inputs()
    assert torch.isfinite(model(*args, vace_context=control, vace_e=condition())).all()  # the loaded model runs


def test_the_seed_yaml_keys_and_flags(tmp_path):
    from worldtune.config import seed_flag_overrides

    config, overrides = seed_flag_overrides(
        ["--config", "configs/vace_e/vace_e_lora.yaml", "--learning_rate", "1e-4", "--vace_e_layers", "0,3,6",
         "--batch_size", "4", "--dataset_base_path", "/data", "--debug", "True", "--verbose_logging", "False",
         "--use_gradient_checkpointing_offload", "True"])
    cfg = load_config(REPO / config, overrides)
    assert cfg.recipe == "vace_e" and cfg.train.learning_rate == 1e-4 and cfg.model.layers() == (0, 3, 6)
    assert cfg.train.batch_size == 4 and cfg.data.dataset_base_path == "/data" and cfg.log.log_frequency == 1
    assert cfg.dist.activation_offload and cfg.dist.activation_checkpointing
    stages = cfg.train.training_stages
    assert [(s.trainable_models, s.epochs, s.learning_rate) for s in stages.values()] == [
        ("vace_e", 10, 5e-5), ("dit,vace_e", 20, 1e-5)]
    assert cfg.model.lora_rank == 32 and cfg.validation.every_epochs == 5 and cfg.validation.video_num == 10
    assert cfg.log.wandb_project == "vace_e_training" and cfg.log.save_model_artifacts
    full = load_config(REPO / "configs/vace_e/vace_e_full.yaml")
    assert full.dist.cpu_offload and full.vram_optimization.cpu_offload  # offload_optimizer, spelled for FSDP2
    # a seed file as written: no `recipe:`, flat keys; the recipe is read from them
    seed_file = tmp_path / "seed.yaml"
    seed_file.write_text('enable_vace_e: true\nvace_e_layers: "0,5"\ndataset_base_path: /d\n'
                         "training_stages:\n  stage_1:\n    epochs: 1\n    trainable_models: vace_e\n")
    seed = load_config(seed_file)
    assert seed.recipe == "vace_e" and seed.model.layers() == (0, 5) and seed.output_dir == "runs/vace_e"
    with pytest.raises(ConfigError, match="vace_e_layers"):
        load_config(seed_file, ["model.vace_e_layers=zero,five"])
    with pytest.raises(ConfigError, match="--debug: a switch takes no value or True / False"):
        seed_flag_overrides(["--debug", "maybe"])


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return write_marker_dataset(tmp_path_factory.mktemp("vace_e_data"), episodes=4, frames=9, size=32)


@pytest.fixture(scope="module")
def base(episodes, tmp_path_factory) -> Path:
    """A "pretrained" Wan2.1-VACE: the tiny VACE DiT trained a few steps without the branch and
    exported (a random DiT's output layer is zero, so a branch on it would get no gradient)."""
    run = tmp_path_factory.mktemp("vace_base") / "run"
    stages = "train.training_stages"
    train_run(load_config(TINY, [f"data.dataset_base_path={episodes}", f"output_dir={run}", "model.enable_vace_e=false",
                                 f"{stages}.stage_1.trainable_models=dit,vace", f"{stages}.stage_2.trainable_models=dit",
                                 "validation.enabled=false"]))
    assert main(["export", str(run)]) == 0
    return run / "export"


def test_train_two_stages_kill_resume_export_generate_eval(episodes, base, tmp_path):
    overrides = [f"data.dataset_base_path={episodes}", f"model.ckpt_dir={base}"]
    uninterrupted = tmp_path / "uninterrupted"
    train_run(load_config(TINY, [*overrides, f"output_dir={uninterrupted}"]))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(TINY), "--dataset_base_path", str(episodes),
               "--output_dir", str(run), "--ckpt_dir", str(base)]
    train_then_kill(command, run, 3)
    assert max(step_metric(run)) < 6
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == step_metric(uninterrupted)
    assert step_metric(run, "val/task_alignment/psnr_gain") and step_metric(run, "val/motion_accuracy/psnr")
    assert sorted((run / "samples").glob("*.mp4"))  # target | generated | control

    # stage 1 trained the branch alone; stage 2 the DiT too
    first, last = (load_weights(run / "checkpoints" / f"step_{s:08d}") for s in (2, 6))
    initial = _initial_weights(run)
    assert torch.equal(first["blocks.0.ffn.0.weight"], initial["blocks.0.ffn.0.weight"])
    assert not torch.equal(first["vace_e.vace_blocks.0.after_proj.weight"], initial["vace_e.vace_blocks.0.after_proj.weight"])
    assert not torch.equal(last["blocks.0.ffn.0.weight"], first["blocks.0.ffn.0.weight"])
    assert torch.equal(last["vace_blocks.0.after_proj.weight"], initial["vace_blocks.0.after_proj.weight"])  # VACE frozen
    assert not torch.equal(initial["vace_blocks.0.after_proj.weight"], torch.zeros_like(initial["vace_blocks.0.after_proj.weight"]))

    assert main(["export", str(run)]) == 0
    exported = torch.load(run / "export" / "vace_e.pt", weights_only=True)
    assert set(exported["vace_e_state_dict"]) == {k[len("vace_e."):] for k in last if k.startswith("vace_e.")}
    assert "dit_state_dict" in exported and exported["vace_e_layers"] == [0, 3]  # stage 2 trained the DiT
    episode = next(episodes.glob("*/episode_0"))
    out = tmp_path / "generated.mp4"
    assert main(["generate", "vace-e", "--checkpoint", str(run / "export" / "vace_e.pt"), "--episode", str(episode),
                 "--out", str(out)]) == 0
    from worldtune.data.video import probe_video

    assert probe_video(out).num_frames == 9
    assert main(["eval", "vace-e", str(run), "--test_data", str(episodes), "--output_dir", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["metrics"]) == {"video_quality/psnr", "video_quality/ssim", "motion_accuracy/psnr",
                                      "task_alignment/psnr_gain"}
    assert len(list((tmp_path / "eval").glob("*.mp4"))) == 4


def _initial_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights the run started from: the recipe's model built again from its config after the
    trainer's seeding."""
    from worldtune.systems.vace_e.recipe import RECIPE
    from worldtune.train.rng import seed_all
    from worldtune.train.run import load_run

    cfg = load_run(run, RECIPE).cfg
    seed_all(cfg.seed)
    return {k: v.clone() for k, v in RECIPE.build_models(cfg).model.state_dict().items()}


def test_bad_input_is_named(episodes, tmp_path, capsys):
    import shutil

    from worldtune.data.formats.vace_e import VaceEDataConfig, VaceEDataset
    from worldtune.systems.vace_e.generate import export_weights_of
    from worldtune.utils.weight_files import CheckpointError

    base = tmp_path / "data"
    shutil.copytree(episodes, base)
    task = next(base.iterdir())
    (task / "episode_1" / "end_effector_camera.jpg").write_bytes(b"not a jpeg")
    (task / "episode_2" / "episode_2_object_trajectories.hdf5").write_bytes(b"not hdf5")
    cfg = VaceEDataConfig(dataset_base_path=str(base), num_frames=9, height=32, width=32)
    with pytest.raises(DataError, match="episode_1/end_effector_camera.jpg: unreadable image"):
        VaceEDataset(cfg)
    skipping = VaceEDataset(VaceEDataConfig(**{**cfg.__dict__, "on_bad_sample": "skip"}))
    assert len(skipping) == 2 and len(skipping.skipped) == 2
    import numpy as np

    from vace_e_fixtures import write_hand_file

    (task / "episode_1" / "end_effector_camera.jpg").unlink()
    (task / "episode_2" / "episode_2_object_trajectories.hdf5").unlink()
    write_hand_file(task / "episode_3" / "episode_3_hand_trajectories.hdf5", np.full((5, 2), 0.5))
    with pytest.raises(DataError, match="episode_3_hand_trajectories.hdf5: 5 trajectory frames, the clip needs frame 8"):
        VaceEDataset(VaceEDataConfig(**{**cfg.__dict__, "fallback_to_video_only": True}))
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    with pytest.raises(CheckpointError, match="not a VACE-E export"):
        export_weights_of(bogus)
    assert main(["generate", "vace-e", "--checkpoint", str(bogus), "--episode", str(task / "episode_0"), "--out",
                 str(tmp_path / "x.mp4")]) != 0
    assert "bogus.pt: not a VACE-E export" in capsys.readouterr().err


def test_the_trained_model_follows_the_hand_motion(tmp_path):
    """A marker drawn where the right wrist is, the whole frame masked: only the trajectory says
    where. On held-out episodes, the episode's own trajectories beat another episode's."""
    train = write_marker_dataset(tmp_path / "train", episodes=16, frames=5, size=16, seed=0)
    test = write_marker_dataset(tmp_path / "test", episodes=6, frames=5, size=16, seed=1)
    run = tmp_path / "run"
    stage = "train.training_stages.stage_1"
    train_run(load_config(TINY, [
        f"data.dataset_base_path={train}", f"output_dir={run}", "model.size=tiny-vace-pixels", "model.vae=pixels:2",
        "model.vace_e.task_dim=32", "data.num_frames=5", "data.height=16", "data.width=16", "train.batch_size=4",
        f"{stage}.max_steps=250", f"{stage}.trainable_models=dit,vace_e", f"{stage}.learning_rate=1.5e-3",
        "train.training_stages.stage_2.max_steps=1", "validation.enabled=false", "checkpoint.every_steps=0",
        "model.sampling.num_inference_steps=10", "model.sampling.guidance_scale=1.0", "log.progress_bar=false",
        "train.num_workers=1"]))
    assert main(["eval", "vace-e", str(run), "--test_data", str(test), "--output_dir", str(tmp_path / "eval"),
                 "--no_videos"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["task_alignment/psnr_gain"] > 1.0, metrics


def test_offloaded_encoders_and_activations_give_the_same_step(episodes, tmp_path, monkeypatch):
    """vram_optimization.cpu_offload keeps the encoders out of `frozen` (the trainer does not move
    them) and use_gradient_checkpointing_offload keeps saved activations on the CPU: same numbers."""
    from worldtune.config import DistConfig
    from worldtune.data.formats.vace_e import collate_vace_e
    from worldtune.systems.vace_e.recipe import RECIPE
    from worldtune.train.distributed import DistEnv, activation_offload

    def one_step(overrides: list[str], offload: bool):
        cfg = load_config(TINY, [f"data.dataset_base_path={episodes}", f"output_dir={tmp_path}", *overrides])
        torch.manual_seed(0)
        parts = RECIPE.build(cfg)
        torch.nn.init.normal_(parts.model.head.head.weight, std=0.1)
        batch = collate_vace_e([parts.train_dataset[i] for i in range(2)])
        torch.manual_seed(1)
        env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        with activation_offload(DistConfig(activation_offload=offload), env):
            loss = RECIPE.loss(parts, batch)["loss"]
        loss.backward()
        return parts, loss.detach(), parts.model.head.head.weight.grad.clone()

    packed: list[int] = []  # activations that went through save_on_cpu's pack hook
    original = torch.autograd.graph.save_on_cpu

    class CountingSaveOnCpu(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pack = self.pack_hook
            self.pack_hook = lambda tensor: (packed.append(1), pack(tensor))[1]

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", CountingSaveOnCpu)
    plain, loss, grad = one_step([], False)
    assert not packed
    assert set(plain.frozen) == {"vae", "text_encoder", "clip"}
    offloaded, loss2, grad2 = one_step(["vram_optimization.enabled=true", "vram_optimization.cpu_offload=true"], True)
    assert offloaded.frozen == {} and set(offloaded.extras["encoders"]) == {"vae", "text_encoder", "clip"}
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2) and len(packed) > 100


def test_torchrun_two_ranks_copy_the_loaded_blocks_and_train(episodes, base, tmp_path):
    """FSDP2 over 2 ranks: the DiT is built on meta, each rank loads its shards of the base and the
    branch's blocks are copied from the loaded (sharded) DiT blocks; both stages run."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "worldtune.cli", "train",
               str(TINY), "--dataset_base_path", str(episodes), "--output_dir", str(run), "--ckpt_dir", str(base),
               "train.training_stages.stage_1.learning_rate=0", "train.training_stages.stage_1.max_steps=1",
               "train.training_stages.stage_2.max_steps=1", "train.weight_decay=0", "checkpoint.every_steps=1",
               "validation.enabled=false"]
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True, timeout=300)
    from safetensors.torch import load_file

    weights = load_weights(run / "checkpoints" / "step_00000001")
    loaded = load_file(base / "vace_e.safetensors")
    for name in ("ffn.0.weight", "self_attn.q.weight", "modulation"):
        assert torch.equal(weights[f"vace_e.vace_blocks.1.{name}"], loaded[f"blocks.3.{name}"])
    assert max(step_metric(run)) == 2
