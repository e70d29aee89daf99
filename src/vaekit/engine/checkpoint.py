"""Checkpoints: one directory per step, written to ``*.tmp`` and renamed, so ``step_*`` is always complete.

Layout of ``checkpoints/step_00001234/``:
  ``model.safetensors`` (+ ``discriminator.safetensors``, ``ema.safetensors``) — weights;
  ``optim.pt`` — optimizer, schedule and grad-scaler states (plain tensors/containers: ``weights_only=True``);
  ``rng_rank{r}.pt`` — every RNG state of process r; ``state.json`` — step, epoch, position, stage, history.
Nothing here unpickles arbitrary objects: loading never executes code from a checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CKPT_PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:08d}"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (``*.tmp`` leftovers of a crash are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.suffix != ".tmp"]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX) :]))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def state_dict_for_save(module: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tied/shared tensors are cloned so safetensors accepts them."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state_dict_for_save(module), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(module: nn.Module, path: Path, strict: bool = True) -> None:
    state = load_file(str(path))
    module.load_state_dict(state, strict=strict)


# ------------------------------------------------------------------------------------------- rng
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


# ------------------------------------------------------------------------------------ save/load
def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    modules: dict[str, nn.Module],
    optim_state: dict[str, Any],
    train_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    keep_last: int,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and prune to ``keep_last``. Main process only."""
    final = ckpt_dir / checkpoint_name(step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file(state_dict_for_save(module), str(tmp / f"{name}.safetensors"))
    torch.save(optim_state, tmp / "optim.pt")
    for rank, rng in enumerate(rng_states):
        torch.save(rng, tmp / f"rng_rank{rank}.pt")
    (tmp / "state.json").write_text(json.dumps(train_state, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. end of stage right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(path: Path, rank: int = 0) -> dict[str, Any]:
    """The parts of a checkpoint as plain data: ``state`` (json), ``optim`` and ``rng`` (for ``rank``), and the
    paths of its weight files under ``weights``."""
    state = json.loads((path / "state.json").read_text())
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.exists():  # resuming with more processes than were saved: rank 0's stream seeds the rest
        rng_file = path / "rng_rank0.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=True)
    weights = {p.stem: p for p in path.glob("*.safetensors")}
    return {"state": state, "optim": optim, "rng": rng, "weights": weights}
