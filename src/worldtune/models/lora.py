"""LoRA on plain nn.Modules through `peft`, with export in peft and ComfyUI naming.

`add_lora` injects peft LoRA layers in place (`peft.inject_adapter_in_model`), so the model stays a
plain nn.Module: no PeftModel wrapper, no `base_model.model.` prefix. While LoRA is attached, an
adapted linear's own weight is named `<module>.base_layer.weight` (peft's layer wraps it) and the
adapter weights `<module>.lora_A.<adapter>.weight`; the trainer selects them with `*lora_*`.
`merge_lora` folds the adapters into the base weights and restores plain nn.Linear modules, so
the key set is the original one again.

Two file formats, both safetensors:

- **peft**: keys as `PeftModel.save_pretrained` writes them (`base_model.model.<module>.lora_A.weight`,
  no adapter name) in `adapter_model.safetensors`, beside an `adapter_config.json`.
- **comfyui**: `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` plus a 0-d `.alpha` per
  module. ComfyUI's loader scales each delta by `alpha / rank` when `.alpha` is present and by 1.0
  when absent, so we always write `.alpha` = our `lora_alpha`: the file then means exactly what our
  model computes, whatever rank and alpha were trained with.

Loading accepts either format (and `lora_down`/`lora_up` names); when the file's scale differs
from the model's, the difference is folded into `lora_B` so outputs match the file's meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from worldtune.utils.weight_files import read_state_dict, save_safetensors

PEFT_PREFIX = "base_model.model."
COMFY_PREFIX = "diffusion_model."
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_INITS = {"default": True, "random": False}  # other strings ("gaussian", "pissa", ...) go to peft as is
_ALIASES = {".lora_down.weight": ".lora_A.weight", ".lora_up.weight": ".lora_B.weight"}


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (an OmegaConf-friendly config section)."""

    rank: int = 16
    alpha: float = 16.0  # the delta is scaled by alpha / rank
    dropout: float = 0.0
    # Module-name suffixes (peft matching: a name equal to one, or ending in "." + one).
    target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "ffn.0", "ffn.2"])
    # A regex of module names (full match) that get no adapter, e.g. VACE-E's branch and VACE blocks.
    exclude_modules: str | None = None
    # "default": Kaiming A, zero B, so the model is unchanged at start; "random": nonzero B (tests);
    # any other peft `init_lora_weights` string ("gaussian", "pissa", ...) is passed through.
    init: str = "default"
    adapter_name: str = "default"


@dataclass
class LoraLoadReport:
    path: str
    format: str  # "peft" | "comfyui"
    loaded: list[str]
    missing: list[str]  # adapter keys of the model that the file did not have
    unexpected: list[str]  # file keys the model has no place for


def add_lora(model: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Inject LoRA layers in place. peft freezes every non-LoRA parameter (requires_grad=False)."""
    s = settings or LoraSettings()
    if s.rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {s.rank}")
    if s.adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"model already has a LoRA adapter named {s.adapter_name!r}")
    config = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                        target_modules=list(s.target_modules), exclude_modules=s.exclude_modules,
                        init_lora_weights=_INITS.get(s.init, s.init))
    try:
        return inject_adapter_in_model(config, model, adapter_name=s.adapter_name)
    except ValueError as err:
        raise ValueError(f"LoRA targets {list(s.target_modules)} matched no usable module: {err}") from err


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def lora_modules(model: nn.Module) -> list[str]:
    """Names of the modules carrying LoRA, in model order."""
    return [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def lora_state_dict(model: nn.Module, state_dict: dict | None = None, adapter_name: str = "default") -> dict:
    """Adapter weights in peft naming (`<module>.lora_A.weight`, no adapter name), detached.

    Pass `state_dict` when the model's own is not plain tensors (a gathered FSDP state dict)."""
    if adapter_name not in getattr(model, "peft_config", {}):
        raise ValueError(f"model has no LoRA adapter {adapter_name!r}; call add_lora first")
    state = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=adapter_name)
    return {k: v.detach() for k, v in state.items()}


