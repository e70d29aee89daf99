"""Perceptual losses for images and video (``loss.perceptual``): LPIPS and a VGG16 feature distance.

Owns building the frozen backbone from pretrained weights: ``loss.perceptual.weights_path`` pins a local file;
otherwise the torchvision checkpoint in the torch hub cache, downloaded there the first time (with a progress
bar, checked against the hash in its file name) where the machine can reach download.pytorch.org. The check
(``check_perceptual_weights``, called by the CLI before training) fetches it; offline, the one-line error says
what to fetch and where to put it. Also the input handling: [0, 1] images, grayscale repeated to RGB, video clips
folded into the batch, always fp32.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vaekit.config.schema import PerceptualConfig
from vaekit.errors import MissingWeightsError

# Torchvision architecture and IMAGENET1K_V1 checkpoint of each backbone; the file name is the hub cache's.
# (torchvision and lpips are imported only when a loss is built: they take seconds to import.)
_BACKBONES: dict[str, tuple[str, str]] = {
    "vgg": ("vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "squeeze": ("squeezenet1_1", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in torchvision's vgg16().features


def _backbone(cfg: PerceptualConfig) -> str:
    return "vgg" if cfg.kind == "vgg" else cfg.net


def hub_weights_path(cfg: PerceptualConfig) -> Path:
    """Where the torch hub cache keeps the backbone's torchvision checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    url = _BACKBONES[_backbone(cfg)][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def perceptual_weights_path(cfg: PerceptualConfig) -> Path:
    """The file the pretrained backbone is loaded from: ``weights_path`` if set, else the hub cache's."""
    return Path(cfg.weights_path) if cfg.weights_path else hub_weights_path(cfg)


def _missing_weights_error(cfg: PerceptualConfig, path: Path, reason: str | None = None) -> MissingWeightsError:
    arch, url = _BACKBONES[_backbone(cfg)]
    why = f"the download failed ({reason})" if reason else "vaekit does not download a pinned weights_path"
    return MissingWeightsError(
        f"loss.perceptual.kind={cfg.kind} needs pretrained {arch} weights, expected at {path} (not found); "
        f"{why}. Fetch {url} and either put it at {hub_weights_path(cfg)} "
        "(the torch hub cache; TORCH_HOME moves it) or anywhere and set loss.perceptual.weights_path=<file>. "
        "(loss.perceptual.pretrained=false uses a random backbone: tests only, the loss is then meaningless.)"
    )


def download_weights(cfg: PerceptualConfig, timeout_s: float = 20.0) -> Path:
    """Fetch the backbone's torchvision checkpoint into the torch hub cache (progress bar on stderr, sha256
    prefix of the file name checked), or raise the one-line ``MissingWeightsError`` naming what to fetch."""
    import socket

    url = _BACKBONES[_backbone(cfg)][1]
    target = hub_weights_path(cfg)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # an unreachable host fails in seconds instead of hanging
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=_hash_prefix(url), progress=True)
    except (OSError, RuntimeError, ValueError) as err:  # URLError, timeouts, a hash mismatch
        target.unlink(missing_ok=True)
        text = str(getattr(err, "reason", None) or err).strip().splitlines()
        raise _missing_weights_error(cfg, target, (text[0] if text else type(err).__name__)[:160]) from None
    finally:
        socket.setdefaulttimeout(previous)
    return target


def _hash_prefix(url: str) -> str | None:
    match = re.search(r"-([a-f0-9]{6,})\.", os.path.basename(url))
    return match.group(1) if match else None


def check_perceptual_weights(cfg: PerceptualConfig, download: bool = True) -> None:
    """Make sure the configured perceptual term's pretrained weights are on disk: a pinned ``weights_path`` must
    exist; the hub cache's file is downloaded the first time (``download``). Raises ``MissingWeightsError``.

    A term that is off (``kind: none`` or ``weight: 0``) or uses a random backbone needs none.
    """
    if cfg.kind == "none" or cfg.weight == 0 or not cfg.pretrained:
        return
    path = perceptual_weights_path(cfg)
    if path.is_file():
        return
    if cfg.weights_path or not download:
        raise _missing_weights_error(cfg, path)
    download_weights(cfg)


def _load_features(
    module: nn.Module, state: dict[str, Tensor], feature_key: Callable[[str], str], path: Path
) -> None:
    """Load ``features.*`` entries of a torchvision state dict into ``module``; every key of ``module`` must be found."""
    wanted = {key: "features." + feature_key(key) for key in module.state_dict()}
    missing = sorted(source for source in wanted.values() if source not in state)
    if missing:
        raise ValueError(f"{path} is not a torchvision state dict for this backbone: missing {missing[:4]}")
    module.load_state_dict({key: state[source] for key, source in wanted.items()})


