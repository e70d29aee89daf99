"""Checkpoints: one directory per step over a dict of stateful objects, written so a crash never loses the last
complete one.

Layout of ``checkpoints/step_00001234/``:
  ``{name}.safetensors`` — the weights of each module (``model``, ``discriminator``, ``ema``);
  ``optim.pt`` — every other shared state (optimizers, schedules, grad scaler, noise generator), plain tensors and
  containers only, loaded with ``weights_only=True``;
  ``rng_rank{r}.pt`` — process r's own states (RNG streams, partial metric sums);
  ``state.json`` — the train state (step, epoch, position, stage), written last: a directory is complete when it
  has ``state.json``.
A checkpoint is written to ``step_*.tmp`` and renamed into place; one that replaces a checkpoint of the same step
first moves the old one aside, so a complete checkpoint of that step exists at every instant. Pruning removes only
complete checkpoints older than the newest ``keep_last``. Nothing here unpickles arbitrary objects: loading never
executes code from a checkpoint, and a file that is not what it should be is a one-line ``CheckpointError``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vaekit.errors import CheckpointError

CKPT_PREFIX = "step_"
STATE_FILE = "state.json"


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> Any: ...


def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:08d}"


def _step_of(path: Path) -> int | None:
    tail = path.name[len(CKPT_PREFIX) :]
    return int(tail) if path.name.startswith(CKPT_PREFIX) and tail.isdigit() else None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (those with ``state.json``), oldest first; leftovers of a crash are ignored."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _step_of(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------ weights
def state_dict_for_save(module: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tied/shared tensors are cloned so safetensors accepts them."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write. The metadata goes in as one sorted JSON string under ``vaekit`` (safetensors
    keeps metadata in a hash map, so several keys would come out in a different order each run): identical
    weights and metadata give identical bytes."""
    meta = {"vaekit": json.dumps(metadata, sort_keys=True)} if metadata else None
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state_dict_for_save(module), str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a one-line ``CheckpointError`` naming the file."""
    try:
        return load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def load_weights(module: nn.Module, path: Path, strict: bool = True) -> None:
    try:
        module.load_state_dict(read_weights(path), strict=strict)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit this model ({_first_line(err)})") from None


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: a pickle that would run code, or a truncated file, is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: refused (not a plain-tensor checkpoint file, or truncated: {_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# ------------------------------------------------------------------------------------------ rng
def rng_state() -> dict[str, Any]:
    """Every RNG the training step may touch, as tensors and plain containers (weights_only-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState:
    """The process's global RNG streams as a stateful object."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class GeneratorState:
    """A ``torch.Generator`` as a stateful object."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


# ------------------------------------------------------------------------------------ the manager
class CheckpointManager:
    """Saves and restores a run's stateful objects.

    Three kinds of state are registered by name: ``modules`` (weights → safetensors), ``shared`` (identical on
    every process → ``optim.pt``) and ``local`` (per process → ``rng_rank{r}.pt``). ``load`` reads a checkpoint
    once; each state is restored when it is registered (objects built later, such as a stage's optimizers, are
    restored at their registration), or at once if already registered.

    Args:
        ckpt_dir: ``{run_dir}/checkpoints``.
        rank, world, is_main: this process; only the main process writes.
        gather: collects every process's local states on the main process (``accelerate.utils.gather_object``).
        keep_last: complete checkpoints kept.
    """

    def __init__(
        self, ckpt_dir: Path, rank: int, world: int, is_main: bool, gather: Callable[[list], list], keep_last: int
    ) -> None:
        self.dir = ckpt_dir
        self.rank, self.world, self.is_main = rank, world, is_main
        self.gather = gather
        self.keep_last = keep_last
        self.modules: dict[str, nn.Module] = {}
        self.shared: dict[str, Stateful] = {}
        self.local: dict[str, Stateful] = {}
        self.pending: dict[str, Any] = {}
        self.loaded_from: Path | None = None

    # registration ------------------------------------------------------------------------------
    def register(self, kind: str, name: str, obj: Any) -> None:
        """Register ``obj`` under ``name`` (kind: ``module`` | ``shared`` | ``local``); restore it if a loaded
        checkpoint holds its state."""
        table = {"module": self.modules, "shared": self.shared, "local": self.local}[kind]
        table[name] = obj
        key = f"{kind}:{name}"
        if key in self.pending:
            state = self.pending.pop(key)
            if kind == "module":
                load_weights(obj, state)
            else:
                obj.load_state_dict(state)

    def unregister(self, kind: str, name: str) -> None:
        {"module": self.modules, "shared": self.shared, "local": self.local}[kind].pop(name, None)

    def has_pending(self, kind: str, name: str) -> bool:
        return f"{kind}:{name}" in self.pending

    def pending_state(self, kind: str, name: str) -> Any:
        return self.pending.get(f"{kind}:{name}")

    # save --------------------------------------------------------------------------------------
    def save(self, step: int, train_state: dict[str, Any]) -> Path | None:
        """Write a complete checkpoint of ``step`` (collective: every process calls it)."""
        local = {name: obj.state_dict() for name, obj in self.local.items()}
        locals_all = self.gather([local]) if self.world > 1 else [local]
        final = None
        if self.is_main:
            final = self._write(step, locals_all, train_state)
        return final

    def _write(self, step: int, locals_all: list[dict[str, Any]], train_state: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / checkpoint_name(step)
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, module in self.modules.items():
            save_file(state_dict_for_save(module), str(tmp / f"{name}.safetensors"))
        torch.save({name: obj.state_dict() for name, obj in self.shared.items()}, tmp / "optim.pt")
        for rank, local in enumerate(locals_all):
            torch.save(local, tmp / f"rng_rank{rank}.pt")
        (tmp / STATE_FILE).write_text(json.dumps(train_state, indent=1))  # last: marks the directory complete
        _fsync_dir(tmp)
        old = final.with_name(final.name + ".old")
        if final.exists():  # re-saving the same step: the old copy stays complete until the new one is in place
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        if old.exists():
            shutil.rmtree(old)
        self.prune()
        return final

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; delete older complete ones and stale leftovers."""
        complete = list_checkpoints(self.dir)
        for path in complete[: -self.keep_last]:
            # rename first: an interrupted delete leaves a leftover that is never mistaken for a checkpoint
            doomed = path.with_name(path.name + ".del")
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        newest = _step_of(complete[-1]) if complete else None
        for path in self.dir.iterdir():
            step = _step_of(path)
            if path.is_dir() and step is None and path.name.startswith(CKPT_PREFIX) and path.suffix in (".del", ".old"):
                shutil.rmtree(path, ignore_errors=True)
            elif step is not None and not (path / STATE_FILE).is_file() and newest is not None and step < newest:
                shutil.rmtree(path, ignore_errors=True)  # incomplete and superseded

    # load --------------------------------------------------------------------------------------
    def load(self, path: Path | None = None, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """Read the checkpoint at ``path`` (default: the newest complete one that reads back; an unreadable one
        is skipped with a warning). Returns its train state, or None when there is none."""
        candidates = [path] if path is not None else list(reversed(list_checkpoints(self.dir)))
        for candidate in candidates:
            try:
                state = self._read(candidate)
            except CheckpointError as err:
                if path is not None:
                    raise
                (warn or warnings.warn)(f"warning: skipping checkpoint {candidate.name}: {err}")
                continue
            self.loaded_from = candidate
            return state
        return None

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path / STATE_FILE}: missing (an incomplete checkpoint)") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path / STATE_FILE}: not valid JSON ({_first_line(err)})") from None
        if not isinstance(state, dict) or "step" not in state:
            raise CheckpointError(f"{path / STATE_FILE}: not a vaekit train state")
        pending: dict[str, Any] = {}
        shared = safe_torch_load(path / "optim.pt")
        local_file = path / f"rng_rank{self.rank}.pt"
        if not local_file.exists():  # resuming with more processes than were saved: rank 0's stream seeds the rest
            local_file = path / "rng_rank0.pt"
        local = safe_torch_load(local_file)
        if not isinstance(shared, dict) or not isinstance(local, dict):
            raise CheckpointError(f"{path}: optim.pt / {local_file.name} do not hold a dict of states")
        pending.update({f"shared:{k}": v for k, v in shared.items()})
        pending.update({f"local:{k}": v for k, v in local.items()})
        for file in sorted(path.glob("*.safetensors")):
            read_weights(file)  # a truncated file is found now, not after the stage is built
            pending[f"module:{file.stem}"] = file
        self.pending = pending
        for kind, table in (("module", self.modules), ("shared", self.shared), ("local", self.local)):
            for name, obj in list(table.items()):
                self.register(kind, name, obj)
        return state


def _fsync_dir(path: Path) -> None:
    """Flush the files of ``path`` and the directory entry itself, so a rename into it survives a crash."""
    for child in path.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
