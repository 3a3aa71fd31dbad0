"""Loading our DiT from checkpoints: meta build + tensor-by-tensor load, delta loading, convert CLI."""

from __future__ import annotations

import pytest
import torch

from wan_helpers import diffusers_twin, run_forward, tiny_config
from worldtune.cli import main
from worldtune.models.wan.checkpoints import CheckpointError, read_state_dict
from worldtune.models.wan.convert import diffusers_to_original
from worldtune.models.wan.factory import build_wan, load_wan
from worldtune.models.wan.saving import save_diffusers, save_original
from worldtune.models.wan.sizes import PARAMETER_COUNTS


def test_load_from_diffusers_folder_in_bf16_on_meta(tmp_path):
    config = tiny_config("ti2v", in_dim=16, out_dim=16)
    theirs, ours = diffusers_twin(config)
    theirs.save_pretrained(tmp_path / "diffusers")
    loaded, report = load_wan(tmp_path / "diffusers", config=config, dtype=torch.bfloat16)
    assert not report.missing and not report.unexpected
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in loaded.parameters())
    expected = {k: v.bfloat16() for k, v in ours.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], expected[k]) for k in expected)
    torch.testing.assert_close(run_forward(loaded), run_forward(ours), atol=0.05, rtol=0.05)  # bf16 weights


@pytest.mark.parametrize("model_type", ["t2v", "ti2v", "i2v", "vace"])
def test_strict_load_of_every_variant_runs(tmp_path, model_type):
    """The default `strict=True` builds on meta: the loaded model must run, equal to its source."""
    config = tiny_config(model_type)
    _, ours = diffusers_twin(config)
    save_original(ours.state_dict(), tmp_path, config=config.to_dict())
    loaded, report = load_wan(tmp_path)
    assert not report.missing and not report.unexpected
    assert torch.equal(run_forward(loaded), run_forward(ours))


def test_config_json_is_enough_and_missing_config_is_explained(tmp_path):
    config = tiny_config("vace")
    _, ours = diffusers_twin(config)
    save_original(ours.state_dict(), tmp_path / "orig", shard_size="30KB",
                  config={"_class_name": "VaceWanModel", **config.to_dict()})
    loaded, _ = load_wan(tmp_path / "orig")  # shards + index + config.json
    assert type(loaded).__name__ == "WanVaceModel" and loaded.config.vace_layers == (0, 1)
    assert torch.equal(run_forward(loaded), run_forward(ours))
    torch.save(ours.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare.pt.*no config.json"):
        load_wan(tmp_path / "bare.pt")


def test_delta_loading_reports_and_fails_loudly(tmp_path):
    config = tiny_config("t2v")
    _, ours = diffusers_twin(config)
    delta = {k: v for k, v in ours.state_dict().items() if k.startswith("blocks.1.")}
    delta["extra_head.weight"] = torch.zeros(3)
    torch.save(delta, tmp_path / "delta.pt")
    model, report = load_wan(tmp_path / "delta.pt", config=config, strict=False)
    assert set(report.loaded) == {k for k in delta if k.startswith("blocks.")}
    assert "extra_head.weight" in report.unexpected and "head.head.weight" in report.missing
    assert torch.equal(model.blocks[1].ffn[0].weight, ours.blocks[1].ffn[0].weight)
    # The tensors the delta lacks start as a fresh model's (the same seed gives the same init).
    torch.manual_seed(11)
    fresh = build_wan(config)
    torch.manual_seed(11)
    model, _ = load_wan(tmp_path / "delta.pt", config=config, strict=False)
    assert torch.equal(model.head.head.weight, fresh.head.head.weight)
    assert torch.equal(model.blocks[0].ffn[0].weight, fresh.blocks[0].ffn[0].weight)
    run_forward(model)
    wrong = {"blocks.0.ffn.0.weight": torch.zeros(7, 7)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0\.weight"):
        load_wan(tmp_path / "wrong.pt", config=config, strict=False)
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="none.pt"):
        load_wan(tmp_path / "none.pt", config=config, strict=False)


def test_truncated_file_error_names_it(tmp_path):
    config = tiny_config("t2v")
    _, ours = diffusers_twin(config)
    save_original(ours.state_dict(), tmp_path / "m", config=config.to_dict())
    weights = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_wan(tmp_path / "m")


def test_convert_cli_round_trip_is_exact(tmp_path, capsys):
    config = tiny_config("i2v")
    theirs, ours = diffusers_twin(config)
    save_diffusers(diffusers_to_original(theirs.state_dict()), tmp_path / "d", config.to_dict())
    assert main(["convert", str(tmp_path / "d"), str(tmp_path / "o"), "--to", "original"]) == 0
    assert main(["convert", str(tmp_path / "o"), str(tmp_path / "d2"), "--to", "diffusers"]) == 0
    assert main(["convert", str(tmp_path / "d2"), str(tmp_path / "o2"), "--to", "original"]) == 0
    first, second = read_state_dict(tmp_path / "o"), read_state_dict(tmp_path / "o2")
    assert first.keys() == second.keys() == ours.state_dict().keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert "diffusion_pytorch_model.safetensors" in capsys.readouterr().out
    for converted in ("o2", "d2"):  # both layouts load and run as the source model
        # (a diffusers config has no text_len: the tiny model's 16 becomes the released 512)
        loaded, _ = load_wan(tmp_path / converted, config=config)
        assert torch.equal(run_forward(loaded), run_forward(ours))


def test_published_size_builds_instantly_on_meta():
    model = build_wan("wan2.2-ti2v-5b", device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == 4_999_787_712


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_released_sizes_have_their_parameter_counts(name):
    assert sum(p.numel() for p in build_wan(name, device="meta").parameters()) == PARAMETER_COUNTS[name]
