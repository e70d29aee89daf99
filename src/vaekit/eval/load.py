"""Loading trained models: ``load_model`` (a run directory or ``model.safetensors`` → the model) and what to
evaluate (`load_for_eval`: a run directory, a checkpoint, a ``model.safetensors`` or a module, in eval mode)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.errors import CheckpointError, ConfigError, ModelProtocolError


def load_model(path: str | Path, model: nn.Module | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained model from a run directory or a ``model.safetensors`` (its config is stored beside/in it).

    Args:
        path: a run directory, a checkpoint directory, or a ``.safetensors`` file.
        model: for a run that trained a user module: a fresh instance of that class to load the weights into.
    """
    from safetensors import safe_open

    from vaekit.engine.checkpoint import read_weights
    from vaekit.models import build_model_from_config

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: no model.safetensors there")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:  # noqa: BLE001 (safetensors raises several kinds)
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if "vaekit" in meta:
        model_config = json.loads(meta["vaekit"]).get("config", {})
    elif "config" in meta:
        model_config = json.loads(meta["config"])
    elif (path.parent / "model_config.json").is_file():
        model_config = json.loads((path.parent / "model_config.json").read_text())
    else:
        model_config = {}
    state = read_weights(path, map_location)
    if model is None:
        if model_config.get("arch") in (None, "custom"):
            raise ConfigError(
                f"load_model: {path} holds the weights of a user model ({model_config.get('class', 'unknown class')}); "
                "pass a fresh instance: vaekit.load_model(path, model=MyVAE(...))"
            )
        model = build_model_from_config(model_config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit this model ({str(err).splitlines()[0]})") from None
    return model.eval()


@dataclass
class Loaded:
    """A model to evaluate and where it came from."""

    model: nn.Module
    name: str
    source: str
    run_dir: Path | None = None
    config: Any = None  # the run's VaekitConfig, when known
    step: int | None = None


def _read_run_config(run_dir: Path) -> Any:
    from vaekit.config.load import load_config

    return load_config(run_dir / "config.yaml")


def _model_from_weights(path: Path, run_dir: Path | None, cfg: Any) -> nn.Module:
    """Weights without their own config (a checkpoint's): the skeleton from the run's ``model_config.json``."""
    from safetensors.torch import load_file

    from vaekit.models import build_model_from_config

    if run_dir is not None and (run_dir / "model_config.json").is_file():
        model = build_model_from_config(json.loads((run_dir / "model_config.json").read_text()))
    elif cfg is not None:
        from vaekit.data import build_data
        from vaekit.models import build_model

        model = build_model(cfg.model, build_data(cfg.data, cfg.run.seed).info.shape, cfg.loss.recon)
    else:
        raise CheckpointError(f"{path}: no model config beside it (model_config.json) to rebuild the model")
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: does not match the run's model ({str(err).splitlines()[0]})"
        ) from None
    return model.eval()


def _checkpoint_file(checkpoint: str | Path, run_dir: Path | None, ema: bool) -> Path:
    path = Path(checkpoint)
    if not path.exists() and run_dir is not None and (run_dir / "checkpoints" / path).exists():
        path = run_dir / "checkpoints" / path
    if path.is_dir():
        path = path / ("ema.safetensors" if ema else "model.safetensors")
    if not path.is_file():
        what = "EMA weights (ema.safetensors; was train.ema on?)" if ema else "model.safetensors"
        raise CheckpointError(f"--checkpoint {checkpoint}: no {what} at {path}")
    return path


def load_for_eval(
    model_or_run: Loaded | nn.Module | str | Path, checkpoint: str | Path | None = None, ema: bool = False
) -> Loaded:
    """Resolve a run directory, a ``model.safetensors`` or a module into a model in eval mode.

    Args:
        model_or_run: a run directory (its ``config.yaml`` and ``model.safetensors``), a ``.safetensors`` file
            or an ``nn.Module`` with ``encode``/``decode``.
        checkpoint: a checkpoint directory (``checkpoints/step_XXXXXXXX``, also relative to the run's
            ``checkpoints/``) or weights file to load instead of the exported ``model.safetensors``.
        ema: load the checkpoint's ``ema.safetensors``.
    """
    if isinstance(model_or_run, Loaded):
        return model_or_run
    if isinstance(model_or_run, nn.Module):
        for method in ("encode", "decode"):
            if not callable(getattr(model_or_run, method, None)):
                raise ModelProtocolError(f"evaluate: {type(model_or_run).__name__} has no {method}() method")
        return Loaded(model_or_run.eval(), type(model_or_run).__name__, type(model_or_run).__name__)
    path = Path(model_or_run)
    run_dir: Path | None = None
    cfg = None
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path}: not a run directory (no config.yaml)")
        run_dir, cfg = path, _read_run_config(path)
    elif not path.is_file():
        raise ConfigError(f"{path}: no such run directory or model file")
    name = run_dir.name if run_dir is not None else path.stem
    step = None
    if checkpoint is not None:
        weights = _checkpoint_file(checkpoint, run_dir, ema)
        model = _model_from_weights(weights, run_dir, cfg)
        state = weights.parent / "state.json"
        step = json.loads(state.read_text()).get("step") if state.is_file() else None
        return Loaded(model, name, str(weights), run_dir, cfg, step)
    weights = run_dir / "model.safetensors" if run_dir is not None else path
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: not found (the run has not finished; pass --checkpoint {run_dir}/checkpoints/step_...)"
        )
    model = load_model(weights)
    if run_dir is not None and (run_dir / "summary.json").is_file():
        step = json.loads((run_dir / "summary.json").read_text()).get("steps")
    if cfg is None:
        cfg = _config_from_metadata(weights)
    return Loaded(model, name, str(weights), run_dir, cfg, step)


def _config_from_metadata(path: Path) -> Any:
    """The run config stored in an exported ``model.safetensors`` (None when absent)."""
    from safetensors import safe_open

    from vaekit.config.load import load_config

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return load_config(json.loads(meta["vaekit_config"])) if "vaekit_config" in meta else None
