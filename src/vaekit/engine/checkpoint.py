"""Checkpoints: one directory per step over a dict of stateful objects, written so a crash never loses the last
complete one.

Layout of ``checkpoints/step_00001234/``:
  ``{name}.safetensors`` — the weights of each module (``model``, ``discriminator``, ``ema``);
  ``optim.pt`` — every other shared state (optimizers, schedules, grad scaler, noise generator), plain tensors and
  containers only, loaded with ``weights_only=True``;
  ``rng_rank{r}.pt`` — process r's own states (RNG streams, partial metric sums);
  ``state.json`` — the train state (step, epoch, position, stage, process count);
  ``manifest.json`` — written last: every file's size and BLAKE2b hash. A directory is a candidate when it has
  ``state.json``, and is loaded only when its manifest checks out and it holds every registered module's
  weights (a checkpoint written before manifests existed is checked for the files only).
A checkpoint is written to ``step_*.tmp`` and renamed into place; one that replaces a checkpoint of the same step
first moves the old one aside to ``step_*.old``, which counts as that step's checkpoint until the new one is in
place, so a complete checkpoint of that step exists at every instant. Pruning renames a doomed checkpoint to
``step_*.del`` before deleting it and removes only complete checkpoints older than the newest ``keep_last`` (and
those of steps after the one just written: a resumed run that fell back to an older checkpoint abandons them).
Loading skips, with a warning, an incomplete, damaged or tampered checkpoint and falls back to the newest good one.
A run is resumed with the process count it was trained with (a different count would change the result).
Nothing here unpickles arbitrary objects: loading never executes code from a checkpoint, and a file that is not
what it should be is a one-line ``CheckpointError``; a write that fails (read-only or full disk) is a one-line
``RunDirError`` that leaves the last complete checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
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

from vaekit.errors import CheckpointError, ConfigError, RunDirError

CKPT_PREFIX = "step_"
STATE_FILE = "state.json"
MANIFEST = "manifest.json"
FORMAT = 2
"""Checkpoint format: 2 adds ``manifest.json`` and the process count (``world``) to ``state.json``."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> Any: ...


def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:08d}"


def _parse(path: Path) -> tuple[int, str] | None:
    """``(step, suffix)`` of a ``step_XXXXXXXX[.suffix]`` name (suffix ``""``, ``tmp``, ``old`` or ``del``)."""
    if not path.name.startswith(CKPT_PREFIX):
        return None
    digits, _, suffix = path.name[len(CKPT_PREFIX) :].partition(".")
    return (int(digits), suffix) if digits.isdigit() else None


def _step_of(path: Path) -> int | None:
    parsed = _parse(path)
    return parsed[0] if parsed is not None else None


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / STATE_FILE).is_file()


