"""Masked IDM model: published size on meta, upstream state-dict names, tiny forward shapes, the
straight-through mask's gradients, normalisation, and loading upstream-format checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worldtune.models.idm import IDM, IDMConfig, MaskUNet, load_idm_state, straight_through

SIZE = 64


def make_model(seed: int = 0, output_dim: int = 14, **overrides) -> IDM:
    torch.manual_seed(seed)
    return IDM.tiny(output_dim, **overrides)


def frames(batch: int = 2, height: int = SIZE, width: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def random_stats(dim: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.1


# ----------------------------------------------------------------------------- published size

def test_published_parameter_count_on_meta():
    with torch.device("meta"):
        model = IDM.published()
    count = sum(p.numel() for p in model.parameters())
    print(f"published IDM parameters: {count:,}")
    assert 91_500_000 < count < 93_500_000  # the paper's "92M"
    unet = sum(p.numel() for p in model.model.mask_model.parameters())
    resnet = sum(p.numel() for p in model.model.resnet_model.parameters())
    assert unet + resnet == count
    assert 23_000_000 < resnet < 24_000_000  # a ResNet-50 body with a 14-wide head


# Names and shapes read from upstream's code (`idm/idm/{idm,unet,resnet}.py`): `idm.pt` loads only
# if these hold.
UPSTREAM_SHAPES = {
    "train_mean": (14,),
    "train_std": (14,),
    "model.mask_model.in_conv.0.weight": (64, 3, 3, 3),
    "model.mask_model.in_conv.4.running_var": (64,),
    "model.mask_model.downs.0.1.0.weight": (128, 64, 3, 3),
    "model.mask_model.downs.4.1.3.weight": (1024, 1024, 3, 3),
    "model.mask_model.ups.0.conv.0.weight": (1024, 2048, 3, 3),
    "model.mask_model.ups.0.conv.3.weight": (512, 1024, 3, 3),
    "model.mask_model.ups.4.conv.0.weight": (64, 128, 3, 3),
    "model.mask_model.ups.4.conv.4.bias": (64,),
    "model.mask_model.out.weight": (1, 64, 1, 1),
    "model.mask_model.out.bias": (1,),
    "model.resnet_model.conv1.0.weight": (64, 3, 7, 7),
    "model.resnet_model.conv1.1.num_batches_tracked": (),
    "model.resnet_model.conv2_x.0.residual_function.0.weight": (64, 64, 1, 1),
    "model.resnet_model.conv2_x.0.residual_function.2.weight": (64, 64, 3, 3),
    "model.resnet_model.conv2_x.0.residual_function.5.weight": (256, 64, 1, 1),
    "model.resnet_model.conv2_x.0.residual_function.6.weight": (256,),
    "model.resnet_model.conv2_x.0.shortcut.0.weight": (256, 64, 1, 1),
    "model.resnet_model.conv3_x.3.residual_function.6.bias": (512,),
    "model.resnet_model.conv4_x.5.residual_function.2.weight": (256, 256, 3, 3),
    "model.resnet_model.conv5_x.0.shortcut.1.weight": (2048,),
    "model.resnet_model.fc.weight": (14, 2048),
    "model.resnet_model.fc.bias": (14,),
}


def test_published_state_dict_names_match_upstream():
    with torch.device("meta"):
        state = IDM.published().state_dict()
    assert {k: tuple(state[k].shape) for k in UPSTREAM_SHAPES if k in state} == UPSTREAM_SHAPES
    assert not any(k.startswith("model.mask_model.ups.0.up") for k in state)  # upsampling has no weights
    # identity shortcuts hold nothing, as upstream's empty Sequential
    assert "model.resnet_model.conv2_x.1.shortcut.0.weight" not in state
    assert sum(k.endswith("shortcut.0.weight") for k in state) == 4


def test_nine_dim_variant_and_config_checks():
    with torch.device("meta"):
        model = IDM.published(output_dim=9)
    assert model.model.resnet_model.fc.weight.shape == (9, 2048) and model.train_mean.shape == (9,)
    with pytest.raises(ValueError, match="resnet_blocks"):
        IDM(IDMConfig.tiny(resnet_blocks=(1, 1, 1)))


# ----------------------------------------------------------------------------- tiny forward

def test_tiny_forward_shapes():
    model = make_model().eval()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    x = frames(batch=3)
    with torch.no_grad():
        actions = model(x)
        actions_again, mask = model(x, return_mask=True)
    assert actions.shape == (3, 14) and mask.shape == (3, 1, SIZE, SIZE)
    assert torch.equal(actions, actions_again)
    assert mask.min() >= 0 and mask.max() <= 1
    assert torch.equal(model.mask(x), mask)


def test_unet_resizes_to_odd_skips_and_rejects_tiny_frames():
    unet = MaskUNet(3, 1, base_channel=4, num_layers=3).eval()
    with torch.no_grad():
        assert unet(frames(height=45, width=70)).shape == (2, 1, 45, 70)
    with pytest.raises(ValueError, match="at least 8x8"):
        unet(frames(height=6, width=32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        make_model()(torch.randn(2, 1, SIZE, SIZE))


# ----------------------------------------------------------------------------- straight-through mask

def test_straight_through_value_is_hard_and_gradient_is_soft():
    x = torch.randn(2, 3, 4, 4)
    mask = torch.rand(2, 1, 4, 4, requires_grad=True)
    out = straight_through(x, mask)
    assert torch.equal(out, x * (mask >= 0.5).float())
    (grad,) = torch.autograd.grad(out.sum(), mask)
    assert torch.allclose(grad, x.sum(dim=1, keepdim=True))  # d/dm of x * m


def test_mask_gets_gradient_from_each_loss_term():
    model = make_model().train()
    predicted, mask = model.forward_normalized(frames(), return_mask=True)
    huber = F.smooth_l1_loss(predicted, model.normalize(torch.randn(2, 14)))
    mask_l1 = mask.abs().mean()
    unet = list(model.model.mask_model.parameters())
    resnet = list(model.model.resnet_model.parameters())

    for name, term in (("huber", huber), ("mask_l1", mask_l1)):
        grads = torch.autograd.grad(term, unet, retain_graph=True, allow_unused=True)
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        # every U-Net layer's weight moves, down to the input conv
        assert grads[0].abs().sum() > 0 and grads[-2].abs().sum() > 0, name

    # the regressor learns from the regression term only
    assert torch.autograd.grad(huber, resnet[0], retain_graph=True)[0].abs().sum() > 0
    assert all(g is None for g in torch.autograd.grad(mask_l1, resnet, allow_unused=True))


# ----------------------------------------------------------------------------- normalisation

def test_normalize_denormalize_round_trip_and_forward_units():
    model = make_model().eval()
    mean, std = random_stats(14)
    model.set_normalization(mean, std)
    actions = torch.randn(5, 14) * 3
    assert torch.allclose(model.denormalize(model.normalize(actions)), actions, atol=1e-5)
    assert torch.allclose(model.normalize(mean.expand(5, 14)), torch.zeros(5, 14))
    x = frames()
    with torch.no_grad():
        raw = model.forward_normalized(x)
        assert torch.allclose(model(x), raw * std + mean)


def test_set_normalization_rejects_bad_statistics():
    model = make_model()
    with pytest.raises(ValueError, match="output_dim 14"):
        model.set_normalization(torch.zeros(9), torch.ones(9))
    with pytest.raises(ValueError, match="> 0"):
        model.set_normalization(torch.zeros(14), torch.zeros(14))
    with pytest.raises(ValueError, match="not finite"):
        model.set_normalization(torch.full((14,), float("nan")), torch.ones(14))


# ----------------------------------------------------------------------------- loading

def _trained_like(seed: int = 0, output_dim: int = 14) -> IDM:
    """A tiny model whose weights, BN statistics and action statistics all differ from a fresh one."""
    model = make_model(seed, output_dim).train()
    with torch.no_grad():
        model(frames(batch=4, seed=seed + 10))  # moves the BN running statistics
    model.set_normalization(*random_stats(output_dim, seed))
    return model.eval()


def _assert_same_state(a: IDM, b: IDM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["upstream", "plain", "ddp"])
def test_state_dict_round_trip_through_file(tmp_path, wrap):
    source = _trained_like()
    state = source.state_dict()
    payload = {
        "upstream": {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}, "epoch": 3},
        "plain": state,
        "ddp": {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "idm.pt"
    torch.save(payload, path)
    target = load_idm_state(make_model(seed=5), path)
    _assert_same_state(source, target)
    x = frames()
    with torch.no_grad():
        assert torch.equal(source(x), target.eval()(x))


def test_load_into_meta_model():
    source = _trained_like()
    with torch.device("meta"):
        target = IDM.tiny()
    load_idm_state(target, {"model_state_dict": source.state_dict()})
    assert not any(t.is_meta for t in target.state_dict().values())
    _assert_same_state(source, target)
    x = frames()
    with torch.no_grad():  # what was built on meta runs, and as the source does
        assert torch.equal(source.eval()(x), target.eval()(x))


def test_key_mismatch_error_names_file(tmp_path):
    state = _trained_like().state_dict()
    del state["model.mask_model.out.bias"]
    state["model.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "broken_idm.pt"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(ValueError) as info:
        load_idm_state(make_model(), path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1): model.mask_model.out.bias" in message
    assert "unexpected keys (1): model.extra_head.weight" in message


def test_shape_and_output_dim_mismatch_errors(tmp_path):
    wide = tmp_path / "wide.pt"
    torch.save({"model_state_dict": make_model(unet_base_channels=16).state_dict()}, wide)
    with pytest.raises(ValueError, match=r"(?s)wide\.pt.*shape mismatches.*model\.mask_model\.in_conv\.0\.weight"):
        load_idm_state(make_model(), wide)

    franka = tmp_path / "franka_9_out.pt"
    torch.save({"model_state_dict": make_model(output_dim=9).state_dict()}, franka)
    with pytest.raises(ValueError, match=r"franka_9_out\.pt: output_dim mismatch: the checkpoint has output_dim 9, "
                                         r"the model has output_dim 14"):
        load_idm_state(make_model(), franka)

    with pytest.raises(ValueError, match=r"missing\.pt: no such file"):
        load_idm_state(make_model(), tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pt: not a readable IDM checkpoint"):
        load_idm_state(make_model(), garbage)
