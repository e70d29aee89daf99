"""Unit tests for vaekit.objectives.perceptual: LPIPS against the lpips package, the VGG feature distance by
hand, fp32 under autocast, frozen eval mode, video and grayscale handling, and pretrained weights: fetched into
the hub cache the first time (served from file:// URLs here: tests never download), one line when that fails."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lpips
import pytest
import torch
import torchvision
from torch import Tensor, nn

from vaekit.config.schema import PerceptualConfig
from vaekit.objectives import perceptual
from vaekit.objectives.perceptual import (
    MissingWeightsError,
    PerceptualLoss,
    check_perceptual_weights,
    hub_weights_path,
)

# The reference lpips.LPIPS calls torchvision with the deprecated ``pretrained`` argument.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:UserWarning:torchvision.*")


@pytest.fixture(autouse=True)
def _seed_and_no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)

    real = torch.hub.download_url_to_file

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        if not url.startswith("file://"):  # the tests serve their checkpoints from file:// URLs only
            raise AssertionError(f"attempted a download of {url}")
        real(url, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def vgg_loss() -> PerceptualLoss:
    torch.manual_seed(0)
    return PerceptualLoss(PerceptualConfig(kind="vgg", pretrained=False, frames=4))


@pytest.fixture(scope="module")
def squeeze_lpips() -> PerceptualLoss:
    torch.manual_seed(0)
    return PerceptualLoss(PerceptualConfig(kind="lpips", net="squeeze", pretrained=False, frames=4))


def _images(batch: int = 2, channels: int = 3, size: int = 32) -> tuple[Tensor, Tensor]:
    return torch.rand(batch, channels, size, size), torch.rand(batch, channels, size, size)


@pytest.mark.parametrize(("net", "size"), [("squeeze", 32), ("alex", 64), ("vgg", 32)])
def test_lpips_matches_the_lpips_package_with_the_same_weights(net: str, size: int) -> None:
    ours = PerceptualLoss(PerceptualConfig(kind="lpips", net=net, pretrained=False))
    reference = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    reference.load_state_dict(ours.distance.state_dict())
    x, y = _images(size=size)
    torch.testing.assert_close(ours(x, y), reference(x, y, normalize=True).flatten())


def test_vgg_distance_matches_hand_computed_feature_errors(vgg_loss: PerceptualLoss) -> None:
    x, y = _images()
    features = vgg_loss.distance.features
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    hx, hy, expected = (x - mean) / std, (y - mean) / std, torch.zeros(2)
    for start, stop in [(0, 4), (4, 9), (9, 16), (16, 23)]:  # up to relu1_2, relu2_2, relu3_3, relu4_3
        hx, hy = features[start:stop](hx), features[start:stop](hy)
        expected = expected + ((hx - hy) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(vgg_loss(x, y), expected)


@pytest.mark.parametrize("kind", ["vgg", "lpips"])
def test_perceptual_loss_has_gradient_wrt_reconstruction(
    kind: str, vgg_loss: PerceptualLoss, squeeze_lpips: PerceptualLoss
) -> None:
    loss = vgg_loss if kind == "vgg" else squeeze_lpips
    x, y = _images()
    x.requires_grad_(True)
    loss(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["vgg", "lpips"])
def test_perceptual_loss_runs_in_fp32_under_bf16_autocast(
    kind: str, vgg_loss: PerceptualLoss, squeeze_lpips: PerceptualLoss
) -> None:
    loss = vgg_loss if kind == "vgg" else squeeze_lpips
    x, y = _images()
    expected = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = loss(x.bfloat16(), y)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, loss(x.bfloat16().float(), y))
    assert not torch.equal(expected, torch.zeros_like(expected))


def test_perceptual_loss_stays_frozen_and_in_eval_mode(squeeze_lpips: PerceptualLoss) -> None:
    parent = nn.ModuleDict({"perceptual": squeeze_lpips, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in squeeze_lpips.modules())
    assert not any(p.requires_grad for p in squeeze_lpips.parameters())


def test_grayscale_is_repeated_to_three_channels(vgg_loss: PerceptualLoss) -> None:
    x, y = _images(channels=1)
    torch.testing.assert_close(vgg_loss(x, y), vgg_loss(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_video_loss_is_mean_over_evenly_spaced_frames(vgg_loss: PerceptualLoss) -> None:
    x, y = torch.rand(2, 3, 8, 16, 16), torch.rand(2, 3, 8, 16, 16)
    per_frame = torch.stack([vgg_loss(x[:, :, t], y[:, :, t]) for t in (0, 2, 5, 7)], dim=1)  # 4 of 8 frames
    torch.testing.assert_close(vgg_loss(x, y), per_frame.mean(1))


def test_unsupported_channel_count_is_an_error(vgg_loss: PerceptualLoss) -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        vgg_loss(*_images(channels=2))


# ------------------------------------------------------------------------------ pretrained weights
@pytest.mark.parametrize(
    ("kind", "net", "file"),
    [("vgg", "vgg", "vgg16-397923af.pth"), ("lpips", "alex", "alexnet-owt-7be5be79.pth")],
)
def test_missing_weights_error_names_the_file_and_where_to_put_it(
    kind: str, net: str, file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # offline: the download is pointed at an unreachable file:// URL (tests never download), so it fails at once
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    arch, url = perceptual._BACKBONES[net]
    monkeypatch.setitem(perceptual._BACKBONES, net, (arch, f"file://{tmp_path}/unreachable/{file}"))
    cfg = PerceptualConfig(kind=kind, net=net)
    expected_path = str(tmp_path / "hub" / "checkpoints" / file)
    for attempt in (lambda: check_perceptual_weights(cfg), lambda: PerceptualLoss(cfg)):
        started = time.monotonic()
        with pytest.raises(MissingWeightsError) as error:
            attempt()
        assert time.monotonic() - started < 5
        text = str(error.value)
        assert expected_path in text and "loss.perceptual.weights_path" in text and "the download failed" in text
        assert "\n" not in text and not Path(expected_path).exists()  # no partial file left in the cache


def test_backbone_weights_are_downloaded_into_the_hub_cache_the_first_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A served checkpoint (random VGG16 weights from a file:// URL, named with its sha256 prefix as torchvision's
    are) lands in $TORCH_HOME/hub/checkpoints with its hash checked; the second build reads the cache."""
    import hashlib

    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    served = tmp_path / "served" / "vgg16.pth"
    served.parent.mkdir()
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()[:8]
    named = served.with_name(f"vgg16-{digest}.pth")
    served.rename(named)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(perceptual._BACKBONES, "vgg", ("vgg16", named.as_uri()))
    cfg = PerceptualConfig(kind="vgg")
    check_perceptual_weights(cfg)
    cached = tmp_path / "home" / "hub" / "checkpoints" / named.name
    assert cached.read_bytes() == named.read_bytes()
    named.unlink()  # from now on only the cache has it
    loss = PerceptualLoss(cfg)
    assert torch.equal(loss.distance.features[0].weight, torch.load(cached)["features.0.weight"])
    # a corrupted download (hash mismatch) is refused and removed
    cached.unlink()
    bad = tmp_path / "served" / f"vgg16-{'0' * 8}.pth"
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setitem(perceptual._BACKBONES, "vgg", ("vgg16", bad.as_uri()))
    with pytest.raises(MissingWeightsError, match="the download failed"):
        check_perceptual_weights(cfg)
    assert not (tmp_path / "home" / "hub" / "checkpoints" / bad.name).exists()


