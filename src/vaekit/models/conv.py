"""ConvVAE: a convolutional VAE for audio ``(C, L)``, images ``(C, H, W)`` and video ``(C, T, H, W)``.

Each hidden dim is one down-sampling stage: conv (kernel 3, stride 2, padding 1) + norm + activation; the decoder
mirrors it with transposed convs (kernel 3, stride 2, padding 1, output padding 1), so every stage halves or
doubles the size exactly. With the default ``norm='batch'`` and ``activation='leaky_relu'`` and
``hidden_dims=[32, 64, 128, 256, 512]`` at 64x64 this is the classic "vanilla VAE" (PyTorch-VAE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from vaekit.config.schema import ModelConfig
from vaekit.models.base import VAE, register_model, register_to_config
from vaekit.models.layers import CONV, CONV_TRANSPOSE, CheckpointedSequential, build_activation, build_norm


@register_model("conv")
class ConvVAE(VAE):
    """Convolutional VAE; ``len(input_shape) - 1`` (1, 2 or 3) picks Conv1d/2d/3d.

    Args:
        input_shape: per-sample shape ``(C, L)``, ``(C, H, W)`` or ``(C, T, H, W)``.
        latent_dim: vector latent size, or latent channels per position with ``latent='spatial'``.
        hidden_dims: channels per down-sampling stage.
        latent: ``vector`` (flatten -> Linear; the input size is fixed to ``input_shape``) or ``spatial``
            (a 3x3 conv to a ``(2·latent_dim, *size / 2**stages)`` map; any size divisible by ``2**stages``).
        norm: ``batch``, ``group`` (GroupNorm, up to 32 groups) or ``none``, after each (transposed) conv.
        activation: see :func:`~vaekit.models.layers.build_activation`.
        dropout: dropout after each stage's activation.
        temporal_downsample: video only (ignored otherwise): how many of the first stages also halve T.
        recon_kind, gaussian_logvar: see :class:`~vaekit.models.base.VAE`.
        bottleneck: ``model.bottleneck`` as a dict (see :mod:`vaekit.models.bottleneck`); None: Gaussian.
        grad_checkpointing: recompute each stage in backward (training only).
    """

    # long because: the layers are built in one order, which fixes the seeded initial weights; comments mark
    # the size arithmetic, the encoder and the decoder
    @register_to_config
    def __init__(
        self,
        input_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (32, 64, 128, 256, 512),
        latent: str = "vector",
        norm: str = "batch",
        activation: str = "leaky_relu",
        dropout: float = 0.0,
        temporal_downsample: int = 0,
        recon_kind: str = "bce",
        gaussian_logvar: str = "scalar",
        grad_checkpointing: bool = False,
        leaky_slope: float = 0.2,
        output_activation: str = "none",
        bottleneck: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(recon_kind, gaussian_logvar, output_activation, bottleneck=bottleneck,
                         latent_channels=latent_dim)
        dims = len(input_shape) - 1
        if dims not in CONV:
            raise ValueError(
                f"model.arch=conv needs data shaped (C, L), (C, H, W) or (C, T, H, W); got {tuple(input_shape)} "
                "(use model.arch=mlp for flat data)"
            )
        if latent not in ("vector", "spatial"):
            raise ValueError(f"unknown latent {latent!r} (model.latent: vector | spatial)")
        n = len(hidden_dims)
        if dims == 3 and temporal_downsample > n:
            raise ValueError(
                f"model.temporal_downsample={temporal_downsample} exceeds the {n} stages of model.hidden_dims"
            )
        self.input_shape = tuple(input_shape)
        self.dims, self.latent = dims, latent
        # Per-stage stride: 2 on every axis, except time in video after the first temporal_downsample stages.
        self.strides: list[tuple[int, ...]] = [
            ((2 if i < temporal_downsample else 1, 2, 2) if dims == 3 else (2,) * dims) for i in range(n)
        ]
        self.factors = tuple(math.prod(s[a] for s in self.strides) for a in range(dims))  # per axis
        # Spatial sizes after each down-stage (kernel 3, padding 1: ceil(size / stride)). A vector latent is built
        # for one input size, so any size works (the decoder's output padding undoes the rounding); a spatial
        # latent must work at every size, so the strides must divide it.
        sizes = [tuple(self.input_shape[1:])]
        for st in self.strides:
            sizes.append(tuple(-(-d // f) for d, f in zip(sizes[-1], st, strict=True)))
        bottom = sizes[-1] if latent == "vector" else self._check_size(self.input_shape[1:])
        self.latent_shape = (latent_dim,) if latent == "vector" else (latent_dim, *bottom)
        self.latent_dim = latent_dim
        conv, conv_t, k = CONV[dims], CONV_TRANSPOSE[dims], self.out_multiplier
        channels = self.input_shape[0]

        def stage(layer: nn.Module, c_out: int) -> nn.Sequential:
            layers = [layer, build_norm(norm, c_out, dims), build_activation(activation, leaky_slope)]
            return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout > 0 else []))

        # encoder: (B, C, *S) -> (B, h[-1], *S/f) -> (B, 2·latent) or (B, 2·latent, *S/f)
        ins = [channels, *hidden_dims[:-1]]
        down = [
            stage(conv(c_in, c_out, 3, stride=s, padding=1), c_out)
            for c_in, c_out, s in zip(ins, hidden_dims, self.strides, strict=True)
        ]
        self.encoder = nn.Sequential()
        self.encoder.add_module("blocks", CheckpointedSequential(*down))
        if latent == "vector":
            flat = hidden_dims[-1] * math.prod(bottom)
            self.encoder.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(flat, self.bottleneck.in_channels(latent_dim))))
        else:
            self.encoder.add_module("head", conv(hidden_dims[-1], self.bottleneck.in_channels(latent_dim), 3, padding=1))

        # decoder: z -> (B, h[-1], *S/f) -> transposed stages in reverse -> (B, h[0], *S) -> (B, k·C, *S)
        self.decoder = nn.Sequential()
        if latent == "vector":
            unflatten = nn.Unflatten(1, (hidden_dims[-1], *bottom))
            self.decoder.add_module("proj", nn.Sequential(nn.Linear(latent_dim, flat), unflatten))
        else:
            self.decoder.add_module("proj", conv(latent_dim, hidden_dims[-1], 3, padding=1))
        # up-stage i undoes down-stage i: hidden_dims[i] -> outs[i]
        outs = [hidden_dims[0], *hidden_dims[:-1]]
        up = []
        for i in reversed(range(n)):
            s = self.strides[i]
            if latent == "vector":  # restore size_i exactly from size_{i+1}
                pad = tuple(a - (b - 1) * st - 1 for a, b, st in zip(sizes[i], sizes[i + 1], s, strict=True))
            else:
                pad = tuple(x - 1 for x in s)
            layer = conv_t(hidden_dims[i], outs[i], 3, stride=s, padding=1, output_padding=pad)
            up.append(stage(layer, outs[i]))
        self.decoder.add_module("blocks", CheckpointedSequential(*up))
        self.decoder.add_module("head", conv(hidden_dims[0], k * channels, 3, padding=1))
        self.set_grad_checkpointing(grad_checkpointing)

    def latent_shape_for(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.latent == "vector":
            return tuple(self.latent_shape)
        return (self.latent_dim, *self._check_size(tuple(input_shape[1:])))

    def _check_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Validate a per-sample spatial size and return the latent's spatial size."""
        if any(s % f for s, f in zip(size, self.factors, strict=True)):
            raise ValueError(
                f"ConvVAE with model.hidden_dims={self.config['hidden_dims']} "
                f"(model.temporal_downsample={self.config['temporal_downsample']}) down-samples by "
                f"{self.factors}, which must divide the input size {tuple(size)}; change data.image_size "
                "(data.frames for video time) or model.hidden_dims"
            )
        return tuple(s // f for s, f in zip(size, self.factors, strict=True))

    def features(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[2:])
        if self.latent == "vector" and size != self.input_shape[1:]:
            raise ValueError(
                f"ConvVAE with model.latent=vector was built for size {self.input_shape[1:]}, got {size}; "
                "use model.latent=spatial to change data.image_size between stages"
            )
        if self.latent == "spatial":
            self._check_size(size)
        return super().features(x)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> ConvVAE:
        return cls(
            shape,
            cfg.latent_dim,
            cfg.hidden_dims,
            latent=cfg.latent,
            norm=cfg.norm,
            activation=cfg.activation,
            dropout=cfg.dropout,
            temporal_downsample=cfg.temporal_downsample,
            recon_kind=recon_kind,
            gaussian_logvar=cfg.gaussian_logvar,
            leaky_slope=cfg.leaky_slope,
            output_activation=cfg.output_activation,
            grad_checkpointing=cfg.grad_checkpointing,
            bottleneck=cfg.bottleneck.as_spec(),
        )
