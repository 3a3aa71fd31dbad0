"""Wan DiT key conversion (original <-> diffusers), checkpoint reading / saving, and `load_into`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from safetensors.torch import save_file
from torch import nn

from worldtune.models.wan import convert
from worldtune.models.wan.checkpoints import (
    CheckpointError,
    iter_tensors,
    load_into,
    read_config,
    read_state_dict,
)
from worldtune.models.wan.convert import ConversionError
from worldtune.models.wan.saving import save_diffusers, save_original

# diffusers' own tiny test config (REFERENCE.md); dim 24, 2 heads, 2 layers.
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
VARIANTS = {
    "t2v": (WanTransformer3DModel, {}),
    "i2v": (WanTransformer3DModel, {"image_dim": 20, "added_kv_proj_dim": 24}),
    "vace": (WanVACETransformer3DModel, {"vace_layers": [0, 1], "vace_in_channels": 8}),
}


def _tiny(variant: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls, extra = VARIANTS[variant]
    return cls(**TINY, **extra)


def _linear(name: str) -> set[str]:
    return {f"{name}.weight", f"{name}.bias"}


def _block(prefix: str, *, image: bool = False, before: bool = False, after: bool = False) -> set[str]:
    keys = {f"{prefix}.modulation", *_linear(f"{prefix}.norm3"), *_linear(f"{prefix}.ffn.0"), *_linear(f"{prefix}.ffn.2")}
    for attn in ("self_attn", "cross_attn"):
        keys |= {*_linear(f"{prefix}.{attn}.q"), *_linear(f"{prefix}.{attn}.k"), *_linear(f"{prefix}.{attn}.v"),
                 *_linear(f"{prefix}.{attn}.o"), f"{prefix}.{attn}.norm_q.weight", f"{prefix}.{attn}.norm_k.weight"}
    if image:
        keys |= {*_linear(f"{prefix}.cross_attn.k_img"), *_linear(f"{prefix}.cross_attn.v_img"),
                 f"{prefix}.cross_attn.norm_k_img.weight"}
    if before:
        keys |= _linear(f"{prefix}.before_proj")
    if after:
        keys |= _linear(f"{prefix}.after_proj")
    return keys


def _expected_original_keys(variant: str) -> set[str]:
    keys = {*_linear("patch_embedding"), *_linear("text_embedding.0"), *_linear("text_embedding.2"),
            *_linear("time_embedding.0"), *_linear("time_embedding.2"), *_linear("time_projection.1"),
            "head.modulation", *_linear("head.head")}
    image = variant == "i2v"
    keys |= _block("blocks.0", image=image) | _block("blocks.1", image=image)
    if image:
        keys |= {k for i in (0, 1, 3, 4) for k in _linear(f"img_emb.proj.{i}")}
    if variant == "vace":
        keys |= _linear("vace_patch_embedding") | _block("vace_blocks.0", before=True, after=True)
        keys |= _block("vace_blocks.1", after=True)
    return keys


@torch.no_grad()
def _diffusers_forward(model: nn.Module, variant: str) -> torch.Tensor:
    """A forward of a tiny diffusers model (what a loader's test runs on what it loaded)."""
    g = torch.Generator().manual_seed(0)
    extra = {}
    if variant == "i2v":
        extra["encoder_hidden_states_image"] = torch.randn(1, 3, 20, generator=g)
    if variant == "vace":
        extra["control_hidden_states"] = torch.randn(1, 8, 1, 4, 4, generator=g)
    x, text = torch.randn(1, 16, 1, 4, 4, generator=g), torch.randn(1, 6, 32, generator=g)
    return model.eval()(x, torch.tensor([500.0]), text, return_dict=False, **extra)[0]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_original_names_and_exact_round_trip(variant: str) -> None:
    diffusers_sd = _tiny(variant).state_dict()
    original = convert.diffusers_to_original(diffusers_sd)
    assert set(original) == _expected_original_keys(variant)
    assert original["blocks.0.modulation"].shape == (1, 6, 24)
    assert original["head.modulation"].shape == (1, 2, 24)
    assert original["blocks.1.ffn.0.weight"].shape == (32, 24)
    back = convert.original_to_diffusers(original)
    assert list(back) == list(diffusers_sd)
    assert all(back[k] is diffusers_sd[k] for k in diffusers_sd)  # names only, no copies or reshapes
    assert convert.detect_key_format(diffusers_sd) == "diffusers"
    assert convert.detect_key_format(original) == "original"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_names_and_shapes_match_our_dit(variant: str) -> None:
    from worldtune.models.wan.dit import WanModel
    from worldtune.models.wan.sizes import wan_config
    from worldtune.models.wan.vace import WanVaceModel

    extra = {"i2v": {"image_dim": 20}, "vace": {"vace_layers": (0, 1), "vace_in_dim": 8}}.get(variant, {})
    cls = WanVaceModel if variant == "vace" else WanModel
    with torch.device("meta"):
        ours = cls(wan_config("tiny", model_type=variant, **extra)).state_dict()
    converted = convert.diffusers_to_original(_tiny(variant).state_dict())
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_unmapped_keys_are_named_not_dropped() -> None:
    sd = dict(_tiny("t2v").state_dict())
    sd["blocks.0.attn1.lora_A.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="blocks.0.attn1.lora_A.weight"):
        convert.diffusers_to_original(sd)
    kept = convert.diffusers_to_original(sd, keep_unknown=True)
    assert "blocks.0.attn1.lora_A.weight" in kept and "blocks.0.self_attn.q.weight" in kept


def test_wrappers_are_stripped_and_formats_detected() -> None:
    keys = ["model.diffusion_model.blocks.0._orig_mod.attn1.to_q.weight",
            "model.diffusion_model.condition_embedder.time_proj.bias"]
    assert convert.to_original_names(keys) == {keys[0]: "blocks.0.self_attn.q.weight",
                                               keys[1]: "time_projection.1.bias"}
    assert convert.to_original_names(["module.encoder.weight"]) == {"module.encoder.weight": "encoder.weight"}
    with pytest.raises(ConversionError, match="mix"):
        convert.detect_key_format(["blocks.0.attn1.to_q.weight", "blocks.0.self_attn.q.weight"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_round_trips(variant: str) -> None:
    model = _tiny(variant)
    cfg = {k: v for k, v in model.config.items() if not k.startswith("_")}
    original = convert.diffusers_config_to_original(cfg)
    assert original["model_type"] == variant and original["dim"] == 24 and original["num_heads"] == 2
    back = convert.original_config_to_diffusers(original)
    assert {k: v for k, v in back.items() if not k.startswith("_")} == {**cfg, "patch_size": [1, 2, 2]}
    state = convert.diffusers_to_original(model.state_dict())
    assert convert.original_config_to_diffusers(original, state_dict=state) == back


def test_published_configs_map_to_diffusers() -> None:
    ti2v = {"model_type": "ti2v", "dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30,
            "in_dim": 48, "out_dim": 48}
    cfg = convert.original_config_to_diffusers(ti2v)
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["in_channels"]) == (24, 128, 48)
    assert cfg["image_dim"] is None and cfg["rope_max_seq_len"] == 1024
    back = convert.diffusers_config_to_original(cfg)
    assert {k: back[k] for k in ti2v} == ti2v
    vace = convert.original_config_to_diffusers({"model_type": "vace", "dim": 1536, "ffn_dim": 8960, "num_heads": 12,
                                                 "num_layers": 30, "vace_in_dim": 96})
    assert vace["_class_name"] == "WanVACETransformer3DModel" and vace["vace_layers"] == list(range(0, 30, 2))
    i2v = convert.original_config_to_diffusers({"model_type": "i2v", "dim": 5120, "ffn_dim": 13824,
                                                "num_heads": 40, "num_layers": 40, "in_dim": 36})
    assert (i2v["image_dim"], i2v["added_kv_proj_dim"]) == (1280, 5120)


@pytest.mark.parametrize(("variant", "shard_size"), [("t2v", "5GB"), ("i2v", "30KB"), ("vace", "5GB")])
def test_save_diffusers_loads_with_from_pretrained(tmp_path: Path, variant: str, shard_size: str) -> None:
    model = _tiny(variant)
    original = convert.diffusers_to_original(model.state_dict())
    config = convert.diffusers_config_to_original(model.config)
    save_diffusers(original, tmp_path, config, shard_size=shard_size)
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists() == (shard_size == "30KB")
    loaded = VARIANTS[variant][0].from_pretrained(tmp_path)
    _assert_same(loaded.state_dict(), model.state_dict())
    torch.testing.assert_close(_diffusers_forward(loaded, variant), _diffusers_forward(model, variant))
    _assert_same(read_state_dict(tmp_path), original)  # diffusers names read back as original names


def test_save_original_shards_and_reads_back(tmp_path: Path) -> None:
    original = convert.diffusers_to_original(_tiny("i2v").state_dict())
    config = {"model_type": "i2v", "dim": 24, "num_heads": 2, "ffn_dim": 32, "num_layers": 2, "image_dim": 20}
    written = save_original(original, tmp_path, shard_size="20KB", config=config)
    shards = sorted(tmp_path.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) >= 3 and set(shards) <= set(written)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(original)
    _assert_same(read_state_dict(tmp_path), original)
    _assert_same(read_state_dict(tmp_path / "diffusion_pytorch_model.safetensors.index.json"), original)
    _assert_same(dict(iter_tensors(tmp_path)), original)
    assert read_config(tmp_path) == {**config, "_class_name": "WanModel"}
    save_original(original, tmp_path)  # one file now: the earlier shards and index must go
    assert sorted(p.name for p in tmp_path.glob("diffusion_pytorch_model*")) == ["diffusion_pytorch_model.safetensors"]
    _assert_same(read_state_dict(tmp_path), original)


def test_reads_pipeline_folders_and_single_files(tmp_path: Path) -> None:
    model = _tiny("t2v")
    original = convert.diffusers_to_original(model.state_dict())
    save_diffusers(original, tmp_path / "pipe" / "transformer", convert.diffusers_config_to_original(model.config))
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    _assert_same(read_state_dict(tmp_path / "pipe"), original)
    assert read_config(tmp_path / "pipe")["dim"] == 24
    save_file({"model." + k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "wrapped.safetensors")
    _assert_same(read_state_dict(tmp_path / "wrapped.safetensors"), original)
    torch.save({"state_dict": original, "step": 3}, tmp_path / "train.pt")
    _assert_same(read_state_dict(tmp_path / "train.pt"), original)
    _assert_same(read_state_dict(tmp_path / "train.pt", key_format="diffusers"), dict(model.state_dict()))


def test_corrupt_and_missing_files_are_named(tmp_path: Path) -> None:
    save_file({"a": torch.randn(64, 64)}, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        read_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="nowhere"):
        read_state_dict(tmp_path / "nowhere")
    sharded = tmp_path / "sharded"
    save_original(convert.diffusers_to_original(_tiny("t2v").state_dict()), sharded, shard_size="20KB")
    gone = sorted(sharded.glob("*-of-*.safetensors"))[1]
    gone.unlink()
    with pytest.raises(CheckpointError, match=rf"{gone.name}.*index\.json"):
        read_state_dict(sharded)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("scratch", torch.zeros(1), persistent=False)

    def reset_non_persistent_buffers(self) -> None:  # what a loader calls for buffers built on meta
        self.scratch = torch.zeros(1, device="cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)) * self.scale + self.scratch


def _run(model: nn.Module) -> torch.Tensor:
    """A forward on what was loaded: a tensor left on meta fails here, not in a user's first step."""
    with torch.no_grad():
        return model(torch.linspace(-1, 1, 8).view(2, 4).to(next(model.parameters()).dtype))


def _toy_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in Toy().state_dict().items()}


def test_load_into_reports_partial_loads(tmp_path: Path) -> None:
    source = _toy_state()
    partial = {"encoder.weight": source["encoder.weight"], "encoder.bias": source["encoder.bias"],
               "extra.weight": torch.zeros(3)}
    save_file({"module." + k: v for k, v in partial.items()}, tmp_path / "partial.safetensors")
    model = Toy()
    head_before = model.head[0].weight.clone()
    report = load_into(model, tmp_path / "partial.safetensors")
    assert report.loaded == ["encoder.weight", "encoder.bias"]
    assert report.unexpected == ["extra.weight"]
    assert report.missing == ["scale", "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
    assert torch.equal(model.encoder.weight, source["encoder.weight"])
    assert torch.equal(model.head[0].weight, head_before)
    assert "loaded 2 of 7" in report.summary() and "extra.weight" in report.summary()
    assert torch.isfinite(_run(model)).all()
    with pytest.raises(CheckpointError, match="strict"):
        load_into(Toy(), partial, strict=True)


def test_load_into_refuses_no_match_and_shape_conflicts() -> None:
    with pytest.raises(CheckpointError, match="no tensor matches"):
        load_into(Toy(), {"other.weight": torch.zeros(2)})
    model = Toy()
    before = model.encoder.weight.clone()
    bad = {**_toy_state(), "head.0.weight": torch.zeros(5, 3)}
    with pytest.raises(CheckpointError, match=r"head\.0\.weight: checkpoint \[5, 3\] vs model \[2, 3\]"):
        load_into(model, bad)
    assert torch.equal(model.encoder.weight, before)  # nothing written before the check


def test_load_into_materialises_meta_models(tmp_path: Path) -> None:
    source = _toy_state()
    save_file(source, tmp_path / "toy.safetensors")
    with torch.device("meta"):
        model = Toy()
    model.encoder.requires_grad_(False)
    report = load_into(model, tmp_path / "toy.safetensors", dtype=torch.float64, strict=True)
    assert len(report.loaded) == 7 and not report.missing
    for name, tensor in model.state_dict().items():
        assert tensor.device.type == "cpu" and tensor.dtype == torch.float64, name
        assert torch.equal(tensor, source[name].double()), name
    assert not model.encoder.weight.requires_grad and model.head[0].weight.requires_grad
    assert isinstance(model.head[0].weight, nn.Parameter)
    assert model.scratch.device.type == "cpu"  # recomputed, not left on meta
    reference = Toy().double()
    reference.load_state_dict({k: v.double() for k, v in source.items()})
    assert torch.equal(_run(model), _run(reference))

    with torch.device("meta"):
        partial = Toy()
    without_head = {k: v for k, v in source.items() if not k.startswith("head.1")}
    with pytest.raises(CheckpointError, match=r"meta device.*head\.1\.weight"):
        load_into(partial, without_head)
    report = load_into(partial, without_head, init_missing=lambda name, like: torch.full(like.shape, 0.5))
    assert report.initialised == ["head.1.weight", "head.1.bias"]
    assert torch.equal(partial.head[1].bias, torch.full((2,), 0.5))
    assert torch.isfinite(_run(partial)).all()


def test_meta_buffers_nobody_recomputes_are_an_error() -> None:
    class NoReset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 2)
            self.register_buffer("table", torch.arange(2.0), persistent=False)

    with torch.device("meta"):
        model = NoReset()
    with pytest.raises(CheckpointError, match=r"table were built on meta.*NoReset"):
        load_into(model, {"proj.weight": torch.eye(2), "proj.bias": torch.zeros(2)})


def test_load_into_keeps_tied_weights_tied() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight
    load_into(model, {"0.weight": torch.eye(2), "0.bias": torch.zeros(2), "1.bias": torch.ones(2)})
    assert model[1].weight is model[0].weight and torch.equal(model[1].weight, torch.eye(2))
    assert torch.equal(model(torch.tensor([[1.0, 2.0]])), torch.tensor([[2.0, 3.0]]))


def test_load_into_converts_names_to_the_model_scheme(tmp_path: Path) -> None:
    source = _tiny("t2v", seed=3)
    save_original(convert.diffusers_to_original(source.state_dict()), tmp_path)
    target = _tiny("t2v", seed=4)
    report = load_into(target, tmp_path, strict=True)
    assert not report.missing and not report.unexpected
    _assert_same(target.state_dict(), source.state_dict())
    torch.manual_seed(0)
    x, t, text = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 32)
    with torch.no_grad():
        assert torch.equal(target(x, t, text).sample, source(x, t, text).sample)
