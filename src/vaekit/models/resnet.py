"""ResNetVAE: the Stable-Diffusion-style autoencoder (``model.arch=resnet``) for audio, images and video.

The layout of diffusers' ``AutoencoderKL`` (``Encoder``/``Decoder`` of ``models/autoencoders/vae.py``), from the
blocks of :mod:`vaekit.models.layers`: ``conv_in`` → per stage ``layers_per_block`` ResNet blocks (GroupNorm +
SiLU; self-attention after each when the stage is in ``attention_stages``) and a 2x down-sampling between stages →
a mid block (ResNet, self-attention, ResNet) → GroupNorm, SiLU, ``conv_out`` → ``quant_conv`` (1x1) → the
bottleneck. The decoder mirrors it (``post_quant_conv``, ``conv_in``, mid block, per stage ``layers_per_block + 1``
ResNet blocks and a 2x nearest up-sampling + conv, GroupNorm, SiLU, ``head``). With ``hidden_dims=[128, 256, 512,
512]``, ``layers_per_block=2``, ``latent_dim=4`` on RGB it has exactly the parameters of SD's ``AutoencoderKL``.

1D/2D/3D follow the data, as ``conv``. Video downsamples time in the first ``temporal_downsample`` stages; with
``causal`` the temporal padding is past-only, GroupNorm/attention are per frame, and the first frame is encoded on
its own: ``1 + 2^k·m`` frames map to ``1 + m`` latent frames (a single image is a 1-frame video).

Initialisation: PyTorch's defaults for every conv/linear (Kaiming-uniform, as diffusers' AutoencoderKL); GroupNorm
weight 1, bias 0. No zero-init: the residual branches start small enough at these widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from vaekit.config.schema import ModelConfig
from vaekit.models.base import VAE, register_model, register_to_config
from vaekit.models.layers import (
    CONV,
    CheckpointedSequential,
    Downsample,
    ResnetBlock,
    SelfAttention,
    Upsample,
    group_norm,
    make_conv,
)


def _mid_block(channels: int, dims: int, causal: bool, attention: bool, dropout: float) -> list[nn.Module]:
    blocks: list[nn.Module] = [ResnetBlock(channels, channels, dims, causal, dropout)]
    if attention:
        blocks.append(SelfAttention(channels, causal))
    return [*blocks, ResnetBlock(channels, channels, dims, causal, dropout)]


class ResNetEncoder(nn.Module):
    """x ``(B, C, *S)`` -> ``(B, out_channels, *S/f)``: conv_in, down stages, mid block, norm/act/conv_out, quant_conv."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int], layers: int, dims: int,
                 causal: bool, attention_stages: Sequence[int], mid_attention: bool, downsample: str,
                 temporal_downsample: int, dropout: float) -> None:
        super().__init__()
        self.conv_in = make_conv(dims, causal, in_channels, widths[0])
        blocks: list[nn.Module] = []
        c = widths[0]
        for i, width in enumerate(widths):
            for _ in range(layers):
                blocks.append(ResnetBlock(c, width, dims, causal, dropout))
                c = width
                if i in attention_stages:
                    blocks.append(SelfAttention(c, causal))
            if i < len(widths) - 1:
                blocks.append(Downsample(c, dims, downsample, causal, temporal=i < temporal_downsample))
        blocks += _mid_block(c, dims, causal, mid_attention, dropout)
        self.blocks = CheckpointedSequential(*blocks)
        self.norm_out = group_norm(c, causal)
        self.act = nn.SiLU()
        self.conv_out = make_conv(dims, causal, c, out_channels)
        self.quant_conv = CONV[dims](out_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(x))
        return self.quant_conv(self.conv_out(self.act(self.norm_out(h))))


class ResNetDecoder(nn.Module):
    """z ``(B, latent, *S/f)`` -> ``(B, out_channels, *S)``: post_quant_conv, conv_in, mid block, up stages, head."""

    def __init__(self, latent: int, out_channels: int, widths: Sequence[int], layers: int, dims: int, causal: bool,
                 attention_stages: Sequence[int], mid_attention: bool, temporal_downsample: int,
                 dropout: float) -> None:
        super().__init__()
        self.post_quant_conv = CONV[dims](latent, latent, 1)
        c = widths[-1]
        self.conv_in = make_conv(dims, causal, latent, c)
        blocks = _mid_block(c, dims, causal, mid_attention, dropout)
        for i in reversed(range(len(widths))):
            for _ in range(layers + 1):
                blocks.append(ResnetBlock(c, widths[i], dims, causal, dropout))
                c = widths[i]
                if i in attention_stages:
                    blocks.append(SelfAttention(c, causal))
            if i > 0:  # undoes the encoder's down-sampling after stage i - 1
                blocks.append(Upsample(c, dims, causal, temporal=i - 1 < temporal_downsample))
        self.blocks = CheckpointedSequential(*blocks)
        self.norm_out = group_norm(c, causal)
        self.act = nn.SiLU()
        self.head = make_conv(dims, causal, c, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(self.post_quant_conv(z)))
        return self.head(self.act(self.norm_out(h)))


