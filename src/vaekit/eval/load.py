"""Loading trained models: ``load_model`` (a run directory or ``model.safetensors`` → the model) and what to
evaluate (`load_for_eval`: a run directory, a checkpoint, a ``model.safetensors`` or a module, in eval mode)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.errors import CheckpointError, ConfigError, ModelProtocolError, RunDirError


def load_model(path: str | Path, model: nn.Module | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained model from a run directory or a ``model.safetensors`` (its config is stored beside/in it).

    Args:
        path: a run directory, a checkpoint directory, a ``.safetensors`` file, a ``vaekit export --format hub``
            folder, or the hub id (``owner/name``) such a folder was pushed to.
        model: for a run that trained a user module: a fresh instance of that class to load the weights into.

    Raises:
        CheckpointError: the file is missing, unreadable or damaged (its stored model config too), or the weights
            do not fit the model (the missing, unexpected and mismatched keys named).
        ConfigError: ``model`` is not a module, or the file holds a user model and no ``model`` was given.
    """
    from vaekit.engine.checkpoint import read_weights

    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"load_model: model= must be an nn.Module instance, got {type(model).__name__}")
    path = resolve_hub(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: no model.safetensors there")
    state = read_weights(path, map_location)
    if model is None:
        model_config = stored_model_config(path)
        if model_config.get("arch") in (None, "custom"):
            raise ConfigError(
                f"load_model: {path} holds the weights of a user model ({model_config.get('class', 'unknown class')}); "
                "pass a fresh instance: vaekit.load_model(path, model=MyVAE(...))"
            )
        model = rebuild_model(model_config, path)
    load_state(model, state, path)
    return model.eval()


def resolve_hub(path: str | Path) -> Path:
    """A local path as is; else ``owner/name`` fetched with ``huggingface_hub.snapshot_download`` (one line when
    the hub cannot serve it)."""
    p, text = Path(path), str(path)
    if p.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")) or text.endswith(".safetensors"):
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["model.safetensors", "*.json", "*.yaml", "README.md"]))
    except Exception as err:  # noqa: BLE001 - offline, missing, gated: the hub raises many kinds; all one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"load_model: {text} is not a local path and the hub cannot serve it ({first}); "
                          "download the folder where the hub is reachable and pass its path") from None


def stored_model_config(path: Path) -> dict[str, Any]:
    """The model config an exported ``model.safetensors`` carries (its metadata, else ``model_config.json``
    beside it; {} when neither)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:  # noqa: BLE001 (safetensors raises several kinds)
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    try:
        if "vaekit" in meta:
            found = json.loads(meta["vaekit"])
            found = found.get("config", {}) if isinstance(found, dict) else found
        elif "config" in meta:
            found = json.loads(meta["config"])
        else:
            return read_model_config(path.parent / "model_config.json") if (path.parent / "model_config.json").is_file() else {}
    except ValueError as err:
        raise CheckpointError(f"{path}: damaged metadata (not JSON: {_first_line(err)})") from None
    if not isinstance(found, dict):
        raise CheckpointError(f"{path}: damaged metadata (the model config is a {type(found).__name__}, not a mapping)")
    return found


def read_model_config(file: Path) -> dict[str, Any]:
    """A run's ``model_config.json``: a JSON mapping, or a one-line ``CheckpointError`` naming the file."""
    try:
        found = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: damaged (not JSON: {_first_line(err)})") from None
    if not isinstance(found, dict):
        raise CheckpointError(f"{file}: damaged (a {type(found).__name__}, not a mapping of model settings)")
    return found


def rebuild_model(config: dict[str, Any], source: Path) -> nn.Module:
    """The model a stored config describes, checked first on the ``meta`` device (see `model_skeleton`)."""
    from vaekit.models import build_model_from_config

    model_skeleton(config, source)
    try:
        return build_model_from_config(config)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the stored model config cannot build a model ({_first_line(err)})") from None


