"""An update: the parameters one optimizer trains, with its schedule, clipping and when it is active.

A step runs a short list of updates (``generator`` for a plain VAE; ``generator`` and ``discriminator`` for a
VAE-GAN). A frozen autoencoder is simply no generator update; a discriminator before its start step is inactive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vaekit.config.schema import OptimConfig
from vaekit.engine.optim import Schedule, build_optimizer
from vaekit.engine.runtime import Runtime


@dataclass
class Update:
    """One optimizer over some parameters.

    Attributes:
        name: ``generator`` or ``discriminator`` (its checkpoint keys and logged names derive from it).
        optimizer, schedule: built from an ``OptimConfig`` (``schedule.step()`` once per real optimizer step).
        params: the trainable parameters (for clipping and the gradient norm).
        grad_clip: the global-norm clip, or None.
        start_step: the update runs from this global step on.
    """

    name: str
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    params: list[nn.Parameter]
    grad_clip: float | None
    start_step: int = 0
    sharded: nn.Module | None = None
    """The FSDP-sharded module these parameters belong to: optimizer states are saved and loaded in full."""
    gathered: dict[str, Any] | None = None

    def active(self, step: int) -> bool:
        return step >= self.start_step

    def gather(self) -> None:
        """Collective under FSDP (every process, before a save): the full optimizer state for the main process."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self.gathered = get_optimizer_state_dict(self.sharded, self.optimizer, options=options)

    def state_dict(self) -> dict[str, Any]:
        optimizer, self.gathered = (self.gathered, None) if self.gathered is not None else (None, None)
        return {"optimizer": optimizer or self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sharded is not None:  # a full state (parameter names as keys), sharded again on every process
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.sharded, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def step(self, runtime: Runtime, want_norm: bool, skip_nonfinite: bool) -> tuple[torch.Tensor | None, bool]:
        """Clip, step, zero the gradients, advance the schedule.

        The gradient norm is computed only when clipping or when asked (logging steps), and computing it never
        changes the gradients (an infinite norm must not turn them into NaN). Returns ``(norm, skipped)``;
        with ``skip_nonfinite`` a step whose gradients are not finite is skipped (one host sync).
        """
        norm = None
        if self.grad_clip is not None or want_norm:
            runtime.unscale(self.optimizer)
            if self.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            else:
                norm = grad_norm(self.params)
            norm = full_tensor(norm)
        if skip_nonfinite and not grads_finite(self.params):
            self.optimizer.zero_grad(set_to_none=True)
            return norm, True
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not getattr(self.optimizer, "step_was_skipped", False):  # fp16 overflow: the step did not happen
            self.schedule.step()
        return norm, False


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 DTensor) value as the plain full tensor; a plain tensor as is."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients, read-only (no clipping, no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def grads_finite(params: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.stack([g.float().norm() for g in grads])).all()) if grads else True


def build_update(
    name: str,
    groups: dict[str, list[nn.Parameter]],
    cfg: OptimConfig,
    total_steps: int | None,
    runtime: Runtime,
    start_step: int = 0,
) -> Update | None:
    """An update over the trainable parameters of ``groups`` (None when nothing is trainable).

    Parameters are de-duplicated across groups (a user model without separate encoder/decoder modules puts
    everything in one). Without per-group learning rates the groups merge into one (one fused optimizer step).
    """
    seen: set[int] = set()
    clean: dict[str, list[nn.Parameter]] = {}
    for group, params in groups.items():
        kept = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in kept)
        if kept:
            clean[group] = kept
    params = [p for ps in clean.values() for p in ps]
    if not params:
        return None
    if not cfg.group_lr:
        clean = {name if name != "generator" else "autoencoder": params}
    opt = runtime.prepare_optimizer(build_optimizer(clean, cfg, fused=runtime.world == 1 and runtime.scaler is None))
    return Update(name, opt, Schedule(opt, cfg.scheduler, total_steps), params, cfg.grad_clip, start_step)

