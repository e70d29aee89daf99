"""MLPVAE: fully-connected encoder/decoder on flattened inputs of any shape (tabular data, small images).

The classic 784-400-20 MNIST VAE of Kingma & Welling is ``MLPVAE((1, 28, 28), 20, [400], norm="none")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from vaekit.config.schema import ModelConfig
from vaekit.models.base import VAE, register_model, register_to_config
from vaekit.models.layers import CheckpointedSequential, build_activation, build_norm


def _dense_block(d_in: int, d_out: int, norm: str, activation: str, dropout: float,
                 leaky_slope: float = 0.2) -> nn.Sequential:
    layers = [nn.Linear(d_in, d_out), build_norm(norm, d_out, dims=0), build_activation(activation, leaky_slope)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register_model("mlp")
class MLPVAE(VAE):
    """Flatten -> hidden layers -> (mean, logvar); decoder mirrors the hidden widths and reshapes to the input.

    Args:
        input_shape: per-sample shape, e.g. ``(16,)`` or ``(1, 28, 28)``.
        latent_dim: size of the vector latent.
        hidden_dims: encoder hidden widths (the decoder uses them reversed).
        activation: see :func:`~vaekit.models.layers.build_activation`.
        norm: ``batch`` (BatchNorm1d), ``group`` (LayerNorm) or ``none``, after each hidden Linear.
        dropout: dropout after each hidden activation.
        recon_kind, gaussian_logvar: see :class:`~vaekit.models.base.VAE`.
        bottleneck: ``model.bottleneck`` as a dict (see :mod:`vaekit.models.bottleneck`); None: Gaussian.
        grad_checkpointing: recompute each hidden block in backward (training only).
    """

    @register_to_config
    def __init__(
        self,
        input_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
        recon_kind: str = "bce",
        gaussian_logvar: str = "scalar",
        grad_checkpointing: bool = False,
        leaky_slope: float = 0.2,
        output_activation: str = "none",
        bottleneck: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(recon_kind, gaussian_logvar, output_activation, bottleneck=bottleneck,
                         latent_channels=latent_dim)
        self.input_shape = tuple(input_shape)
        self.latent_shape = (latent_dim,)
        widths = [math.prod(self.input_shape), *hidden_dims]
        k = self.out_multiplier

        rev = [latent_dim, *reversed(hidden_dims)]
        down = [
            _dense_block(a, b, norm, activation, dropout, leaky_slope)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        ]
        up = [_dense_block(a, b, norm, activation, dropout, leaky_slope) for a, b in zip(rev[:-1], rev[1:], strict=True)]

        self.encoder = nn.Sequential()
        self.encoder.add_module("flatten", nn.Flatten())  # (B, D)
        self.encoder.add_module("blocks", CheckpointedSequential(*down))
        self.encoder.add_module("head", nn.Linear(widths[-1], self.bottleneck.in_channels(latent_dim)))  # (B, 2·latent)

        self.decoder = nn.Sequential()
        self.decoder.add_module("blocks", CheckpointedSequential(*up))
        self.decoder.add_module("head", nn.Linear(rev[-1], k * widths[0]))  # (B, k·D)
        out_shape = (k * self.input_shape[0], *self.input_shape[1:])  # the log-variance as extra channels
        self.decoder.add_module("unflatten", nn.Unflatten(1, out_shape))  # (B, k·C, ...)
        self.set_grad_checkpointing(grad_checkpointing)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> MLPVAE:
        if cfg.latent != "vector":
            raise ValueError(
                "model.arch=mlp has a vector latent only; set model.latent=vector or model.arch=conv"
            )
        return cls(
            shape,
            cfg.latent_dim,
            cfg.hidden_dims,
            activation=cfg.activation,
            norm=cfg.norm,
            dropout=cfg.dropout,
            recon_kind=recon_kind,
            gaussian_logvar=cfg.gaussian_logvar,
            grad_checkpointing=cfg.grad_checkpointing,
            leaky_slope=cfg.leaky_slope,
            output_activation=cfg.output_activation,
            bottleneck=cfg.bottleneck.as_spec(),
        )