def _candidates(ckpt_dir: Path) -> list[Path]:
    """Every directory that may hold a step's checkpoint, newest first: ``step_X`` (complete or not), then a
    complete ``step_X.old`` (the previous checkpoint of step X whose replacement was interrupted)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        parsed = _parse(path)
        if parsed is None or not path.is_dir():
            continue
        if parsed[1] == "" or (parsed[1] == "old" and _complete(path)):
            found.append((parsed[0], parsed[1] == "old", path))
    return [p for _, _, p in sorted(found, key=lambda t: (-t[0], t[1]))]


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (those with ``state.json``), one per step, oldest first: ``step_X``, or ``step_X.old``
    when a replacement of step X was interrupted before ``step_X`` was complete. Crash leftovers are ignored."""
    chosen: dict[int, Path] = {}
    for path in reversed(_candidates(ckpt_dir)):  # oldest first, and for one step the .old before step_X
        if _complete(path):
            chosen[_step_of(path) or 0] = path
    return [chosen[k] for k in sorted(chosen)]


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
    try:
        _save_safetensors(state_dict_for_save(module), tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
        raise


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``save_file``; its I/O failures (a full disk) come back as the ``OSError`` they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        raise _as_os_error(err, path) from None


def _save_torch(obj: Any, path: Path) -> None:
    """``torch.save``; a write that fails inside torch's zip writer (a full disk) comes back as an ``OSError``."""
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        raise _as_os_error(err, path) from None


def _as_os_error(err: Exception, path: Path) -> OSError:
    """A library's wrapped I/O failure as an ``OSError``: the errno it names (``os error 28``), else ENOSPC when
    the disk is (nearly) full, else EIO."""
    found = re.search(r"os error (\d+)", str(err))
    if found:
        code = int(found.group(1))
    else:
        try:
            code = errno.ENOSPC if shutil.disk_usage(path.parent).free < 1 << 20 else errno.EIO
        except OSError:
            code = errno.EIO
    return OSError(code, os.strerror(code) if found or code == errno.ENOSPC else _first_line(err), str(path))


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a one-line ``CheckpointError`` naming the file."""
    try:
        return load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def load_weights(module: nn.Module, path: Path, strict: bool = True) -> None:
    """Load a safetensors file into ``module``; an unreadable file and weights that do not fit are different
    one-line ``CheckpointError``s (the latter lists the missing, unexpected and mismatched keys)."""
    state = read_weights(path)
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        report = fit_report(module, state) or _first_line(err)
        raise CheckpointError(f"{path}: the weights do not fit this model ({report})") from None


def fit_report(model: Any, state: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into ``model``: missing, unexpected and mismatched keys, the first few of
    each with counts ('' when it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = [f"{len(keys)} {what}: {', '.join(keys[:3])}" + (", ..." if len(keys) > 3 else "")
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched (file vs model)", mismatched))
             if keys]
    return "; ".join(parts)


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

    # save --------------------------------------------------------------------------------------
    def save(self, step: int, train_state: dict[str, Any]) -> Path | None:
        """Write a complete checkpoint of ``step`` (collective: every process calls it).

        Raises:
            RunDirError: on every process, when the main process could not write it (read-only or full disk);
                the last complete checkpoint is left as it was.
        """
        local = {name: obj.state_dict() for name, obj in self.local.items()}
        locals_all = self.gather([local]) if self.world > 1 else [local]
        final, error = None, None
        if self.is_main:
            try:
                final = self._write(step, locals_all, train_state)
            except OSError as err:
                last = latest_checkpoint(self.dir)
                error = (
                    f"cannot write checkpoint {checkpoint_name(step)} in run directory {str(self.dir.parent)!r} "
                    f"({_os_error(err)}); the last complete checkpoint is {last or 'none'}"
                )
        if self.world > 1:  # the others learn of the failure here instead of waiting at the next collective
            error = next((e for e in self.gather([error]) if e), None)
        if error:
            raise RunDirError(error)
        return final

    def _write(self, step: int, locals_all: list[dict[str, Any]], train_state: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / checkpoint_name(step)
        tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            for name, module in self.modules.items():
                _save_safetensors(state_dict_for_save(module), tmp / f"{name}.safetensors")
            _save_torch({name: obj.state_dict() for name, obj in self.shared.items()}, tmp / "optim.pt")
            for rank, local in enumerate(locals_all):
                _save_torch(local, tmp / f"rng_rank{rank}.pt")
            state = {**train_state, "world": self.world, "format": FORMAT}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            write_manifest(tmp)  # last: lists (and hashes) every file above
            _fsync_dir(tmp)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if _complete(final):  # re-saving the same step: the old copy counts as step's checkpoint until the new
            if old.exists():  # one is in place (a complete .old left by an earlier crash is the same step's too)
                shutil.rmtree(old)
            os.replace(final, old)
        elif final.exists():  # an incomplete directory of this step (damaged): not worth keeping
            _remove(final)
        try:
            os.replace(tmp, final)
            _fsync_dir(self.dir)
        except OSError:
            if old.exists() and not final.exists():
                os.replace(old, final)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        self.prune(step)
        return final

    def prune(self, written: int | None = None) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; delete older complete ones, those of steps after
        ``written`` (the step just saved: they belong to a run abandoned at a resume) and crash leftovers. Never
        raises: a checkpoint that cannot be deleted now is deleted by a later save."""
        try:
            complete = list_checkpoints(self.dir)
            kept = [p for p in complete if written is None or (_step_of(p) or 0) <= written]
            doomed = kept[: -self.keep_last] + [p for p in complete if p not in kept]
            for path in doomed:
                _remove(path)
            newest = _step_of(kept[-1]) if kept else None
            for path in self.dir.iterdir():
                parsed = _parse(path)
                if parsed is None or not path.is_dir():
                    continue
                step, suffix = parsed
                if suffix == "del" or (suffix == "old" and _complete(self.dir / checkpoint_name(step))):
                    shutil.rmtree(path, ignore_errors=True)
                elif newest is not None and step < newest and suffix in ("", "tmp") and not _complete(path):
                    shutil.rmtree(path, ignore_errors=True)  # incomplete and superseded
        except OSError:
            pass

    # load --------------------------------------------------------------------------------------
    def load(self, path: Path | None = None, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """Read the checkpoint at ``path`` (default: the newest complete one that reads back on every process;
        each incomplete or unreadable newer one is skipped with one warning). Returns its train state, or None
        when the run has no checkpoint directory at all.

        Raises:
            CheckpointError: ``path`` (or every checkpoint of the run) cannot be read; names the file.
        """
        candidates = [path] if path is not None else _candidates(self.dir)
        first_error = None
        for candidate in candidates:
            try:
                state, error = self._read(candidate), None
            except CheckpointError as err:
                state, error = None, str(err)
            if self.world > 1:  # every process resumes from the same checkpoint, or none does
                error = next((e for e in self.gather([error]) if e), None)
            if error is None:
                self.loaded_from = candidate
                return state
            if path is not None:
                raise CheckpointError(error)
            first_error = first_error or error
            (warn or warnings.warn)(f"warning: skipping checkpoint {candidate.name}: {error}")
        self.pending = {}
        if first_error is not None:
            raise CheckpointError(
                f"{first_error}; no checkpoint of this run is readable (move {str(self.dir)!r} away to train the "
                "run again from the start)"
            )
        return None

    def _read(self, path: Path) -> dict[str, Any]:
        state = read_train_state(path)
        self._check_world(path, state)
        for name in self.modules:
            if not (path / f"{name}.safetensors").is_file():
                raise CheckpointError(f"{path / (name + '.safetensors')}: missing (an incomplete checkpoint)")
        pending: dict[str, Any] = {}
        shared = safe_torch_load(path / "optim.pt")
        local_file = path / f"rng_rank{self.rank}.pt"
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


    def _check_world(self, path: Path, state: dict[str, Any]) -> None:
        """A run resumes with the process count it was trained with: the data order, the noise streams and the
        per-process RNG states depend on it, so another count would silently change the result."""
        saved = state.get("world")
        if not isinstance(saved, int) or isinstance(saved, bool):  # before format 2: one RNG file per process
            saved = len(list(path.glob("rng_rank*.pt")))
        if saved and saved != self.world:
            raise ConfigError(
                f"resume: this run was trained with {saved} process{'es' if saved > 1 else ''} and is resumed with "
                f"{self.world}; resume it with {saved} (torchrun --nproc_per_node {saved} / accelerate launch "
                f"--num_processes {saved}), or start a new run (init_from: {path}) to train on with {self.world}"
            )


def read_train_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, checked against its manifest (format 2) and its directory's step.

    Raises:
        CheckpointError: missing, not JSON, not a train state, a step that is not this directory's, or a file that
            does not match the manifest (truncated, flipped, tampered); names the file.
    """
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (an incomplete checkpoint)") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{file}: not a vaekit train state")
    if state.get("format", 1) != 1 or (path / MANIFEST).exists():
        verify_manifest(path)
    step = state["step"]
    named = _step_of(path)  # None for a checkpoint directory copied under another name
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or (named is not None and step != named):
        expected = f"this checkpoint's step {named}" if named is not None else "a step count"
        raise CheckpointError(f"{file}: damaged (step {step!r} is not {expected})")
    for key in ("stage_index", "stage_step", "epoch", "batch_in_epoch"):
        if not isinstance(state.get(key, 0), int) or isinstance(state.get(key, 0), bool):
            raise CheckpointError(f"{file}: damaged ({key} {state[key]!r} is not a whole number)")
    return state


def _digest(file: Path) -> str:
    with open(file, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the size and hash of every other file of the checkpoint directory."""
    files = {f.name: [f.stat().st_size, _digest(f)] for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "hash": "blake2b-128", "files": files}, indent=1))


