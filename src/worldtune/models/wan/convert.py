"""Wan DiT weights and configs: original Wan names <-> diffusers names, exactly and both ways.

Only names change; every tensor keeps its shape and layout (both codebases store the modulation
tables as [1, 6, dim] / [1, 2, dim] and the same Conv3d / Linear weights), so a round trip returns
the very same tensor objects.

    sd = diffusers_to_original(diffusers_model.state_dict())
    names = to_original_names(raw_keys)   # wrappers stripped, format detected, renamed
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

from worldtune.utils import weight_files
from worldtune.utils.weight_files import check_unique, describe_keys

KeyFormat = Literal["original", "diffusers"]
T = TypeVar("T")

# (original, diffusers) module or parameter paths at the model's top level.
_TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("vace_patch_embedding", "vace_patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),  # flf2v
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)

# The same inside `blocks.N.` and `vace_blocks.N.`. Original norm1/norm2 are non-affine (no
# weights); its affine cross-attention norm is `norm3`, which diffusers calls `norm2`.
_ATTN = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k"))
_BLOCK_LEVEL: tuple[tuple[str, str], ...] = (
    ("modulation", "scale_shift_table"),
    *((f"self_attn.{a}", f"attn1.{b}") for a, b in _ATTN),
    *((f"cross_attn.{a}", f"attn2.{b}") for a, b in _ATTN),
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("norm3", "norm2"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("before_proj", "proj_in"),  # VACE block 0
    ("after_proj", "proj_out"),  # every VACE block
)
_BLOCK = re.compile(r"^((?:vace_)?blocks\.\d+\.)(.+)$")


def _tables(source: KeyFormat) -> tuple[dict[str, str], dict[str, str]]:
    flip = source == "diffusers"
    return ({(d if flip else o): (o if flip else d) for o, d in _TOP_LEVEL},
            {(d if flip else o): (o if flip else d) for o, d in _BLOCK_LEVEL})


class ConversionError(ValueError):
    """Keys that cannot be mapped between the two naming schemes."""


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """Longest module path of `key` found in `table`, replaced; None when nothing matches."""
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            return ".".join([table[head], *parts[cut:]])
    return None


def rename_key(key: str, source: KeyFormat) -> str | None:
    """`key` in the other naming scheme, or None when it is not a Wan DiT key."""
    top, block = _tables(source)
    match = _BLOCK.match(key)
    if match:
        renamed = _rename(match.group(2), block)
        return None if renamed is None else match.group(1) + renamed
    return _rename(key, top)


def rename_keys(keys: Iterable[str], source: KeyFormat, *, keep_unknown: bool = False) -> dict[str, str]:
    """{key: renamed} from `source` names to the other scheme; unknown keys are an error unless kept."""
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        renamed = rename_key(key, source)
        if renamed is None:
            unknown.append(key)
            renamed = key
        mapping[key] = renamed
    if unknown and not keep_unknown:
        raise ConversionError(f"{len(unknown)} {source}-named key(s) have no Wan DiT mapping: {describe_keys(unknown)}")
    _check_unique(mapping)
    return mapping


def _check_unique(mapping: Mapping[str, str]) -> None:
    try:
        check_unique(mapping)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc


def original_to_diffusers(state_dict: Mapping[str, T], *, keep_unknown: bool = False) -> dict[str, T]:
    """The same tensors under diffusers `WanTransformer3DModel` / `WanVACETransformer3DModel` names."""
    mapping = rename_keys(state_dict, "original", keep_unknown=keep_unknown)
    return {mapping[key]: value for key, value in state_dict.items()}


def diffusers_to_original(state_dict: Mapping[str, T], *, keep_unknown: bool = False) -> dict[str, T]:
    """The same tensors under the original Wan `WanModel` / `VaceWanModel` names."""
    mapping = rename_keys(state_dict, "diffusers", keep_unknown=keep_unknown)
    return {mapping[key]: value for key, value in state_dict.items()}


# ----------------------------------------------------------------------------- detection

_DIFFUSERS_MARKS = ("condition_embedder.", "scale_shift_table", ".attn1.", ".attn2.", ".ffn.net.")
_ORIGINAL_MARKS = ("time_embedding.", "text_embedding.", "time_projection.", "head.head.", "modulation",
                   ".self_attn.", ".cross_attn.", "before_proj.", "after_proj.")
# Wrappers around a whole model (DDP, torch.compile, ComfyUI / DiffSynth) and diffusers pipelines.
WRAPPER_PREFIXES = (*weight_files.WRAPPER_PREFIXES, "transformer.")


def detect_key_format(keys: Iterable[str]) -> KeyFormat:
    """"diffusers" when the keys use diffusers' Wan names, else "original".

    Keys with no Wan marks at all (any other module) count as original: they pass through unchanged.
    """
    keys = list(keys)
    diffusers = [k for k in keys if any(m in "." + k for m in _DIFFUSERS_MARKS)]
    original = [k for k in keys if any(m in "." + k for m in _ORIGINAL_MARKS)]
    if diffusers and original:
        raise ConversionError(f"keys mix original Wan names ({describe_keys(original, 3)}) and diffusers names "
                              f"({describe_keys(diffusers, 3)})")
    return "diffusers" if diffusers else "original"


def wrapper_prefix(keys: Iterable[str]) -> str:
    """The wrapper prefix shared by every key (e.g. "model.diffusion_model."), or ""."""
    return weight_files.wrapper_prefix(keys, WRAPPER_PREFIXES)


def strip_wrappers(keys: Iterable[str]) -> dict[str, str]:
    """{key: key without wrapper prefixes and per-block wrapper segments}."""
    try:
        return weight_files.strip_wrappers(keys, WRAPPER_PREFIXES)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc


def to_format_names(keys: Iterable[str], target: KeyFormat = "original") -> dict[str, str]:
    """{raw key: name in `target` format}: wrappers stripped, source format detected, renamed."""
    stripped = strip_wrappers(keys)
    source = detect_key_format(stripped.values())
    if source == target:
        return stripped
    renamed = rename_keys(stripped.values(), source)
    return {raw: renamed[name] for raw, name in stripped.items()}


def to_original_names(keys: Iterable[str]) -> dict[str, str]:
    return to_format_names(keys, "original")


# ----------------------------------------------------------------------------- configs

ORIGINAL_DEFAULTS: dict[str, Any] = {
    "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": 16, "out_dim": 16,
    "freq_dim": 256, "text_dim": 4096, "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}
ROPE_MAX_SEQ_LEN = 1024  # fixed in the original code (rope_params(1024, ...))
CLIP_IMAGE_DIM = 1280
FLF2V_IMAGE_TOKENS = 2 * 257


def is_diffusers_config(cfg: Mapping[str, Any]) -> bool:
    return "num_attention_heads" in cfg


def original_config_to_diffusers(cfg: Mapping[str, Any], *, state_dict: Mapping[str, Any] | None = None
                                 ) -> dict[str, Any]:
    """Original `config.json` keys -> diffusers keys.

    `state_dict` (original names) settles what a config cannot say: whether an i2v model has a CLIP
    image projection (Wan2.1) or not (Wan2.2), and the image / VACE input widths.
    """
    c = {**ORIGINAL_DEFAULTS, **cfg}
    dim, heads = int(c["dim"]), int(c["num_heads"])
    if dim % heads:
        raise ConversionError(f"dim {dim} is not divisible by num_heads {heads}")
    out: dict[str, Any] = {
        "_class_name": "WanTransformer3DModel", "patch_size": list(c["patch_size"]),
        "num_attention_heads": heads, "attention_head_dim": dim // heads, "in_channels": c["in_dim"],
        "out_channels": c["out_dim"], "text_dim": c["text_dim"], "freq_dim": c["freq_dim"],
        "ffn_dim": c["ffn_dim"], "num_layers": c["num_layers"], "cross_attn_norm": bool(c["cross_attn_norm"]),
        "qk_norm": "rms_norm_across_heads" if c["qk_norm"] else None, "eps": c["eps"],
        "image_dim": None, "added_kv_proj_dim": None,
        "rope_max_seq_len": c.get("rope_max_seq_len", ROPE_MAX_SEQ_LEN), "pos_embed_seq_len": None,
    }
    _image_fields(out, c, dim, state_dict)
    if c["model_type"] == "vace" or c.get("vace_layers") is not None:
        layers = c.get("vace_layers")
        out["_class_name"] = "WanVACETransformer3DModel"
        out["vace_layers"] = list(range(0, c["num_layers"], 2) if layers is None else layers)
        vace_in = c.get("vace_in_dim")
        if state_dict is not None and "vace_patch_embedding.weight" in state_dict:
            vace_in = state_dict["vace_patch_embedding.weight"].shape[1]
        out["vace_in_channels"] = c["in_dim"] if vace_in is None else vace_in
    return out


def _image_fields(out: dict[str, Any], c: Mapping[str, Any], dim: int, sd: Mapping[str, Any] | None) -> None:
    if sd is not None:
        has_image = "img_emb.proj.0.weight" in sd
        image_dim = sd["img_emb.proj.0.weight"].shape[0] if has_image else None
        tokens = sd["img_emb.emb_pos"].shape[1] if "img_emb.emb_pos" in sd else None
    else:
        has_image = c["model_type"] in ("i2v", "flf2v")
        image_dim = c.get("image_dim", CLIP_IMAGE_DIM)
        tokens = FLF2V_IMAGE_TOKENS if c["model_type"] == "flf2v" else None
    if has_image:
        # The original k_img / v_img read the projected image tokens, which are `dim` wide.
        out.update(image_dim=image_dim, added_kv_proj_dim=dim, pos_embed_seq_len=tokens)


def diffusers_config_to_original(cfg: Mapping[str, Any], *, model_type: str | None = None) -> dict[str, Any]:
    """Diffusers config keys -> original keys; `model_type` overrides the guess from the config."""
    qk = cfg.get("qk_norm", "rms_norm_across_heads")
    if qk not in (None, "rms_norm_across_heads"):
        raise ConversionError(f"qk_norm={qk!r} has no original Wan equivalent (only 'rms_norm_across_heads')")
    heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
    dim = heads * head_dim
    out: dict[str, Any] = {
        "_class_name": "WanModel", "model_type": model_type or _guess_model_type(cfg),
        "patch_size": list(cfg.get("patch_size", (1, 2, 2))), "text_len": ORIGINAL_DEFAULTS["text_len"],
        "in_dim": cfg.get("in_channels", 16), "dim": dim, "ffn_dim": cfg["ffn_dim"],
        "freq_dim": cfg.get("freq_dim", 256), "text_dim": cfg.get("text_dim", 4096),
        "out_dim": cfg.get("out_channels") or cfg.get("in_channels", 16), "num_heads": heads,
        "num_layers": cfg["num_layers"], "qk_norm": qk is not None,
        "cross_attn_norm": bool(cfg.get("cross_attn_norm", True)), "eps": cfg.get("eps", 1e-6),
    }
    if cfg.get("image_dim") is not None:
        if cfg.get("added_kv_proj_dim") not in (None, dim):
            raise ConversionError(f"added_kv_proj_dim={cfg['added_kv_proj_dim']} must equal the model width {dim}")
        out["image_dim"] = cfg["image_dim"]
    if cfg.get("vace_layers") is not None:
        out.update(_class_name="VaceWanModel", vace_layers=list(cfg["vace_layers"]),
                   vace_in_dim=cfg.get("vace_in_channels", 96))
    if cfg.get("rope_max_seq_len", ROPE_MAX_SEQ_LEN) != ROPE_MAX_SEQ_LEN:
        out["rope_max_seq_len"] = cfg["rope_max_seq_len"]  # kept so the round trip is exact
    return out


def _guess_model_type(cfg: Mapping[str, Any]) -> str:
    if cfg.get("vace_layers") is not None:
        return "vace"
    if cfg.get("image_dim") is not None:
        return "flf2v" if cfg.get("pos_embed_seq_len") else "i2v"
    in_ch, out_ch = cfg.get("in_channels", 16), cfg.get("out_channels") or cfg.get("in_channels", 16)
    if in_ch != out_ch:
        return "i2v"  # Wan2.2 I2V: conditioning latents concatenated, no CLIP projection
    # Wan2.2 TI2V-5B is the released text/image model on the 48-channel Wan2.2 VAE.
    return "ti2v" if in_ch == 48 else "t2v"
