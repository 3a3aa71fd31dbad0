"""Frozen encoders on tiny random models: shapes, normalisation, caching, loading, errors. Offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from worldtune.models.encoders import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    ClipImageEncoder,
    EncoderLoadError,
    LatentSpace,
    PixelLatents,
    WanTextEncoder,
    WanVAE,
    clean_prompt,
    hf_clip_to_wan,
    hf_t5_to_wan,
    pad_to,
    tiny_clip,
    tiny_text_encoder,
    tiny_vae_config,
    tiny_wan_vae,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def vae21():
    return tiny_wan_vae("2.1")


@pytest.fixture(scope="module")
def vae22():
    return tiny_wan_vae("2.2")


def _video(size: int, frames: int = 9, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=gen) * 2 - 1


def _count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------------- VAE


@pytest.mark.parametrize(
    ("version", "size", "expected"),
    [("2.1", 32, (16, 3, 4, 4)), ("2.2", 32, (48, 3, 2, 2)), ("2.2", 64, (48, 3, 4, 4))],
)
def test_vae_latent_shapes(version, size, expected, vae21, vae22):
    vae = vae21 if version == "2.1" else vae22
    assert (vae.z_dim, vae.temporal_stride, vae.spatial_stride) == (
        (16, 4, 8) if version == "2.1" else (48, 4, 16)
    )
    assert vae.latent_shape(9, size, size) == expected
    z = vae.encode(_video(size))
    assert z.shape == (1, *expected) and z.dtype == torch.float32
    assert isinstance(vae, LatentSpace)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_vae_normalisation_matches_manual(version, vae21, vae22):
    vae = vae21 if version == "2.1" else vae22
    cfg = vae.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    assert mean.abs().max() > 0.1 and (std - 1).abs().max() > 0.1  # the tiny config is non-trivial
    x = _video(32)
    with torch.no_grad():
        raw = vae.vae.encode(x).latent_dist.mode()  # posterior mean, as upstream Wan
        z = vae.encode(x)
        torch.testing.assert_close(z, (raw - mean) / std, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vae.encode_raw(x), raw)
        expected = vae.vae.decode(raw).sample.clamp(-1, 1)
        torch.testing.assert_close(vae.decode(z), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_vae_round_trip_shape(version, vae21, vae22):
    vae = vae21 if version == "2.1" else vae22
    x = _video(32, batch=2)
    y = vae.decode(vae.encode(x))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1


def test_vae_tiling_and_batch_chunks():
    vae = tiny_wan_vae("2.1")
    x = F.interpolate(_video(8, batch=2), size=(9, 64, 64), mode="trilinear") * 0.9
    full = vae.encode(x)
    # A tile as large as the frame means no tiling at all: identical.
    assert torch.equal(vae.configure(tiled=True, tile_size=64, tile_stride=64).encode(x), full)
    # Real tiles: each is zero-padded at its borders, so latents near seams differ. With random tiny
    # weights the receptive field spans most of a 32 px tile (about 10 % relative error measured);
    # at real sizes (256 px tiles, 64 px overlap) the difference stays on the seams.
    tiled = vae.configure(tile_size=32, tile_stride=16).encode(x)
    assert tiled.shape == full.shape
    rel = ((tiled - full).norm() / full.norm()).item()
    assert 0 < rel < 0.25, rel
    assert vae.decode(tiled).shape == x.shape
    vae.configure(tiled=False, batch_chunk=1)
    torch.testing.assert_close(vae.encode(x), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.configure(tile_size=30)


def test_vae_rejects_bad_shapes(vae21):
    with pytest.raises(ValueError, match="1 \\+ 4"):
        vae21.encode(_video(32, frames=8))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae21.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match="16 channels"):
        vae21.decode(torch.zeros(1, 4, 2, 4, 4))


def test_vae_save_and_load(tmp_path, vae22):
    vae22.vae.save_pretrained(tmp_path / "vae")
    x = _video(32)
    for where in (tmp_path, tmp_path / "vae"):  # pipeline root or the component folder itself
        loaded = WanVAE.from_pretrained(where)
        assert loaded.z_dim == 48 and loaded.spatial_stride == 16
        torch.testing.assert_close(loaded.encode(x), vae22.encode(x))


def test_vae_original_single_file(tmp_path, vae21):
    # Diffusers-named weights pass diffusers' original->diffusers converter unchanged, which lets this
    # test run the whole single-file path (the renaming itself was checked against upstream Wan).
    torch.save(vae21.vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    loaded = WanVAE.from_pretrained(tmp_path, config=tiny_vae_config("2.1"))
    x = _video(32)
    torch.testing.assert_close(loaded.encode(x), vae21.encode(x))

    wan22 = tmp_path / "w22" / "Wan2.2_VAE.pth"
    wan22.parent.mkdir()
    torch.save({"conv1.weight": torch.zeros(96, 96, 1, 1, 1)}, wan22)
    with pytest.raises(NotImplementedError, match="Wan2.2_VAE.pth"):
        WanVAE.from_pretrained(wan22.parent)


def test_encoders_are_frozen(vae21):
    for enc in (vae21, tiny_text_encoder(), tiny_clip(), PixelLatents()):
        enc.train()
        assert not enc.training and all(not m.training for m in enc.modules())
        assert all(not p.requires_grad for p in enc.parameters())
    x = _video(32).requires_grad_(True)
    assert not vae21.encode(x).requires_grad


def test_vae_dtype_change_keeps_float32_normalisation():
    vae = tiny_wan_vae("2.2").to(dtype=torch.bfloat16)
    assert vae.dtype == torch.bfloat16 and vae._mean.dtype == torch.float32
    z = vae.encode(_video(32))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


@pytest.mark.parametrize("cls", [WanVAE, WanTextEncoder, ClipImageEncoder])
def test_missing_path_is_named(tmp_path, cls):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        cls.from_pretrained(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        cls.from_pretrained(empty)


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "Wan2.1_VAE.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderLoadError, match="Wan2.1_VAE.pth"):
        WanVAE.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ text

PROMPTS = ["a robot picks up the red cube", "the cup", ""]


def test_text_lengths_trimmed_with_eos():
    enc = tiny_text_encoder()
    embeds = enc.encode(PROMPTS)
    assert [e.shape for e in embeds] == [(8, 32), (3, 32), (1, 32)]  # words + </s>
    ids, mask = enc.tokenize(PROMPTS)
    assert ids.shape == (3, 512)
    assert ids[0, 7] == enc.tokenizer.eos_token_id and ids[0, 8] == enc.tokenizer.pad_token_id
    with torch.no_grad():
        full = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    for e, f in zip(embeds, full, strict=True):
        torch.testing.assert_close(e, f[: e.shape[0]])


def test_pad_to_exact_zeros():
    embeds = tiny_text_encoder().encode(PROMPTS)
    padded = pad_to(embeds, 512)
    assert padded.shape == (3, 512, 32)
    for e, p in zip(embeds, padded, strict=True):
        assert torch.equal(p[: e.shape[0]], e)
        assert torch.count_nonzero(p[e.shape[0] :]) == 0
    with pytest.raises(ValueError, match="more than the padded length"):
        pad_to(embeds, 4)


def test_clean_prompt_matches_upstream_whitespace_mode():
    assert clean_prompt("  a &amp;amp; b\n\t c  ") == "a & b c"
    assert clean_prompt("A  B", "lower") == "a b"


def test_text_memory_cache_avoids_second_forward():
    enc = tiny_text_encoder()
    calls = _count_forwards(enc.model)
    first = enc.encode("a robot picks up the red cube")[0]
    again = enc.encode("  a robot   picks up the red cube ")[0]  # same after cleaning
    assert calls[0] == 1 and torch.equal(first, again)
    both = enc.encode(["the cup", "the cup", "a robot picks up the red cube"])
    assert calls[0] == 2 and torch.equal(both[0], both[1]) and torch.equal(both[2], first)


def test_text_lru_evicts():
    enc = tiny_text_encoder(cache_size=1)
    calls = _count_forwards(enc.model)
    enc.encode("the cup")
    enc.encode("the cube")
    enc.encode("the cup")
    assert calls[0] == 3 and len(enc.cache) == 1


def test_text_disk_cache_round_trip(tmp_path):
    enc = tiny_text_encoder(cache_dir=tmp_path)
    first = enc.encode(PROMPTS)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
    fresh = tiny_text_encoder(cache_dir=tmp_path)
    calls = _count_forwards(fresh.model)
    again = fresh.encode(PROMPTS)
    assert calls[0] == 0 and fresh.cache.disk_hits == 3
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = tiny_text_encoder(seed=1, cache_dir=tmp_path)  # other weights: other keys
    other_calls = _count_forwards(other.model)
    other.encode(PROMPTS)
    assert other_calls[0] == 1 and len(list(tmp_path.rglob("*.safetensors"))) == 6


def test_text_save_and_load(tmp_path):
    enc = tiny_text_encoder()
    enc.model.save_pretrained(tmp_path / "pipe" / "text_encoder")
    enc.tokenizer.save_pretrained(tmp_path / "pipe" / "tokenizer")
    loaded = WanTextEncoder.from_pretrained(tmp_path / "pipe", dtype=torch.float32)
    for a, b in zip(loaded.encode(PROMPTS), enc.encode(PROMPTS), strict=True):
        torch.testing.assert_close(a, b)


def test_text_original_wan_checkpoint(tmp_path):
    enc = tiny_text_encoder()
    torch.save(hf_t5_to_wan(enc.model.state_dict()), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc.tokenizer.save_pretrained(tmp_path / "google" / "umt5-xxl")
    cfg = enc.model.config
    arch = dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff)
    arch |= dict(num_layers=cfg.num_layers, num_heads=cfg.num_heads, relative_attention_num_buckets=8)
    loaded = WanTextEncoder.from_pretrained(tmp_path, config=arch, dtype=torch.float32)
    assert loaded.model.shared.weight is loaded.model.encoder.embed_tokens.weight
    for a, b in zip(loaded.encode(PROMPTS), enc.encode(PROMPTS), strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ CLIP


def test_clip_penultimate_hidden_state():
    clip = tiny_clip()
    images = torch.rand(2, 3, 40, 48) * 2 - 1
    out = clip.encode(images)
    pixels = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False) * 0.5 + 0.5
    pixels = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip.preprocess(images), pixels)
    with torch.no_grad():
        ref = clip.model(pixel_values=pixels, output_hidden_states=True)
    assert out.shape == (2, 32 * 32 + 1, 4)
    torch.testing.assert_close(out, ref.hidden_states[-2])
    assert not torch.allclose(out, ref.last_hidden_state)
    assert tiny_clip(resize="center_crop").preprocess(images).shape == (2, 3, 32, 32)


def test_clip_loading(tmp_path):
    clip = tiny_clip()
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    clip.model.save_pretrained(tmp_path / "pipe" / "image_encoder")
    loaded = ClipImageEncoder.from_pretrained(tmp_path / "pipe", dtype=torch.float32)
    torch.testing.assert_close(loaded.encode(images), clip.encode(images))
    original = tmp_path / "wan" / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    original.parent.mkdir()
    torch.save({**hf_clip_to_wan(clip.model.state_dict()), "log_scale": torch.tensor(4.6)}, original)
    cfg = clip.model.config
    arch = dict(hidden_size=4, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
    arch |= dict(patch_size=1, image_size=32, projection_dim=4, hidden_act=cfg.hidden_act)
    loaded = ClipImageEncoder.from_pretrained(original.parent, config=arch, dtype=torch.float32)
    torch.testing.assert_close(loaded.encode(images), clip.encode(images))


# ----------------------------------------------------------------------------------------- pixel


def test_pixel_latents_identity_and_patchify():
    x = _video(16, frames=5, batch=2)
    pix = PixelLatents()
    assert (pix.z_dim, pix.temporal_stride, pix.spatial_stride) == (3, 1, 1)
    assert torch.equal(pix.encode(x), x) and torch.equal(pix.decode(pix.encode(x)), x)
    patched = PixelLatents(patch=2)
    z = patched.encode(x)
    assert z.shape == (2, 12, 5, 8, 8) == (2, *patched.latent_shape(5, 16, 16))
    assert torch.equal(z[:, ::4, :, 0, 0], x[:, :, :, 0, 0])  # channel c*4 = top-left pixel of c
    assert torch.equal(patched.decode(z), x)
    assert isinstance(patched, LatentSpace)
    with pytest.raises(ValueError, match="multiples of 2"):
        patched.encode(x[..., :15])
    # frames folded too, as Wan's VAE: frame 0 alone, then groups of 4 (48 channels, TI2V's latent width)
    timed = PixelLatents(patch=2, time_patch=4)
    z = timed.encode(x)
    assert z.shape == (2, 48, 2, 8, 8) == (2, *timed.latent_shape(5, 16, 16)) and timed.temporal_stride == 4
    assert torch.equal(z[:, 12:24, 1], patched.encode(x)[:, :, 2])  # latent 1, its 2nd frame: frame 2
    assert torch.equal(timed.decode(z), x)
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4\\*k"):
        timed.encode(x[:, :, :4])


# -------------------------------------------------------------------------------- published sizes


def test_published_sizes_on_meta():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5Config, UMT5EncoderModel

    from worldtune.models.encoders.original import CLIP_VIT_H14_CONFIG, UMT5_XXL_CONFIG

    def count(model, skip=()):
        return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))

    with init_empty_weights():
        t5 = UMT5EncoderModel(UMT5Config(**UMT5_XXL_CONFIG))
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H14_CONFIG))
        vae = AutoencoderKLWan()  # the defaults are the published Wan2.1 VAE
    # umt5-xxl encoder: 5.68 B (models_t5_umt5-xxl-enc-bf16.pth, 11.4 GB); ViT-H/14: 632 M; VAE: 127 M.
    assert count(t5, skip=("encoder.embed_tokens",)) == 5_680_910_336
    assert count(clip) == 632_076_800  # all of Wan's `visual.*`, projection head included
    assert count(vae) == 126_892_531