def verify_manifest(folder: Path) -> None:
    """Every file the manifest lists is there, with its size and hash.

    Raises:
        CheckpointError: the manifest is missing or unreadable, or a file is missing, cut or changed.
    """
    file = folder / MANIFEST
    try:
        manifest = json.loads(file.read_text())
        files = manifest["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (an incomplete checkpoint)") from None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AssertionError):
        raise CheckpointError(f"{file}: damaged (not a vaekit checkpoint manifest)") from None
    for name, entry in sorted(files.items()):
        target = folder / name
        if not isinstance(entry, list) or len(entry) != 2 or "/" in name:
            raise CheckpointError(f"{file}: damaged (entry {name!r})")
        if not target.is_file():
            raise CheckpointError(f"{target}: missing (an incomplete checkpoint)")
        if target.stat().st_size != entry[0]:
            raise CheckpointError(f"{target}: {target.stat().st_size} bytes, the manifest says {entry[0]} (truncated or replaced)")
        if _digest(target) != entry[1]:
            raise CheckpointError(f"{target}: its contents changed since it was written (the hash does not match the manifest)")


def _remove(path: Path) -> None:
    """Delete a checkpoint directory; renamed first, so an interrupted delete leaves a ``.del`` leftover that is
    never mistaken for a checkpoint."""
    parsed = _parse(path)
    doomed = path.with_name(f"{checkpoint_name(parsed[0])}.del" if parsed else path.name + ".del")
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _os_error(err: OSError) -> str:
    return f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")


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
