"""Evaluation metrics: LPIPS from user weight files (torchvision / lpips names), FVD's Fréchet distance
and feature networks, and the report every `worldtune eval` writes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from worldtune.eval.fvd import VideoFeatures, frechet_distance, fvd, gaussian
from worldtune.eval.lpips import LPIPS, alexnet_features
from worldtune.eval.report import print_and_write

# torchvision's AlexNet().features parameter shapes
ALEXNET_SHAPES = {"features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
                  "features.6.weight": (384, 192, 3, 3), "features.8.weight": (256, 384, 3, 3),
                  "features.10.weight": (256, 256, 3, 3)}


def lpips_files(tmp_path, scale: float = 1.0):
    """Random weights saved as torchvision's alexnet-owt-*.pth (whole model) and lpips' alex.pth."""
    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in alexnet_features().state_dict().items()}
    backbone["classifier.1.weight"] = torch.randn(4, 4)  # the rest of AlexNet, ignored
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * scale for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(linear, tmp_path / f"alex_{scale}.pth")
    return tmp_path / "alexnet.pth", tmp_path / f"alex_{scale}.pth"


def test_alexnet_layout_matches_torchvision_names_and_shapes():
    state = {f"features.{k}": v.shape for k, v in alexnet_features().state_dict().items()}
    assert {k: tuple(v) for k, v in state.items() if k.endswith("weight")} == ALEXNET_SHAPES


def test_lpips_is_a_distance_weighted_by_the_linear_layers(tmp_path):
    metric = LPIPS.from_files(*lpips_files(tmp_path))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    d = metric(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.equal(metric(x, x), torch.zeros(3))
    torch.testing.assert_close(metric(y, x), d)
    near = metric(x, (x + 0.05 * (y - x)))
    assert (near < d).all()  # closer images, smaller distance
    doubled = LPIPS.from_files(*lpips_files(tmp_path, scale=2.0))  # same backbone, linear weights x 2
    torch.testing.assert_close(doubled(x, y), 2 * d)
    small = metric(x[:, :, :16, :16], y[:, :, :16, :16])  # upsampled to 64 px instead of failing
    assert small.shape == (3,) and torch.isfinite(small).all()


def test_lpips_bad_files_name_the_file(tmp_path):
    backbone, linear = lpips_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS.from_files(tmp_path / "nope.pth", linear)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: no `features\.\*` weights"):
        LPIPS.from_files(tmp_path / "other.pth", linear)
    with pytest.raises(ValueError, match=r"other\.pth: missing LPIPS weights"):
        LPIPS.from_files(backbone, tmp_path / "other.pth")
    torch.save({**torch.load(linear), "lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: weights do not fit"):
        LPIPS.from_files(backbone, tmp_path / "bad.pth")


def test_frechet_distance_closed_forms():
    mu, cov = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.diag(torch.tensor([1.0, 4.0, 0.25]))
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    shift = torch.tensor([0.3, 0.0, -1.2], dtype=torch.float64)
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(float(shift.pow(2).sum()), abs=1e-9)
    other = torch.diag(torch.tensor([9.0, 1.0, 1.0]))  # diagonal: sum (sqrt a - sqrt b)^2
    expected = (1 - 3) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2
    assert frechet_distance(mu, cov, mu, other) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 videos"):
        gaussian(torch.zeros(1, 3))


class _MeanFeatures(nn.Module):
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return torch.cat([videos.mean(dim=(2, 3, 4)), videos.std(dim=(2, 3, 4))], dim=1)


class _I3DLike(nn.Module):
    def forward(self, videos: torch.Tensor, rescale: bool = True, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert not rescale and resize and return_features  # called as the I3D port must be
        return videos.mean(dim=(2, 3, 4))


@pytest.mark.parametrize("network", [_MeanFeatures, _I3DLike])
def test_fvd_from_a_torchscript_feature_network(tmp_path, network):
    path = tmp_path / "features.pt"
    torch.jit.script(network()).save(str(path))
    features = VideoFeatures(path, batch_size=3)
    g = torch.Generator().manual_seed(2)
    real = torch.rand(7, 3, 4, 8, 8, generator=g) * 2 - 1
    assert features(real).shape[0] == 7 and features(real).dtype == torch.float64
    assert fvd(real, real, features) == pytest.approx(0.0, abs=1e-6)
    assert fvd(real, (real + 0.5).clamp(-1, 1), features) > 0.05


def test_fvd_network_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="i3d.pt"):
        VideoFeatures(tmp_path / "i3d.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match=r"junk\.pt: not a TorchScript module"):
        VideoFeatures(tmp_path / "junk.pt")


def test_report_prints_the_table_and_writes_the_same_numbers(tmp_path, capsys):
    report = {"split": "test", "mse_loss": 0.5}
    path = print_and_write(report, "mse_loss 0.5", None, tmp_path, "lam_test")
    assert path == tmp_path / "eval" / "lam_test.json" and json.loads(path.read_text()) == report
    assert "mse_loss 0.5" in capsys.readouterr().out
    chosen = print_and_write(report, "t", tmp_path / "x" / "r.json", tmp_path, "lam_test")
    assert chosen == tmp_path / "x" / "r.json" and json.loads(chosen.read_text()) == report
