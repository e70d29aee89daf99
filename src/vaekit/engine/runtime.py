"""The process's view of the hardware, through Accelerate: device, ranks, precision, wrapping, backward.

This is the one place that talks to Accelerate. The wrap order, applied from outside (model code never knows):
freeze (the pipeline) → ``accelerator.prepare_model`` (DDP when several processes) → ``torch.compile``.
Optimizers are built on the wrapped model's parameters and pass through ``prepare_optimizer`` only under fp16
(it runs the grad scaler); otherwise the plain optimizer is used, as the wrapper only adds per-step overhead.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs
from torch import nn

from vaekit.errors import ConfigError
from vaekit.utils import tune_cpu_allocator


class Runtime:
    """Accelerator, device, rank/world, autocast and backward for one run.

    Args:
        precision: ``no`` | ``fp16`` | ``bf16`` (``train.precision``).
        deterministic: ``train.deterministic`` (cuDNN benchmark stays off).
        timeout_s: collective timeout of the process group (a stopped rank fails the others after this).
    """

    def __init__(self, precision: str, deterministic: bool = False, timeout_s: float = 600.0) -> None:
        # Accelerate only sets up a CPU process group (gloo) when told the run is on the CPU.
        cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        # Accelerate keeps its state in a process-wide singleton that refuses a second precision; a later run in
        # the same Python process (a notebook, a sweep) gets a fresh one. The process group is left alone.
        AcceleratorState._reset_state(reset_partial_state=False)
        if precision == "fp16" and not torch.cuda.is_available():
            # Accelerate would silently train in fp32; say so instead
            raise ConfigError("train.precision: 'fp16' needs a CUDA GPU; use 'bf16' (or 'no') on this machine")
        handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu_ddp, kwargs_handlers=handlers)
        self.precision = precision
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.device.type == "cuda" and not deterministic:
            torch.backends.cudnn.benchmark = True  # shapes are fixed within a stage: let cuDNN pick kernels
        if self.device.type == "cpu":
            tune_cpu_allocator()  # keep freed activation memory in the heap between steps

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.accelerator.scaler

    def autocast(self) -> AbstractContextManager:
        return self.accelerator.autocast() if self.precision != "no" else nullcontext()

    def wrap(self, module: nn.Module, compile: bool = False) -> nn.Module:
        """DDP (through ``accelerator.prepare_model``) when several processes train it, then compile."""
        wrapped = module
        if self.world > 1 and any(p.requires_grad for p in module.parameters()):
            wrapped = self.accelerator.prepare_model(module, device_placement=False)
        return torch.compile(wrapped) if compile else wrapped

    def no_sync(self, module: nn.Module | None, last: bool) -> AbstractContextManager:
        """Skip DDP's gradient all-reduce on every micro-batch but the last of an accumulation."""
        if last or module is None or self.world == 1:
            return nullcontext()
        return self.accelerator.no_sync(module)

    def prepare_optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if self.scaler is None:
            return opt
        return self.accelerator.prepare_optimizer(opt, device_placement=False)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)  # scales the loss for fp16

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.accelerator.unscale_gradients(optimizer=opt)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.world > 1 else t

    def reduce(self, t: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return self.accelerator.reduce(t, reduction=reduction)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()