def base_state_dict(model: nn.Module) -> dict:
    """The base weights under their original names while LoRA is attached (adapters left out)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def to_comfyui(state: dict, alpha: float | dict[str, float] | None = None) -> dict:
    """peft-named adapter weights -> ComfyUI naming; `alpha` (one value or per module) adds `.alpha`."""
    out = {COMFY_PREFIX + k: v for k, v in state.items()}
    if alpha is not None:
        for module in sorted({k.rsplit(".lora_", 1)[0] for k in state}):
            value = alpha[module] if isinstance(alpha, dict) else alpha
            out[f"{COMFY_PREFIX}{module}.alpha"] = torch.tensor(float(value))
    return out


def from_comfyui(state: dict) -> tuple[dict, dict[str, float]]:
    """ComfyUI-named weights -> (peft-named weights, {module: alpha} for modules with `.alpha`)."""
    weights, alphas = {}, {}
    for key, value in state.items():
        if not key.startswith(COMFY_PREFIX):
            raise ValueError(f"not a ComfyUI diffusion-model LoRA key: {key!r}")
        key = key[len(COMFY_PREFIX):]
        if key.endswith(".alpha"):
            alphas[key[: -len(".alpha")]] = float(value)
            continue
        for old, new in _ALIASES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        weights[key] = value
    return weights, alphas


def save_lora(model: nn.Module, path: str | Path, format: str = "peft", adapter_name: str = "default",
              dtype: torch.dtype | None = None) -> Path:
    """Write the adapter; returns the safetensors file written.

    peft: `path` is a directory (`adapter_model.safetensors` + `adapter_config.json`) or a
    `.safetensors` file with `adapter_config.json` beside it. comfyui: `path` is the file."""
    state = {k: (v.to(dtype) if dtype else v).contiguous().cpu() for k, v in lora_state_dict(
        model, adapter_name=adapter_name).items()}
    config = model.peft_config[adapter_name]
    path = Path(path)
    if format == "comfyui":
        file, tensors = path, to_comfyui(state, _module_alphas(model, adapter_name))
    elif format == "peft":
        file = path if path.suffix == ".safetensors" else path / WEIGHTS_NAME
        tensors = {PEFT_PREFIX + k: v for k, v in state.items()}
    else:
        raise ValueError(f"unknown LoRA format {format!r}; use 'peft' or 'comfyui'")
    file.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, file, metadata={"format": "pt"})
    if format == "peft":
        config.save_pretrained(str(file.parent))
    return file


def load_lora(model: nn.Module, path: str | Path, adapter_name: str = "default",
              strict: bool = False) -> LoraLoadReport:
    """Load a peft or ComfyUI LoRA file (or a peft directory) into `model`.

    A model without LoRA gets layers matching the file (rank from the weights). Raises ValueError
    naming the file when no key matches, shapes conflict, or (strict) keys are missing/unexpected."""
    file = _resolve(Path(path))
    raw = _read(file)
    fmt, state, file_scale = _normalise(file, raw)
    if not _ranks(state):
        raise ValueError(f"{file}: no LoRA weights (<module>.lora_A.weight / .lora_B.weight) in this file")
    if adapter_name not in getattr(model, "peft_config", {}):
        try:
            add_lora(model, _settings_from_file(file, state, file_scale, adapter_name))
        except ValueError as err:
            raise ValueError(f"{file}: cannot attach its LoRA to the model: {err}") from err
    expected = lora_state_dict(model, adapter_name=adapter_name)
    matched = sorted(k for k in state if k in expected)
    if not matched:
        raise ValueError(f"{file}: none of its {len(state)} LoRA keys match the model "
                         f"(file: {sorted(state)[:3]}, model: {sorted(expected)[:3]})")
    conflicts = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in matched if state[k].shape != expected[k].shape]
    if conflicts:
        raise ValueError(f"{file}: LoRA shapes conflict with the model (rank differs?): " + "; ".join(conflicts[:5]))
    report = LoraLoadReport(str(file), fmt, matched, sorted(set(expected) - set(state)),
                            sorted(set(state) - set(expected)))
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{file}: missing LoRA keys {report.missing[:5]}, unexpected {report.unexpected[:5]}")
    subset = {k: _fold_scale(model, k, state[k], file_scale, adapter_name) for k in matched}
    set_peft_model_state_dict(model, subset, adapter_name=adapter_name)
    return report


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain base layers back, in place."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def merge_lora_weights(weights: dict[str, torch.Tensor], scale: float,
                       adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A LoRA model's state dict (peft-injected names) merged into plain original names, without a
    model: `X.weight = X.base_layer.weight + scale * B @ A` (used to export checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    marker_a, marker_b = f".lora_A.{adapter_name}.weight", f".lora_B.{adapter_name}.weight"
    for key, value in weights.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            module, _, leaf = key.partition(".base_layer.")
            if leaf == "weight" and module + marker_a in weights:
                a, b = weights[module + marker_a].float(), weights[module + marker_b].float()
                value = (value.float() + scale * (b @ a)).to(value.dtype)
            key = f"{module}.{leaf}"
        out[key] = value
    return out


# ---------------------------------------------------------------------- helpers


def _module_alphas(model: nn.Module, adapter_name: str) -> dict[str, float]:
    """Per module, the alpha that gives our scaling under ComfyUI's `alpha / rank` rule."""
    return {name: m.scaling[adapter_name] * m.r[adapter_name] for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and adapter_name in m.scaling}


