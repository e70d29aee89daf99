"""The process's view of the hardware, through Accelerate: device, ranks, precision, wrapping, backward.

This is the one place that talks to Accelerate. The wrap order, applied from outside (model code never knows):
freeze (the pipeline) → ``accelerator.prepare_model`` (DDP when several processes; FSDP2 with
``train.strategy=fsdp``) → ``torch.compile``.
Optimizers are built on the wrapped model's parameters and pass through ``prepare_optimizer`` only under fp16
(it runs the grad scaler); otherwise the plain optimizer is used, as the wrapper only adds per-step overhead.

Several processes wait for each other in every collective; one that stops (SIGSTOP, a hung data read, a dead
host) fails the others after ``train.timeout_s``: gloo (CPU) raises in the waiting call, which
``check_collective_failure`` turns into one line naming the last complete checkpoint. NCCL's watchdog instead aborts
the process from a C++ thread after the same timeout (its message is printed by torch; nothing to catch).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs
from torch import nn

from vaekit.errors import ConfigError, RunDirError, VaekitError
from vaekit.utils import tune_cpu_allocator


class Runtime:
    """Accelerator, device, rank/world, autocast and backward for one run.

    Args:
        precision: ``no`` | ``fp16`` | ``bf16`` (``train.precision``).
        deterministic: ``train.deterministic`` (cuDNN benchmark stays off).
        timeout_s: collective timeout of the process group (a stopped rank fails the others after this).
    """

    def __init__(self, precision: str, deterministic: bool = False, timeout_s: float = 300.0,
                 strategy: str = "ddp", device: str = "auto") -> None:
        # Accelerate only sets up a CPU process group (gloo) when told the run is on the CPU.
        on_cpu = device == "cpu" or not torch.cuda.is_available()
        cpu_ddp = on_cpu and (device == "cpu" or int(os.environ.get("WORLD_SIZE", "1")) > 1)
        # Accelerate keeps its state in a process-wide singleton that refuses a second precision; a later run in
        # the same Python process (a notebook, a sweep) gets a fresh one. The process group is left alone.
        AcceleratorState._reset_state(reset_partial_state=False)
        if precision == "fp16" and on_cpu:
            # Accelerate would silently train in fp32; say so instead
            raise ConfigError("train.precision: 'fp16' needs a CUDA GPU; use 'bf16' (or 'no') on this machine")
        handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
        self.strategy = strategy
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu_ddp, kwargs_handlers=handlers,
                                       fsdp_plugin=_fsdp_plugin(strategy, cpu_ddp))
        self.precision = precision
        self.timeout_s = timeout_s
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.device.type == "cuda" and not deterministic:
            torch.backends.cudnn.benchmark = True  # shapes are fixed within a stage: let cuDNN pick kernels
        if self.device.type == "cpu":
            tune_cpu_allocator()  # keep freed activation memory in the heap between steps

    def describe(self) -> str:
        """The start-up line: process count, strategy and device (``processes 2 (ddp) on cpu``)."""
        strategy = self.strategy if self.world > 1 else "single process"
        return f"processes {self.world} ({strategy}) on {self.device.type}"

    def placement(self) -> dict[str, Any]:
        """What ``summary.json`` records of the processes: count, strategy, device, what the launcher asked."""
        return {"processes": self.world, "strategy": self.strategy if self.world > 1 else "single",
                "device": self.device.type, "launcher_requested": requested_processes()}

    def launch_warning(self) -> str | None:
        """A warning when the launcher asked for more processes than started (``accelerate launch
        --num_processes 2`` without ``--multi_gpu`` runs one process on a machine without GPUs)."""
        asked = requested_processes()
        if asked is None or asked <= self.world:
            return None
        return (
            f"warning: the launcher asked for {asked} processes but {self.world} started, so training runs in "
            f"{self.world}; start them with `torchrun --nproc_per_node {asked} -m vaekit train ...` (or "
            f"`accelerate launch --multi_gpu --num_processes {asked} ...`, which also starts them on CPU)"
        )

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.accelerator.scaler

    def autocast(self) -> AbstractContextManager:
        return self.accelerator.autocast() if self.precision != "no" else nullcontext()

    def wrap(self, module: nn.Module, compile: bool = False) -> nn.Module:
        """DDP (through ``accelerator.prepare_model``) when several processes train it, then compile."""
        wrapped = module
        if self.strategy == "fsdp" and self.world > 1:
            wrapped = self._shard(module)
        elif self.world > 1 and any(p.requires_grad for p in module.parameters()):
            wrapped = self.accelerator.prepare_model(module, device_placement=False)
        return torch.compile(wrapped) if compile else wrapped

    def _shard(self, module: nn.Module) -> nn.Module:
        """FSDP2, in place: Accelerate's ``fsdp2_prepare_model`` on accelerators; on CPU (gloo), where Accelerate
        does not enable FSDP, torch's ``fully_shard`` on each child of the autoencoder, then on the root. Parameters
        stay gathered from the forward to the backward (``reshard_after_forward=False``), so a main-process-only
        forward (sample grids) needs no collective."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(module, FSDPModule):
            return module
        if self.accelerator.distributed_type.value == "FSDP":
            return self.accelerator.prepare_model(module, device_placement=False)
        root = getattr(module, "module", module)  # a wrapped user / diffusers module: shard its children
        for child in root.children():
            if any(True for _ in child.parameters()):
                fully_shard(child, reshard_after_forward=False)
        fully_shard(module, reshard_after_forward=False)
        return module

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
        t = _full(t)
        return self.accelerator.reduce(t, reduction="sum") if self.world > 1 else t

    def reduce(self, t: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return self.accelerator.reduce(_full(t), reduction=reduction)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def check_collective_failure(self, err: BaseException, last_checkpoint: Callable[[], Any]) -> None:
        """Raise one line naming ``last_checkpoint()`` if ``err`` is a collective that timed out, or whose peer
        died (else return, and the caller re-raises ``err``). The process group is then torn down locally, so
        this process exits with the line instead of aborting in gloo's threads at exit.

        Raises:
            RunDirError: ``err`` was such a failure.
        """
        if self.world == 1 or isinstance(err, VaekitError) or not _collective_failure(err):
            return
        with suppress(Exception):
            torch.distributed.destroy_process_group()
        raise RunDirError(
            f"a process did not respond within train.timeout_s={self.timeout_s:g} (stopped, hung or killed: "
            f"{_first_line(err)}); the last complete checkpoint is {last_checkpoint() or 'none'}"
        ) from None


LAUNCHER_ENV = ("ACCELERATE_NUM_PROCESSES", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def requested_processes(parent_cmdline: list[str] | None = None) -> int | None:
    """How many processes the launcher was asked for: the largest of ``LAUNCHER_ENV`` and, under ``accelerate
    launch`` (whose single-process launcher exports no count), its ``--num_processes``/``--num-processes``
    argument read from the parent process's command line. None when nothing says."""
    found = [int(v) for v in (os.environ.get(k, "") for k in LAUNCHER_ENV) if v.strip().isdigit()]
    args = parent_cmdline if parent_cmdline is not None else _parent_cmdline()
    if any(a.endswith("accelerate") for a in args) and "launch" in args:
        for i, arg in enumerate(args):
            name, _, value = arg.partition("=")
            if name in ("--num_processes", "--num-processes"):
                value = value or (args[i + 1] if i + 1 < len(args) else "")
                if value.isdigit():
                    found.append(int(value))
    return max(found) if found else None


def _parent_cmdline() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:  # not Linux, or no permission
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


_COLLECTIVE_FAILURES = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe")


def _collective_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return any(s in text for s in _COLLECTIVE_FAILURES)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", line)[:300]  # gloo prefixes its source location: [.../x.cc:78]


def _fsdp_plugin(strategy: str, cpu: bool) -> object | None:
    """Accelerate's FSDP2 plugin for ``train.strategy=fsdp`` on accelerators (None otherwise)."""
    if strategy != "fsdp" or cpu or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=False,
                                          auto_wrap_policy="size_based_wrap", min_num_params=1_000_000,
                                          state_dict_type="FULL_STATE_DICT")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A value computed from FSDP-sharded parameters (a DTensor) as the plain full tensor."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t
