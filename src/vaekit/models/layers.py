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