def test_missing_weights_path_is_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    missing = tmp_path / "elsewhere" / "vgg.pth"
    with pytest.raises(MissingWeightsError, match="vgg.pth"):
        check_perceptual_weights(PerceptualConfig(kind="vgg", weights_path=str(missing)))


def test_no_weights_needed_without_pretrained_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    check_perceptual_weights(PerceptualConfig(kind="none"))
    check_perceptual_weights(PerceptualConfig(kind="lpips", pretrained=False))
    check_perceptual_weights(PerceptualConfig(kind="vgg", weight=0.0))  # the term is off


def test_hub_file_names_are_torchvision_checkpoints() -> None:
    weights = {
        "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        "squeeze": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    for net, enum in weights.items():
        assert hub_weights_path(PerceptualConfig(kind="lpips", net=net)).name == os.path.basename(enum.url)


def test_lpips_pretrained_trunk_from_hub_cache_matches_lpips_loading_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = PerceptualConfig(kind="lpips", net="squeeze")
    hub_file = hub_weights_path(cfg)
    hub_file.parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), hub_file)
    ours = PerceptualLoss(cfg)
    # lpips with pnet_rand=False asks torchvision for pretrained weights, which finds the cached file.
    reference = lpips.LPIPS(net="squeeze", pnet_rand=False, verbose=False)
    x, y = _images()
    torch.testing.assert_close(ours(x, y), reference(x, y, normalize=True).flatten())


def test_vgg_pretrained_features_load_from_weights_path(tmp_path: Path) -> None:
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loss = PerceptualLoss(PerceptualConfig(kind="vgg", weights_path=str(path)))
    for key, value in loss.distance.features.state_dict().items():
        torch.testing.assert_close(value, state[f"features.{key}"])


def test_weights_file_for_another_architecture_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision state dict"):
        PerceptualLoss(PerceptualConfig(kind="lpips", net="squeeze", weights_path=str(path)))