def _build_lpips(net: str, state: dict[str, Tensor] | None, path: Path) -> nn.Module:
    """LPIPS with the package's linear layers and a random trunk, then the trunk's weights from ``state``."""
    import lpips

    with warnings.catch_warnings():
        # lpips calls torchvision with the deprecated ``pretrained=False``.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if state is not None:
        # lpips splits torchvision's ``features`` into slices whose children keep their original indices.
        _load_features(model.net, state, lambda key: key.split(".", 1)[1], path)
    return model


class VGGFeatureDistance(nn.Module):
    """Feature reconstruction loss (Johnson et al. 2016) on VGG16 at relu1_2, relu2_2, relu3_3, relu4_3.

    Per layer the squared error of the features averaged over (C, H, W), summed over layers.
    """

    def __init__(self, state: dict[str, Tensor] | None, path: Path) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs as vgg_cfgs
        from torchvision.models.vgg import make_layers as vgg_make_layers

        self.features = vgg_make_layers(vgg_cfgs["D"])[: _VGG_TAPS[-1] + 1]
        if state is not None:
            _load_features(self.features, state, lambda key: key, path)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x, y``: ``(N, 3, H, W)`` in [0, 1]. Returns ``(N,)``."""
        h = torch.cat([x, y]).sub(self.mean).div(self.std)  # (2N, 3, H, W)
        distance = x.new_zeros(x.shape[0])
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in _VGG_TAPS:
                hx, hy = h.chunk(2)
                distance = distance + (hx - hy).pow(2).mean((1, 2, 3))
        return distance


class PerceptualLoss(nn.Module):
    """Frozen perceptual distance between reconstructions and targets, per sample.

    Inputs are images ``(B, C, H, W)`` or clips ``(B, C, T, H, W)`` in [0, 1] with C = 1 or 3. Clips contribute
    ``cfg.frames`` evenly spaced frames each (deterministic), and their loss is the mean over those frames.
    The module always runs in fp32 (autocast is disabled inside) and stays in eval mode.
    """

    def __init__(self, cfg: PerceptualConfig) -> None:
        super().__init__()
        if cfg.kind == "none":
            raise ValueError("PerceptualLoss needs loss.perceptual.kind=vgg or lpips (got none)")
        path = perceptual_weights_path(cfg)
        if cfg.pretrained and not path.is_file():
            if cfg.weights_path:
                raise _missing_weights_error(cfg, path)
            download_weights(cfg)
        state = torch.load(path, map_location="cpu", weights_only=True) if cfg.pretrained else None
        self.kind = cfg.kind
        self.frames = cfg.frames
        self.distance: nn.Module = (
            _build_lpips(cfg.net, state, path) if cfg.kind == "lpips" else VGGFeatureDistance(state, path)
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Stay in eval mode whatever the parent asks (the backbone has dropout / is frozen)."""
        return super().train(False)

    def _to_images(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` or ``(B, C, T, H, W)`` → ``(B·frames, 3, H, W)`` fp32."""
        if x.dim() == 5:
            batch, channels, time, height, width = x.shape
            count = min(self.frames, time)
            index = torch.linspace(0, time - 1, count, device=x.device).round().long()
            x = x.index_select(2, index).transpose(1, 2).reshape(batch * count, channels, height, width)
        elif x.dim() != 4:
            raise ValueError(
                f"perceptual loss expects images (B, C, H, W) or video (B, C, T, H, W), got {tuple(x.shape)}"
            )
        if x.shape[1] not in (1, 3):
            raise ValueError(f"perceptual loss expects 1 or 3 channels, got {x.shape[1]}")
        return x.float().expand(-1, 3, -1, -1)

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        """Perceptual distance per sample, ``(B,)`` fp32; ``recon`` and ``target`` in [0, 1]."""
        if recon.shape != target.shape:
            raise ValueError(
                f"recon shape {tuple(recon.shape)} does not match target shape {tuple(target.shape)}"
            )
        with torch.autocast(device_type=recon.device.type, enabled=False):
            x, y = self._to_images(recon), self._to_images(target)  # (B·F, 3, H, W)
            if self.kind == "lpips":
                distance = self.distance(x, y, normalize=True).flatten()
            else:
                distance = self.distance(x, y)
        return distance.reshape(recon.shape[0], -1).mean(1)
