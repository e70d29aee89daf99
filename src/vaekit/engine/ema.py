"""Exponential moving average of the autoencoder's weights, used for validation and export when enabled."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen shadow copy updated as ``shadow = decay·shadow + (1−decay)·weights`` (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.shadow.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buf, buf in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Start the average at the current weights (at ``ema.start_step``)."""
        self.shadow.load_state_dict(model.state_dict())
