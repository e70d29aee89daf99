"""PatchGAN discriminator (pix2pix / taming-transformers ``NLayerDiscriminator``) for 1D, 2D and 3D data."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaekit.config.schema import DiscriminatorConfig
from vaekit.models.layers import CONV, build_norm


class PatchDiscriminator(nn.Module):
    """Maps ``(B, C, *S)`` to a map of real/fake logits ``(B, 1, *S')``, one per receptive-field patch.

    Layout as in taming: conv(k4, s2) + LeakyReLU(0.2); ``layers - 1`` × [conv(k4, s2) + norm + LeakyReLU] with
    channels doubling up to 8×; conv(k4, s1) + norm + LeakyReLU; a final 1-channel conv(k4, s1). Convs carry a
    bias only when not followed by BatchNorm. For video (``dims=3``) the time axis uses kernel 3, stride 1,
    padding 1 (T is kept, so short clips work); the spatial axes follow the 2D layout.

    Args:
        in_channels: data channels C.
        dims: 1 (audio), 2 (images) or 3 (video).
        channels: width of the first layer.
        layers: number of stride-2 convolutions.
        norm: ``batch``, ``group`` or ``none``.
    """

    def __init__(
        self, in_channels: int, dims: int = 2, channels: int = 64, layers: int = 3, norm: str = "batch"
    ):
        super().__init__()
        if dims not in CONV:
            raise ValueError(f"PatchDiscriminator supports dims 1, 2 or 3, got {dims}")
        self.dims, self.layers = dims, layers
        conv, bias = CONV[dims], norm != "batch"
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]

        def block(c_in: int, c_out: int, stride: int, normed: bool = True) -> nn.Sequential:
            mods = [conv(c_in, c_out, **self._geometry(stride), bias=bias or not normed)]
            if normed:
                mods.append(build_norm(norm, c_out, dims))
            return nn.Sequential(*mods, nn.LeakyReLU(0.2))

        self.blocks = nn.ModuleList(
            [block(in_channels, widths[0], 2, normed=False)]
            + [block(widths[i - 1], widths[i], 2) for i in range(1, layers)]
            + [block(widths[layers - 1], widths[layers], 1)]
        )
        self.head = conv(widths[layers], 1, **self._geometry(1))
        self.apply(_init_weights)

    def _geometry(self, stride: int) -> dict[str, tuple[int, ...]]:
        """Per-axis kernel 4 / ``stride`` / padding 1; the video time axis: kernel 3, stride 1, padding 1."""
        kernel, strides = (4,) * self.dims, (stride,) * self.dims
        if self.dims == 3:
            kernel, strides = (3, 4, 4), (1, stride, stride)
        return {"kernel_size": kernel, "stride": strides, "padding": (1,) * self.dims}

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The logits map's spatial size for inputs of spatial ``size`` (an entry < 1: the input is too small)."""
        out = tuple(size)
        for stride in [2] * self.layers + [1, 1]:
            g = self._geometry(stride)
            out = tuple(
                (n + 2 * p - k) // s + 1
                for n, k, s, p in zip(out, g["kernel_size"], g["stride"], g["padding"], strict=True)
            )
        return out

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """x ``(B, C, *S)`` -> logits ``(B, 1, *S')``; with ``return_features`` also each block's activation."""
        features = []
        h = x
        for block in self.blocks:
            h = block(h)
            features.append(h)
        logits = self.head(h)
        return (logits, features) if return_features else logits


def _init_weights(m: nn.Module) -> None:
    """taming ``weights_init``: conv weights ~ N(0, 0.02); norm scales ~ N(1, 0.02), shifts 0."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_discriminator(cfg: DiscriminatorConfig, shape: tuple[int, ...]) -> PatchDiscriminator:
    """A PatchDiscriminator for per-sample data ``shape`` (``(C, L)``, ``(C, H, W)`` or ``(C, T, H, W)``)."""
    dims = len(shape) - 1
    if dims not in CONV:
        raise ValueError(
            f"the discriminator needs audio, image or video data, got per-sample shape {tuple(shape)}; "
            "set loss.adversarial.weight=0"
        )
    disc = PatchDiscriminator(shape[0], dims=dims, channels=cfg.channels, layers=cfg.layers, norm=cfg.norm)
    out = disc.output_size(shape[1:])
    if min(out) < 1:
        raise ValueError(
            f"loss.adversarial.discriminator.layers={cfg.layers} is too deep for inputs of size {tuple(shape[1:])} "
            f"(logits map {out}); lower it or raise data.image_size"
        )
    return disc


class LatentDiscriminator(nn.Module):
    """FactorVAE's discriminator: an MLP on z (LeakyReLU 0.2) giving one logit for "drawn from q(z)"."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 6) -> None:
        super().__init__()
        dims = [latent_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        blocks.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.flatten(1)).squeeze(-1)  # (B,)