@register_model("resnet")
class ResNetVAE(VAE):
    """SD-style autoencoder; ``len(input_shape) - 1`` (1, 2 or 3) picks Conv1d/2d/3d.

    Args:
        input_shape: per-sample shape ``(C, L)``, ``(C, H, W)`` or ``(C, T, H, W)`` (the size it was built for;
            any size the stages divide works).
        latent_dim: latent channels per position.
        hidden_dims: channels per stage (SD: ``[128, 256, 512, 512]``); ``len - 1`` 2x down-samplings.
        layers_per_block: ResNet blocks per encoder stage (decoder: one more).
        attention_stages: stages with self-attention after each ResNet block.
        mid_attention: self-attention in the mid blocks.
        downsample: ``conv`` (stride-2 conv) or ``interpolate`` (average pooling + conv).
        causal: video only: causal in time (see the module docstring).
        temporal_downsample: video only: how many of the first down-samplings also halve time.
        dropout: inside each ResNet block.
        recon_kind, gaussian_logvar, output_activation, bottleneck: see :class:`~vaekit.models.base.VAE`.
        grad_checkpointing: recompute each block (ResNet, attention, resampling) in backward (training only).
    """

    @register_to_config
    def __init__(
        self,
        input_shape: Sequence[int],
        latent_dim: int = 4,
        hidden_dims: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        attention_stages: Sequence[int] = (),
        mid_attention: bool = True,
        downsample: str = "conv",
        causal: bool = False,
        temporal_downsample: int = 0,
        dropout: float = 0.0,
        recon_kind: str = "mse",
        gaussian_logvar: str = "scalar",
        bottleneck: dict[str, Any] | None = None,
        grad_checkpointing: bool = False,
        output_activation: str = "none",
    ) -> None:
        super().__init__(recon_kind, gaussian_logvar, output_activation, bottleneck=bottleneck,
                         latent_channels=latent_dim)
        dims = len(input_shape) - 1
        if dims not in CONV:
            raise ValueError(f"model.arch=resnet needs data shaped (C, L), (C, H, W) or (C, T, H, W); got "
                             f"{tuple(input_shape)} (use model.arch=mlp for flat data)")
        if causal and dims != 3:
            raise ValueError("model.resnet.causal: applies to video (C, T, H, W) only; set it to false")
        if downsample not in ("conv", "interpolate"):
            raise ValueError(f"unknown downsample {downsample!r} (model.resnet.downsample: conv | interpolate)")
        n = len(hidden_dims)
        bad = [i for i in attention_stages if not 0 <= i < n]
        if bad:
            raise ValueError(f"model.resnet.attention_stages: stage {bad[0]} does not exist (0..{n - 1})")
        tdown = temporal_downsample if dims == 3 else 0
        if tdown > n - 1:
            raise ValueError(f"model.temporal_downsample={tdown} exceeds the {n - 1} down-samplings")
        self.input_shape, self.dims, self.causal, self.latent_dim = tuple(input_shape), dims, causal, latent_dim
        self.factors = ((2**tdown, *(2 ** (n - 1),) * 2) if dims == 3 else (2 ** (n - 1),) * dims)
        self.latent_shape = self.latent_shape_for(self.input_shape)
        channels, k = self.input_shape[0], self.out_multiplier
        common = dict(widths=list(hidden_dims), layers=layers_per_block, dims=dims, causal=causal,
                      attention_stages=list(attention_stages), mid_attention=mid_attention,
                      temporal_downsample=tdown, dropout=dropout)
        self.encoder = ResNetEncoder(channels, self.bottleneck.in_channels(latent_dim), downsample=downsample,
                                     **common)
        self.decoder = ResNetDecoder(latent_dim, k * channels, **common)
        self.set_grad_checkpointing(grad_checkpointing)

    def latent_shape_for(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.latent_dim, *self._check_size(tuple(input_shape[1:])))

    def _check_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Validate a per-sample size and return the latent's size (causal time: ``1 + (T − 1) / 2^k``)."""
        cfg = self.config
        out = []
        for axis, (s, f) in enumerate(zip(size, self.factors, strict=True)):
            if self.causal and axis == 0:
                if (s - 1) % f:
                    ok = ", ".join(str(1 + f * m) for m in range(1, 4))
                    raise ValueError(f"ResNetVAE with model.resnet.causal and model.temporal_downsample="
                                     f"{cfg['temporal_downsample']} needs 1 + {f}·m frames (1, {ok}, ...); got {s}: "
                                     "change data.frames")
                out.append(1 + (s - 1) // f)
                continue
            if s % f:
                what = "data.frames (or model.temporal_downsample)" if self.dims == 3 and axis == 0 else \
                    "data.image_size (data.segment for audio) or the number of model.hidden_dims"
                raise ValueError(f"ResNetVAE with model.hidden_dims={cfg['hidden_dims']} down-samples by "
                                 f"{self.factors}, which must divide the input size {tuple(size)}; change {what}")
            out.append(s // f)
        return tuple(out)

    def features(self, x: Tensor) -> Tensor:
        self._check_size(tuple(x.shape[2:]))
        return self.encoder(x)

    @property
    def compression(self) -> float:
        """Input elements per latent element at the built size."""
        return math.prod(self.input_shape) / math.prod(self.latent_shape)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> ResNetVAE:
        r = cfg.resnet
        return cls(shape, cfg.latent_dim, cfg.hidden_dims, layers_per_block=r.layers_per_block,
                   attention_stages=r.attention_stages, mid_attention=r.mid_attention, downsample=r.downsample,
                   causal=r.causal, temporal_downsample=cfg.temporal_downsample, dropout=r.dropout,
                   recon_kind=recon_kind, gaussian_logvar=cfg.gaussian_logvar, bottleneck=cfg.bottleneck.as_spec(),
                   grad_checkpointing=cfg.grad_checkpointing, output_activation=cfg.output_activation)
