"""LoRA on the tiny Wan DiT: identity at start, only adapters train, peft / ComfyUI files, merge."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from worldtune.models.lora import (
    LoraSettings,
    add_lora,
    base_state_dict,
    from_comfyui,
    has_lora,
    load_lora,
    lora_modules,
    lora_state_dict,
    merge_lora,
    save_lora,
    to_comfyui,
)
from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.sizes import wan_config

SETTINGS = LoraSettings(rank=4, alpha=8.0)


def make_model(seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    model = WanModel(wan_config("tiny")).eval()
    # Upstream zero-initialises the output layer, which would make every output 0.
    nn.init.normal_(model.head.head.weight, std=0.2)
    return model


def make_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, 2, 4, 4, generator=g), torch.tensor([100.0, 700.0]),
            torch.randn(2, 16, 32, generator=g))


def trained_lora_model(steps: int = 3) -> WanModel:
    model = add_lora(make_model(), SETTINGS)
    x, t, ctx = make_inputs()
    target = torch.randn(2, 16, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x, t, ctx), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def run(model: nn.Module) -> torch.Tensor:
    return model(*make_inputs())


def test_targets_are_exactly_the_attention_and_ffn_linears():
    model = add_lora(make_model(), SETTINGS)
    expected = [f"blocks.{i}.{m}" for i in range(2) for m in
                [*(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"), "ffn.0", "ffn.2"]]
    assert lora_modules(model) == expected
    assert isinstance(model, WanModel) and not hasattr(model, "base_model")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(expected)


def test_settings_work_as_an_omegaconf_section():
    cfg = OmegaConf.merge(OmegaConf.structured(LoraSettings), {"rank": 8, "target_modules": ["q", "v"]})
    settings = OmegaConf.to_object(cfg)
    assert settings.rank == 8 and settings.target_modules == ["q", "v"]
    assert len(lora_modules(add_lora(make_model(), settings))) == 8


def test_no_matching_target_is_an_error():
    with pytest.raises(ValueError, match="matched no"):
        add_lora(make_model(), LoraSettings(target_modules=["nothing_here"]))


def test_zero_initialised_lora_leaves_outputs_unchanged():
    reference = run(make_model())
    model = add_lora(make_model(), SETTINGS)
    assert torch.equal(run(model), reference)
    assert torch.equal(base_state_dict(model)["blocks.0.self_attn.q.weight"],
                       make_model().state_dict()["blocks.0.self_attn.q.weight"])


def test_training_changes_only_lora_weights():
    model = add_lora(make_model(), SETTINGS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, ctx = make_inputs()
    target = torch.randn(2, 16, 2, 4, 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(model(x, t, ctx), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_B." in k for k in changed) and any(".lora_A." in k for k in changed)


def test_comfyui_export_loads_back_identically(tmp_path):
    model = trained_lora_model()
    file = save_lora(model, tmp_path / "wan_lora.safetensors", format="comfyui")
    keys = set(load_file(str(file)))
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in keys
    assert not any(".default" in k for k in keys)
    assert load_file(str(file))["diffusion_model.blocks.0.ffn.0.alpha"].item() == 8.0
    assert len(keys) == 3 * 20  # lora_A, lora_B, alpha per module

    fresh = add_lora(make_model(), SETTINGS)
    report = load_lora(fresh, file)
    assert report.format == "comfyui" and len(report.loaded) == 40
    assert not report.missing and not report.unexpected
    assert torch.equal(run(fresh), run(model))


def test_comfyui_alpha_is_honoured_on_load(tmp_path):
    model = trained_lora_model()
    file = save_lora(model, tmp_path / "a.safetensors", format="comfyui")
    # Same rank, different alpha: the scale difference is folded into lora_B.
    other = add_lora(make_model(), LoraSettings(rank=4, alpha=2.0))
    load_lora(other, file)
    torch.testing.assert_close(run(other), run(model), rtol=1e-5, atol=1e-6)
    # A plain model gets LoRA layers from the file itself.
    plain = make_model()
    load_lora(plain, file)
    assert lora_modules(plain) == lora_modules(model)
    torch.testing.assert_close(run(plain), run(model), rtol=1e-5, atol=1e-6)
    # Without `.alpha`, ComfyUI applies scale 1.0: the same as alpha == rank.
    state = lora_state_dict(model)
    for name, alpha in (("no_alpha", None), ("alpha_is_rank", 4.0)):
        save_file({k: v.contiguous() for k, v in to_comfyui(state, alpha).items()}, str(tmp_path / f"{name}.safetensors"))
    a, b = add_lora(make_model(), SETTINGS), add_lora(make_model(), SETTINGS)
    load_lora(a, tmp_path / "no_alpha.safetensors")
    load_lora(b, tmp_path / "alpha_is_rank.safetensors")
    key = "blocks.0.ffn.0.lora_B.weight"
    torch.testing.assert_close(lora_state_dict(a)[key], state[key] / 2)  # model scale is 8 / 4
    torch.testing.assert_close(run(a), run(b), rtol=0, atol=0)
    assert not torch.allclose(run(a), run(model))


def test_comfyui_naming_round_trip():
    state = {"blocks.0.self_attn.q.lora_A.weight": torch.ones(4, 24),
             "blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 4)}
    comfy = to_comfyui(state, alpha=4.0)
    assert set(comfy) == {"diffusion_model.blocks.0.self_attn.q.lora_A.weight",
                          "diffusion_model.blocks.0.self_attn.q.lora_B.weight",
                          "diffusion_model.blocks.0.self_attn.q.alpha"}
    back, alphas = from_comfyui(comfy)
    assert set(back) == set(state) and alphas == {"blocks.0.self_attn.q": 4.0}
    kohya = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": state["blocks.0.self_attn.q.lora_A.weight"],
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": state["blocks.0.self_attn.q.lora_B.weight"]}
    assert set(from_comfyui(kohya)[0]) == set(state)


def test_peft_format_round_trip(tmp_path):
    model = trained_lora_model()
    file = save_lora(model, tmp_path / "adapter", format="peft")
    assert file.name == "adapter_model.safetensors"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "LORA"
    keys = set(load_file(str(file)))
    assert "base_model.model.blocks.0.self_attn.q.lora_A.weight" in keys
    assert {k.removeprefix("base_model.model.") for k in keys} == set(lora_state_dict(model))

    fresh = add_lora(make_model(), SETTINGS)
    report = load_lora(fresh, tmp_path / "adapter")
    assert report.format == "peft" and len(report.loaded) == 40
    assert torch.equal(run(fresh), run(model))
    plain = make_model()  # no LoRA yet: settings come from the file and adapter_config.json
    load_lora(plain, file)
    assert torch.equal(run(plain), run(model))


def test_peft_file_loads_with_peft_itself(tmp_path):
    from peft import PeftModel

    model = trained_lora_model()
    save_lora(model, tmp_path / "adapter", format="peft")
    wrapped = PeftModel.from_pretrained(make_model(), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(run(wrapped), run(model), rtol=0, atol=0)


def test_merge_matches_lora_model_and_restores_original_keys():
    model = trained_lora_model()
    expected = run(model)
    original_keys = set(make_model().state_dict())
    merged = merge_lora(model)
    assert not has_lora(merged) and not hasattr(merged, "peft_config")
    assert set(merged.state_dict()) == original_keys
    assert type(merged.blocks[0].ffn[0]) is nn.Linear and type(merged.blocks[1].self_attn.q) is nn.Linear
    torch.testing.assert_close(run(merged), expected, rtol=0, atol=1e-5)
    assert not torch.equal(merged.state_dict()["blocks.0.self_attn.q.weight"],
                           make_model().state_dict()["blocks.0.self_attn.q.weight"])


def test_load_errors_name_the_file(tmp_path):
    model = add_lora(make_model(), SETTINGS)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lora(model, tmp_path / "missing.safetensors")
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"diffusion_model.head.head.lora_A.weight": torch.zeros(4, 24),
               "diffusion_model.head.head.lora_B.weight": torch.zeros(64, 4)}, str(unrelated))
    with pytest.raises(ValueError, match="unrelated.safetensors.*none of"):
        load_lora(model, unrelated)
    no_lora = tmp_path / "weights.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(24, 24)}, str(no_lora))
    with pytest.raises(ValueError, match="weights.safetensors.*no LoRA"):
        load_lora(model, no_lora)
    rank8 = add_lora(make_model(), LoraSettings(rank=8))
    file = save_lora(rank8, tmp_path / "rank8.safetensors", format="comfyui")
    with pytest.raises(ValueError, match="rank8.safetensors.*shapes conflict"):
        load_lora(model, file)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_lora(model, garbage)


def test_strict_load_reports_missing_keys(tmp_path):
    model = trained_lora_model()
    partial = {k: v for k, v in lora_state_dict(model).items() if k.startswith("blocks.0.")}
    file = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in to_comfyui(partial, alpha=8.0).items()}, str(file))
    fresh = add_lora(make_model(), SETTINGS)
    report = load_lora(fresh, file)
    assert len(report.loaded) == 20 and len(report.missing) == 20
    assert all(k.startswith("blocks.1.") for k in report.missing)
    with pytest.raises(ValueError, match="partial.safetensors.*missing"):
        load_lora(add_lora(make_model(), SETTINGS), file, strict=True)


def test_plain_model_load_names_the_file_when_modules_are_absent(tmp_path):
    file = tmp_path / "elsewhere.safetensors"
    save_file({"diffusion_model.nowhere.lora_A.weight": torch.zeros(4, 24),
               "diffusion_model.nowhere.lora_B.weight": torch.zeros(24, 4)}, str(file))
    with pytest.raises(ValueError, match="elsewhere.safetensors"):
        load_lora(make_model(), file)


def test_merge_lora_weights_without_a_model_matches_merge_lora() -> None:
    from worldtune.models.lora import merge_lora_weights

    model = make_model()
    add_lora(model, LoraSettings(rank=4, alpha=8.0, init="random"))
    merged = merge_lora_weights(model.state_dict(), scale=8.0 / 4)
    reference = merge_lora(model).state_dict()
    assert merged.keys() == reference.keys()
    assert all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in reference)


def test_adapter_file_errors_name_the_file(tmp_path):
    """Adapters are read by the one weight reader: a truncated file or an unknown suffix is one error
    naming the file."""
    model = add_lora(make_model(), SETTINGS)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match=r"broken\.safetensors: not a readable checkpoint"):
        load_lora(model, bad)
    odd = tmp_path / "adapter.lora"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"adapter\.lora: unsupported file type"):
        load_lora(model, odd)