def model_skeleton(config: dict[str, Any], source: Path) -> nn.Module:
    """The model a stored config describes, built on the ``meta`` device (no memory): a damaged config (an unknown
    arch or setting, a negative size) is one line, and one that asks for more memory than this machine has free
    is refused before anything is allocated."""
    from vaekit.models import build_model_from_config, count_parameters

    if not isinstance(config.get("arch"), str):
        raise CheckpointError(f"{source}: damaged model config (no 'arch' name)")
    try:
        with torch.device("meta"):
            skeleton = build_model_from_config(config)
        size = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError, OverflowError) as err:
        raise CheckpointError(f"{source}: the stored model config cannot build a model ({_first_line(err)})") from None
    free = _free_memory()
    if free is not None and size > free:
        raise CheckpointError(
            f"{source}: the stored model config asks for {count_parameters(skeleton):,} parameters "
            f"({size / 2**30:.1f} GiB), more than the available memory ({free / 2**30:.1f} GiB); a damaged "
            "model_config.json, or a model too large for this machine"
        )
    return skeleton


def _free_memory() -> int | None:
    """Memory available to a new allocation (``MemAvailable``: free plus reclaimable cache), else all of it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``model.load_state_dict(state)``, or a one-line ``CheckpointError`` listing what does not fit."""
    from vaekit.engine.checkpoint import fit_report
    from vaekit.models.adapter import export_module

    # an export holds the wrapped module's own keys (a diffusers model's, a user module's): fit those
    inner = export_module(model)
    target = inner if inner is not model and state and not any(k.startswith("module.") for k in state) else model
    report = fit_report(target, state)
    if report:
        raise CheckpointError(f"{source}: the weights do not fit this model ({report})")
    target.load_state_dict(state)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


@dataclass
class Loaded:
    """A model to evaluate and where it came from."""

    model: nn.Module
    name: str
    source: str
    run_dir: Path | None = None
    config: Any = None  # the run's VaekitConfig, when known
    step: int | None = None


def _as_vae(module: nn.Module, cfg: Any, name: str) -> nn.Module:
    """A user module as a VAE the evaluation can drive: its likelihood from the run's config, else its own
    ``recon_kind``, else its ``decoder_output`` (probabilities or logits: bce)."""
    from vaekit.models.adapter import as_vae
    from vaekit.models.base import VAE

    if isinstance(module, VAE):
        return module
    kind = cfg.loss.recon if cfg is not None else getattr(module, "recon_kind", None)
    if kind is None and getattr(module, "decoder_output", None) in ("probabilities", "logits"):
        kind = "bce"
    if kind is None:
        raise ModelProtocolError(
            f"evaluate: {name}'s likelihood is unknown; evaluate its run directory with model= (the run's "
            "loss.recon), or give the module a recon_kind attribute (bce, mse, l1, gaussian)"
        )
    return as_vae(module, kind)


def _read_run_config(run_dir: Path) -> Any:
    from vaekit.config.load import load_config

    return load_config(run_dir / "config.yaml")


