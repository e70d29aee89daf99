"""The Python entry points: ``train`` (one call from config to trained model) and ``load_model``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.config.load import ConfigError, load_config, resolve_dict
from vaekit.config.schema import VaekitConfig
from vaekit.engine import checkpoint as ckpt


@dataclass
class TrainResult:
    """What a finished run returns."""

    run_dir: Path
    history: list[dict[str, Any]]
    """Per-epoch train totals and validation records, every loss term in each."""
    checkpoint: Path | None
    """The final checkpoint directory (resumable)."""
    model_path: Path
    """``model.safetensors``: the exported weights (EMA weights when enabled)."""
    model: nn.Module
    config: VaekitConfig
    summary: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[dict[str, Any]]:
        """The history records of one split (``train`` or ``val``)."""
        return [r for r in self.history if r["split"] == name]


def train(
    config: str | Path | Mapping[str, Any] | VaekitConfig | None = None,
    *,
    resume: str | Path | None = None,
    x: Any = None,
    y: Any = None,
    val_x: Any = None,
    overrides: list[str] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train a VAE from a config (YAML path, dict or ``VaekitConfig``) and return its history and files.

    Args:
        config: the run config; None uses the defaults (the shapes data set).
        resume: a run directory to continue exactly where its last checkpoint stopped.
        x, y, val_x: arrays/tensors to train on (sets ``data.source=tensor``); shapes as in the README.
        overrides: dotted overrides, as on the command line (``["optim.lr=1e-4"]``).
        **kwargs: section overrides, e.g. ``train={"epochs": 2}`` or ``train__epochs=2``.
    """
    arrays = None
    if x is not None:
        arrays = {"x": x, "y": y, "val_x": val_x}
        kwargs.setdefault("data__source", "tensor")
    if resume is not None:
        return _resume(Path(resume), arrays, overrides or [], kwargs)
    tree = resolve_dict(config, overrides or [])
    cfg = load_config(tree, kwargs)
    return _run(cfg, arrays, run_dir=None, checkpoint=None)


def _resume(run_dir: Path, arrays: dict | None, overrides: list[str], kwargs: dict[str, Any]) -> TrainResult:
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a run directory (no config.yaml)")
    cfg = load_config(resolve_dict(run_dir / "config.yaml", overrides), kwargs)
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    return _run(cfg, arrays, run_dir=run_dir, checkpoint=latest)


def _run(cfg: VaekitConfig, arrays: dict | None, run_dir: Path | None, checkpoint: Path | None) -> TrainResult:
    from vaekit.engine.trainer import Trainer

    trainer = Trainer(cfg, arrays, run_dir=run_dir, resume=run_dir is not None)
    if checkpoint is not None:
        trainer.load(checkpoint)
    state = trainer.fit()
    summary_path = trainer.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    model = trainer.eval_model()
    return TrainResult(
        run_dir=trainer.run_dir,
        history=state.history,
        checkpoint=ckpt.latest_checkpoint(trainer.ckpt_dir),
        model_path=trainer.run_dir / "model.safetensors",
        model=model,
        config=cfg,
        summary=summary,
    )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained model from a run directory or a ``model.safetensors`` (its config is stored beside/in it)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vaekit.models import build_model_from_config

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors there")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "config" in meta:
        model_config = json.loads(meta["config"])
    else:
        model_config = json.loads((path.parent / "model_config.json").read_text())
    model = build_model_from_config(model_config)
    model.load_state_dict(load_file(str(path), device=str(map_location)))
    return model.eval()
