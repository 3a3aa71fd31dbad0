"""Original Wan text / image encoder checkpoints <-> transformers key names.

The Wan releases ship their own module layouts (`wan/modules/t5.py`, `wan/modules/clip.py`):
`models_t5_umt5-xxl-enc-bf16.pth` (umt5-xxl encoder) and
`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (open-clip XLM-R ViT-H/14; only its
`visual.*` half is used by Wan i2v). The weights are the same numbers as `UMT5EncoderModel` and
`CLIPVisionModelWithProjection`; only names (and CLIP's fused qkv / transposed head) differ.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"
WAN_CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"

# `umt5_xxl` in wan/modules/t5.py, in UMT5Config terms (dropout is off: the encoder is frozen).
UMT5_XXL_CONFIG = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    tie_word_embeddings=False,
)

# `clip_xlm_roberta_vit_h_14` (vision half) in wan/modules/clip.py, in CLIPVisionConfig terms.
CLIP_VIT_H14_CONFIG = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1024,
)

# ---------------------------------------------------------------------------------------- T5

_T5_NAMES = [
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    (
        "blocks.{i}.pos_embedding.embedding.weight",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
]


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _rename(state: Mapping[str, torch.Tensor], pairs, what: str) -> dict[str, torch.Tensor]:
    rules = [(_pattern(src), dst) for src, dst in pairs]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, dst in rules:
            match = pattern.match(key)
            if match:
                out[dst.replace("{i}", match.groupdict().get("i") or "")] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in a {what} state dict")
    return out


def wan_t5_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan T5 encoder keys -> `UMT5EncoderModel` keys (embedding written under both names)."""
    out = _rename(state, _T5_NAMES, "Wan T5 encoder")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def hf_t5_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`UMT5EncoderModel` keys -> original Wan T5 encoder keys."""
    state = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
    return _rename(state, [(hf, wan) for wan, hf in _T5_NAMES], "UMT5 encoder")


# -------------------------------------------------------------------------------------- CLIP

_CLIP_NAMES = [
    ("visual.patch_embedding.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.pre_norm.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.pre_norm.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.post_norm.weight", "vision_model.post_layernorm.weight"),
    ("visual.post_norm.bias", "vision_model.post_layernorm.bias"),
]
for _p in ("weight", "bias"):
    _CLIP_NAMES += [
        (f"visual.transformer.{{i}}.norm1.{_p}", f"vision_model.encoder.layers.{{i}}.layer_norm1.{_p}"),
        (f"visual.transformer.{{i}}.norm2.{_p}", f"vision_model.encoder.layers.{{i}}.layer_norm2.{_p}"),
        (
            f"visual.transformer.{{i}}.attn.proj.{_p}",
            f"vision_model.encoder.layers.{{i}}.self_attn.out_proj.{_p}",
        ),
        (f"visual.transformer.{{i}}.mlp.0.{_p}", f"vision_model.encoder.layers.{{i}}.mlp.fc1.{_p}"),
        (f"visual.transformer.{{i}}.mlp.2.{_p}", f"vision_model.encoder.layers.{{i}}.mlp.fc2.{_p}"),
    ]
_QKV = re.compile(r"^visual\.transformer\.(\d+)\.attn\.to_qkv\.(weight|bias)$")
_QKV_HF = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def wan_clip_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vision half of the original Wan CLIP file -> `CLIPVisionModelWithProjection` keys.

    Text-tower keys (`textual.*`, `log_scale`) are dropped: Wan i2v only runs the vision tower.
    """
    out: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("visual."):
            continue
        if match := _QKV.match(key):
            layer, kind = match.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"vision_model.encoder.layers.{layer}.self_attn.{name}_proj.{kind}"] = part
        elif key == "visual.cls_embedding":
            out["vision_model.embeddings.class_embedding"] = value.reshape(-1)
        elif key == "visual.pos_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = value.reshape(value.shape[-2:])
        elif key == "visual.head":
            out["visual_projection.weight"] = value.t()
        else:
            rest[key] = value
    out.update(_rename(rest, _CLIP_NAMES, "Wan CLIP visual"))
    return out


def hf_clip_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`CLIPVisionModel(WithProjection)` keys -> original Wan CLIP `visual.*` keys."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if match := _QKV_HF.match(key):
            layer, name, kind = match.groups()
            qkv.setdefault((layer, kind), {})[name] = value
        elif key == "vision_model.embeddings.class_embedding":
            out["visual.cls_embedding"] = value.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = value.unsqueeze(0)
        elif key == "visual_projection.weight":
            out["visual.head"] = value.t()
        else:
            rest[key] = value
    for (layer, kind), parts in qkv.items():
        out[f"visual.transformer.{layer}.attn.to_qkv.{kind}"] = torch.cat([parts[n] for n in "qkv"])
    out.update(_rename(rest, [(hf, wan) for wan, hf in _CLIP_NAMES], "CLIP vision"))
    return out
