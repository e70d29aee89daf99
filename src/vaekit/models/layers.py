"""Building blocks shared by the model families: norm/activation/conv factories and a checkpointable stack.

``dims`` is the number of convolved axes: 1 (audio ``(C, L)``), 2 (images ``(C, H, W)``), 3 (video
``(C, T, H, W)``), or 0 for flat features ``(D,)`` (MLPs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
"""Clamp of every predicted log-variance (posterior and per-element likelihood)."""

CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE: dict[int, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
BATCH_NORM: dict[int, type[nn.Module]] = {
    0: nn.BatchNorm1d,
    1: nn.BatchNorm1d,
    2: nn.BatchNorm2d,
    3: nn.BatchNorm3d,
}


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest group count ``<= min(max_groups, channels)`` that divides ``channels``."""
    groups = min(max_groups, channels)
    while channels % groups:
        groups -= 1
    return groups


def build_norm(kind: str, channels: int, dims: int) -> nn.Module:
    """A normalisation layer for ``channels`` features.

    Args:
        kind: ``batch`` (BatchNorm1d/2d/3d), ``group`` (GroupNorm with up to 32 groups; for flat features
            ``dims=0`` this is LayerNorm, i.e. one group over all features) or ``none`` (Identity).
        channels: feature/channel count.
        dims: convolved axes (0 for flat features).
    """
    if kind == "batch":
        return BATCH_NORM[dims](channels)
    if kind == "group":
        return nn.LayerNorm(channels) if dims == 0 else nn.GroupNorm(group_count(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (model.norm: batch | group | none)")


def build_activation(name: str, leaky_slope: float = 0.2) -> nn.Module:
    """``relu``, ``leaky_relu`` (negative slope ``leaky_slope``), ``silu``, ``gelu`` or ``elu``."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "leaky_relu": partial(nn.LeakyReLU, leaky_slope),
        "silu": nn.SiLU,
        "gelu": nn.GELU,
        "elu": nn.ELU,
    }
    if name not in factories:
        raise ValueError(f"unknown activation {name!r} (model.activation: {' | '.join(factories)})")
    return factories[name]()


@contextmanager
def _restore_buffers(module: nn.Module) -> Iterator[None]:
    """Undo buffer updates made while recomputing ``module`` (BatchNorm running stats must update once per step)."""
    saved = [(buf, buf.detach().clone()) for buf in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _checkpoint_contexts(module: nn.Module) -> tuple[AbstractContextManager, AbstractContextManager]:
    return nullcontext(), _restore_buffers(module)


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` whose children are activation-checkpointed when ``grad_checkpointing`` is set.

    Checkpointing applies only in training mode with gradients enabled. Each child is recomputed in the
    backward pass (``use_reentrant=False``, RNG state preserved so dropout matches); its buffers are restored
    after the recomputation, so BatchNorm running statistics are identical to an uncheckpointed step.
    """

    grad_checkpointing: bool = False

    def forward(self, x: Tensor) -> Tensor:
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self:
            if use_checkpoint:
                x = checkpoint(block, x, use_reentrant=False, context_fn=partial(_checkpoint_contexts, block))
            else:
                x = block(x)
        return x


# ------------------------------------------------------------------------------ ResNet / attention blocks
# The blocks of Stable Diffusion's autoencoder (diffusers' ``ResnetBlock2D``, ``Attention``, ``Downsample2D``,
# ``Upsample2D``), written once for 1, 2 or 3 convolved axes. With ``causal`` (video, dims=3) the time axis is
# padded on the past only (the first frame repeated, as CogVideoX's causal conv), GroupNorm and attention work per
# frame, and temporal down/up-sampling keeps the first frame on its own, so frame t of the output depends on
# frames <= t of the input only.
GROUPNORM_EPS = 1e-6


class CausalConv3d(nn.Module):
    """A Conv3d padded on the past only in time (``kernel − 1`` copies of the first frame), zeros in space.

    The convolution is the inner ``conv`` (a plain ``nn.Conv3d``), so LoRA adapters wrap it like any conv.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.time_pad = kernel - 1
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


def make_conv(dims: int, causal: bool, c_in: int, c_out: int, kernel: int = 3,
              stride: int | tuple[int, ...] = 1) -> nn.Module:
    """A ``kernel``-sized conv over ``dims`` axes with "same" padding (causal in time when ``causal``)."""
    if causal:
        st = stride if isinstance(stride, tuple) else (stride,) * 3
        return CausalConv3d(c_in, c_out, kernel, st)
    return CONV[dims](c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame of a video ``(B, C, T, H, W)`` on its own (statistics never mix frames)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape[:3]
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, *x.shape[3:]))
        return y.reshape(b, t, c, *x.shape[3:]).transpose(1, 2)


def group_norm(channels: int, causal: bool = False) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, eps 1e-6 (SD); per frame when ``causal``."""
    return (FrameGroupNorm if causal else nn.GroupNorm)(group_count(channels), channels, eps=GROUPNORM_EPS)


class ResnetBlock(nn.Module):
    """``x + conv2(drop(silu(norm2(conv1(silu(norm1(x)))))))``, with a 1x1 ``conv_shortcut`` when channels change."""

    def __init__(self, c_in: int, c_out: int, dims: int, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, causal)
        self.conv1 = make_conv(dims, causal, c_in, c_out)
        self.norm2 = group_norm(c_out, causal)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = make_conv(dims, causal, c_out, c_out)
        self.act = nn.SiLU()
        self.conv_shortcut = CONV[dims](c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions with a residual (SD's mid-block attention); per frame when
    ``causal``. Projections ``to_q``/``to_k``/``to_v``/``to_out`` are Linear layers (LoRA targets)."""

    def __init__(self, channels: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.group_norm = nn.GroupNorm(group_count(channels), channels, eps=GROUPNORM_EPS)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, *S)
        shape = x.shape
        if self.causal:  # (B, C, T, H, W) -> (B·T, C, H, W): attention within each frame
            x = x.transpose(1, 2).reshape(shape[0] * shape[2], shape[1], *shape[3:])
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        h = self.to_out(torch.nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0])
        out = x + h.transpose(1, 2).reshape(x.shape)
        if self.causal:
            out = out.reshape(shape[0], shape[2], shape[1], *shape[3:]).transpose(1, 2)
        return out


class Downsample(nn.Module):
    """Halve every spatial axis (and time when ``temporal``): a stride-2 3x3 conv (``conv``) or 2x average
    pooling then a 3x3 conv (``interpolate``). Causal time: frame 0 alone, then pairs (1 + 2m -> 1 + m frames)."""

    def __init__(self, channels: int, dims: int, mode: str = "conv", causal: bool = False,
                 temporal: bool = True) -> None:
        super().__init__()
        self.dims, self.mode, self.causal = dims, mode, causal
        self.stride = (2 if temporal else 1, 2, 2) if dims == 3 else (2,) * dims
        stride = self.stride if mode == "conv" else 1
        self.conv = make_conv(dims, causal, channels, channels, 3, stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "interpolate":
            pool = torch.nn.functional.avg_pool1d if self.dims == 1 else (
                torch.nn.functional.avg_pool2d if self.dims == 2 else torch.nn.functional.avg_pool3d)
            if self.causal and self.stride[0] == 2:
                first = pool(x[:, :, :1], (1, *self.stride[1:]))
                x = torch.cat([first, pool(x[:, :, 1:], self.stride)], dim=2) if x.shape[2] > 1 else first
            else:
                x = pool(x, self.stride)
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial axis (and time when ``temporal``) by nearest-neighbour interpolation, then a 3x3 conv.
    Causal time: frame 0 alone, every other frame doubled (1 + m -> 1 + 2m frames)."""

    def __init__(self, channels: int, dims: int, causal: bool = False, temporal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.scale = (2 if temporal else 1, 2, 2) if dims == 3 else (2,) * dims
        self.conv = make_conv(dims, causal, channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        up = torch.nn.functional.interpolate
        if self.causal and self.scale[0] == 2:
            first = up(x[:, :, :1], scale_factor=(1, *self.scale[1:]), mode="nearest")
            x = torch.cat([first, up(x[:, :, 1:], scale_factor=self.scale, mode="nearest")], 2) if x.shape[2] > 1 else first
        else:
            x = up(x, scale_factor=self.scale, mode="nearest")
        return self.conv(x)