def _model_from_weights(path: Path, run_dir: Path | None, cfg: Any) -> nn.Module:
    """Weights without their own config (a checkpoint's): the skeleton from the run's ``model_config.json``."""
    from vaekit.engine.checkpoint import read_weights

    state = read_weights(path)
    if run_dir is not None and (run_dir / "model_config.json").is_file():
        model = rebuild_model(read_model_config(run_dir / "model_config.json"), run_dir / "model_config.json")
    elif cfg is not None:
        from vaekit.data import build_data
        from vaekit.models import build_model

        model = build_model(cfg.model, build_data(cfg.data, cfg.run.seed).info.shape, cfg.loss.recon)
    else:
        raise CheckpointError(f"{path}: no model config beside it (model_config.json) to rebuild the model")
    load_state(model, state, path)
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
    model_or_run: Loaded | nn.Module | str | Path, checkpoint: str | Path | None = None, ema: bool = False,
    model: nn.Module | None = None,
) -> Loaded:
    """Resolve a run directory, a ``model.safetensors`` or a module into a model in eval mode.

    Args:
        model_or_run: a run directory (its ``config.yaml`` and ``model.safetensors``), a ``.safetensors`` file
            or an ``nn.Module`` with ``encode``/``decode``.
        checkpoint: a checkpoint directory (``checkpoints/step_XXXXXXXX``, also relative to the run's
            ``checkpoints/``) or weights file to load instead of the exported ``model.safetensors``.
        ema: load the checkpoint's ``ema.safetensors``.
        model: for a run that trained a user module: a fresh instance of its class, the weights loaded into it.
    """
    if isinstance(model_or_run, Loaded):
        return model_or_run
    if isinstance(model_or_run, nn.Module):
        for method in ("encode", "decode"):
            if not callable(getattr(model_or_run, method, None)):
                raise ModelProtocolError(f"evaluate: {type(model_or_run).__name__} has no {method}() method")
        name = type(model_or_run).__name__
        return Loaded(_as_vae(model_or_run, None, name).eval(), name, name)
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
        if (weights.parent / "state.json").is_file():
            from vaekit.engine.checkpoint import read_train_state

            step = read_train_state(weights.parent)["step"]
        if model is None:
            built = _model_from_weights(weights, run_dir, cfg)
            return Loaded(_finite(built, weights), name, str(weights), run_dir, cfg, step)
    else:
        weights = run_dir / "model.safetensors" if run_dir is not None else path
        if not weights.is_file():
            raise CheckpointError(
                f"{weights}: not found (the run has not finished; pass --checkpoint {run_dir}/checkpoints/step_...)"
            )
        if run_dir is not None and (run_dir / "summary.json").is_file():
            try:
                step = json.loads((run_dir / "summary.json").read_text()).get("steps")
            except (OSError, ValueError, AttributeError):
                step = None  # a damaged summary: the step is only provenance
            step = step if isinstance(step, int) and not isinstance(step, bool) else None
        if cfg is None:
            cfg = _config_from_metadata(weights)
    if model is not None:  # a user module's run: its weights into the fresh instance, adapted to the protocol
        built = _as_vae(load_model(weights, model=model), cfg, type(model).__name__).eval()
    else:
        built = load_model(weights)
    return Loaded(_finite(built, weights), name, str(weights), run_dir, cfg, step)


def _finite(model: nn.Module, source: Path) -> nn.Module:
    """Weights with NaN/Inf give meaningless numbers (or fail deep inside a metric): refused, naming them."""
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: holds non-finite weights ({', '.join(bad[:3])}"
                              + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + "); it cannot be evaluated")
    return model


def _config_from_metadata(path: Path) -> Any:
    """The run config stored in an exported ``model.safetensors`` (None when absent)."""
    from safetensors import safe_open

    from vaekit.config.load import load_config

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "vaekit_config" not in meta:
        return None
    try:
        tree = json.loads(meta["vaekit_config"])
    except ValueError:
        raise CheckpointError(f"{path}: damaged metadata (vaekit_config is not JSON)") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: damaged metadata (vaekit_config is a {type(tree).__name__})")
    return load_config(tree)


def check_options(batches: int | None, batch_size: int, k: int, device: Any = None) -> None:
    """The evaluation options, checked before any model runs.

    Raises:
        ConfigError: a count below 1 or a device this machine does not have, naming the option.
    """
    for name, value, lowest in (("batches", batches, 1), ("batch_size", batch_size, 1), ("k", k, 1)):
        if value is None and name == "batches":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ConfigError(f"{name}: {value!r}; give a whole number of at least {lowest}")
    if device is None or isinstance(device, torch.device):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device: {device!r} is not a device ({_first_line(err)}); use cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(dev.type, True) or (dev.type == "cuda" and dev.index is not None
                                              and dev.index >= torch.cuda.device_count()):
        raise ConfigError(f"device: {device!r} is not available on this machine")


def output_dir(path: str | Path, option: str, create: bool = False) -> Path:
    """Check (and with ``create``, make) the folder results go to, before any work is done: a path that is a
    file, or under a folder that cannot be written (read-only), is one line naming ``option``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{option} {str(folder)!r}: exists and is not a folder; name a new or existing folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"{option} {str(folder)!r}: cannot write under {str(existing)!r} (not a writable folder)")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"{option} {str(folder)!r}: cannot create it ({err.strerror or err})") from None
    return folder


def write_failed(err: OSError, folder: Path | str) -> RunDirError:
    """A write into an output folder that failed (a full or read-only disk), as one line."""
    where = err.filename or folder
    return RunDirError(f"cannot write {str(where)!r} ({err.strerror or err}); free space or choose another folder")