def _resolve(path: Path) -> Path:
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    return path


def _read(file: Path) -> dict:
    """Every tensor of an adapter file (safetensors, or peft's older `adapter_model.bin`), through the one
    weight reader: a bad file is a CheckpointError, a ValueError naming it."""
    return read_state_dict(file)


def _normalise(file: Path, raw: dict) -> tuple[str, dict, dict[str, float]]:
    """(format, peft-named weights, {module: scale the file means}) for either format."""
    if any(k.startswith(COMFY_PREFIX) for k in raw):
        if not all(k.startswith(COMFY_PREFIX) for k in raw):
            raise ValueError(f"{file}: mixes {COMFY_PREFIX!r} keys with others; not a diffusion-model LoRA")
        state, alphas = from_comfyui(raw)
        ranks = _ranks(state)
        # ComfyUI's rule: alpha / rank with `.alpha`, 1.0 without.
        return "comfyui", state, {m: alphas[m] / r if m in alphas else 1.0 for m, r in ranks.items()}
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()}
    config_file = file.parent / CONFIG_NAME
    scale: dict[str, float] = {}
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        alpha, rslora = config.get("lora_alpha"), config.get("use_rslora", False)
        if alpha is not None:
            scale = {m: alpha / (math.sqrt(r) if rslora else r) for m, r in _ranks(state).items()}
    return "peft", state, scale


def _ranks(state: dict) -> dict[str, int]:
    return {k[: -len(".lora_A.weight")]: v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}


def _settings_from_file(file: Path, state: dict, scale: dict[str, float], adapter_name: str) -> LoraSettings:
    ranks = _ranks(state)
    if len(set(ranks.values())) != 1:
        raise ValueError(f"{file}: modules have different ranks {sorted(set(ranks.values()))}; "
                         "call add_lora with matching settings before load_lora")
    rank = next(iter(ranks.values()))
    scales = set(scale.values()) or {1.0}
    alpha = next(iter(scales)) * rank if len(scales) == 1 else float(rank)
    # Full module names: peft matches a target equal to the name, so nothing else is adapted.
    return LoraSettings(rank=rank, alpha=alpha, target_modules=sorted(ranks), adapter_name=adapter_name)


def _fold_scale(model: nn.Module, key: str, value: torch.Tensor, file_scale: dict[str, float],
                adapter_name: str) -> torch.Tensor:
    """lora_B times (file's scale / model's scale), so that the model computes what the file means."""
    module = key.rsplit(".lora_", 1)[0]
    if not key.endswith(".lora_B.weight") or module not in file_scale:
        return value
    ratio = file_scale[module] / model.get_submodule(module).scaling[adapter_name]
    return value if math.isclose(ratio, 1.0, rel_tol=1e-9) else value * ratio
