"""Large DiTs under torchrun: built on meta, sharded by the trainer, then loaded shard by shard.

Two CPU ranks (gloo) run tests/sharded_loading_worker.py once for every case below. A DiT of about
340 MB of float32 weights is loaded from a safetensors checkpoint: each rank's resident memory grows
by less than the model (it reads only its own rows), its shards are exactly the file's, and a
forward matches the model loaded the ordinary way in one process. Random initialisation and LoRA
adapters on meta give, shard by shard, what a single process builds from the same seed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, subprocess_env
from sharded_loading_worker import forward, model_config
from worldtune.models.wan.factory import build_wan, load_wan
from worldtune.models.wan.saving import save_original
from worldtune.models.wan.sizes import WanConfig, wan_config
from worldtune.systems.wan_parts import build_dit

SEED = 5
# Wide enough to measure memory (85 M parameters, 340 MB in float32), shallow enough for the CPU.
BIG = WanConfig(model_type="t2v", dim=1024, ffn_dim=2048, num_heads=8, num_layers=6, text_dim=256, text_len=16)


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _save(config: WanConfig, folder: Path, seed: int = 0) -> int:
    torch.manual_seed(seed)
    model = build_wan(config)
    save_original(model.state_dict(), folder, config={"_class_name": "WanModel", **config.to_dict()})
    return _model_bytes(model)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sharded")
    full_bytes = _save(BIG, root / "big")
    _save(wan_config("tiny"), root / "tiny_base", seed=1)
    torch.manual_seed(2)
    delta = {k: v for k, v in build_wan("tiny").state_dict().items() if k.startswith("blocks.1.")}
    torch.save(delta, root / "delta.pt")
    lora = {"lora_rank": 4, "lora": {"rank": 4, "alpha": 4.0, "init": "random"}}
    runs = [
        {"name": "big", "model": {"ckpt_dir": str(root / "big")}, "check_file": True},
        {"name": "random_lora", "model": {"size": "tiny", **lora}, "keep_shards": True},
        {"name": "base_delta_lora", "keep_shards": True,
         "model": {"ckpt_dir": str(root / "tiny_base"), "pt_dir": str(root / "delta.pt"), **lora}},
        {"name": "delta_only_lora", "keep_shards": True, "model": {"size": "tiny", "pt_dir": str(root / "delta.pt"), **lora}},
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "sharded_loading_worker.py"), str(root), json.dumps({"runs": runs, "seed": SEED})]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    out = {run["name"]: [torch.load(root / f"{run['name']}.rank{r}.pt", weights_only=False) for r in range(2)]
           for run in runs}
    return {"runs": out, "specs": {run["name"]: run for run in runs}, "root": root, "full_bytes": full_bytes}


def test_each_rank_reads_only_its_shards(ranks):
    full = ranks["full_bytes"]
    assert full > 300e6
    for rank, result in enumerate(ranks["runs"]["big"]):
        assert result["built_on_meta"]
        assert result["shards_match_file"], rank
        assert result["local_bytes"] <= full / 2 + 1e6
        print(f"rank {rank}: peak RSS growth {result['peak_growth'] / 1e6:.0f} MB, "
              f"shards {result['local_bytes'] / 1e6:.0f} MB, full model {full / 1e6:.0f} MB")
        assert result["peak_growth"] < full, (rank, result["peak_growth"], full)


def test_forward_matches_the_model_loaded_in_one_process(ranks):
    reference, _ = load_wan(ranks["root"] / "big")
    expected = forward(reference)
    for result in ranks["runs"]["big"]:
        torch.testing.assert_close(result["forward"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["random_lora", "base_delta_lora", "delta_only_lora"])
def test_shards_equal_the_single_process_build(ranks, name):
    """No base (random init), base + delta, or a delta alone, with LoRA: every shard is its region
    of what one process builds from the same seed, so a run is the same on any number of ranks."""
    torch.manual_seed(SEED)
    single = build_dit(model_config(ranks["specs"][name]["model"]))
    expected = dict(single.named_parameters())
    assert any(".lora_" in n for n in expected)
    for rank, result in enumerate(ranks["runs"][name]):
        assert result["built_on_meta"]
        assert set(result["shards"]) == set(expected)
        for param_name, (region, local) in result["shards"].items():
            assert torch.equal(local, expected[param_name].detach()[region]), (rank, param_name)
        torch.testing.assert_close(result["forward"], forward(single), rtol=1e-5, atol=1e-6)


def test_a_vidar_run_under_torchrun_starts_from_the_single_process_weights(tmp_path):
    """Through the trainer (`Parts.load_after_shard` after `prepare_model`): with a zero learning
    rate the 2-rank run's checkpoint is its initial model, which must be the one a single process
    builds from the run's seed, LoRA adapters included."""
    from conftest import step_metric
    from episode_fixtures import write_dataset
    from worldtune.systems import load_config
    from worldtune.systems.vidar.recipe import RECIPE
    from worldtune.train import checkpoint as ckpt
    from worldtune.train.export import load_weights
    from worldtune.train.rng import seed_all

    data = write_dataset(tmp_path / "data", n_episodes=4, num_frames=12, fps=10, size=(64, 64))
    run = tmp_path / "run"
    overrides = [f"data.data_dir={data}", f"output_dir={run}", "train.max_steps=1", "train.batch_size=1",
                 "train.learning_rate=0", "train.warmup_steps=0", "checkpoint.every_steps=0",
                 "validation.every_steps=0", "model.lora_rank=2"]
    config = REPO / "configs" / "vidar" / "tiny.yaml"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "worldtune.cli", "train", str(config), *overrides]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "built on meta and sharded over 2 ranks" in result.stderr
    assert sorted(step_metric(run)) == [1]
    trained = load_weights(ckpt.latest_checkpoint(run))
    cfg = load_config(config, overrides)
    seed_all(cfg.seed)  # as the trainer does before building
    expected = RECIPE.build(cfg).model.state_dict()
    assert set(trained) == set(expected) and any(".lora_" in k for k in trained)
    for key, value in expected.items():
        assert torch.equal(trained[key], value), key
