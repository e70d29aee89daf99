"""The Python entry points: ``train`` (one call from config to trained model) and ``load_model``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.config.load import load_config, resolve_dict
from vaekit.config.schema import VaekitConfig
from vaekit.errors import ConfigError
from vaekit.eval.load import load_model as load_model  # lives with the loading for evaluation


class History(list):
    """The run's records (a list, as before), also indexed by the names a training script keeps per epoch:
    ``history["train_loss"]``, ``history["train_recon_loss"]``, ``history["train_kl_loss"]``, ``history["val_loss"]``,
    ... (``{split}_{term}``, ``_loss`` optional after a term; train: the epoch means; val: one per validation)."""

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if not isinstance(key, str):
            return super().__getitem__(key)
        split, _, term = key.partition("_")
        if split not in ("train", "val", "test") or not term:
            raise KeyError(f"{key!r}: use '<split>_<term>', e.g. train_loss, train_recon_loss, val_kl_loss")
        if term != "loss":
            term = term.removesuffix("_loss")
        rows = [r for r in self if r.get("split") == split and (split != "train" or r.get("kind") == "epoch")]
        if not any(term in r for r in rows):
            names = sorted({f"{split}_{k}" for r in rows for k, v in r.items() if isinstance(v, float)})
            raise KeyError(f"{key!r}: no such term; this run has {', '.join(names) or 'no ' + split + ' records'}")
        return [r[term] for r in rows if term in r]

    def keys(self) -> list[str]:
        """The per-epoch names ``history[...]`` answers (``train_loss``, ``val_recon``, ...)."""
        out = []
        for r in self:
            if r.get("split") == "train" and r.get("kind") != "epoch":
                continue
            out.extend(f"{r['split']}_{k}" for k, v in r.items() if isinstance(v, float) and k != "time")
        return list(dict.fromkeys(out))


@dataclass
class TrainResult:
    """What a finished run returns."""

    run_dir: Path
    history: History
    """Per-epoch train means (``"kind": "epoch"``) and every validation (and test) record, all loss terms; also
    per-epoch lists by name: ``history["train_loss"]``, ``history["val_recon_loss"]``, ..."""
    checkpoint: Path | None
    """The final checkpoint directory (resumable)."""
    model_path: Path
    """``model.safetensors``: the exported weights (EMA weights when enabled)."""
    model: nn.Module
    config: VaekitConfig
    summary: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[dict[str, Any]]:
        """The history records of one split (``train``, ``val`` or ``test``)."""
        return [r for r in self.history if r["split"] == name]

    @property
    def curves(self) -> dict[str, list[float]]:
        """Every term as a column: ``"train/loss"`` (one value per epoch), ``"val/loss"`` (one per validation,
        by default one per epoch), ``"test/…"``, plus ``"train/step"``/``"val/step"`` for the x axis."""
        out: dict[str, list[float]] = {}
        for record in self.history:
            split = record["split"]
            if split == "train" and record.get("kind") != "epoch":
                continue
            out.setdefault(f"{split}/step", []).append(record["step"])
            for key, value in record.items():
                if isinstance(value, float) and key not in ("time",):
                    out.setdefault(f"{split}/{key}", []).append(value)
        return out


# long because: the one Python entry point; its docstring documents every argument, the body maps them onto a config
def train(
    config: str | Path | Mapping[str, Any] | VaekitConfig | None = None,
    *,
    model: nn.Module | Mapping[str, Any] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    resume: str | Path | None = None,
    x: Any = None,
    y: Any = None,
    val_x: Any = None,
    overrides: list[str] | None = None,
    hooks: list[Any] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train a VAE from a config (YAML path, dict or ``VaekitConfig``) and return its history and files.

    Args:
        config: the run config; None uses the defaults (the shapes data set).
        model: an ``nn.Module`` following the model protocol (``encode(x)`` → posterior, ``decode(z)`` →
            reconstruction; see docs/tutorials/your-own-model.md), trained instead of a built-in family; a
            mapping is the ``model`` config section, like ``train={...}``.
        train_data, val_data: a map-style ``Dataset``, a ``DataLoader`` or an array/tensor ``(N, ...)``; without
            ``val_data`` a seeded ``data.val_fraction`` of ``train_data`` is held out (sets ``data.source=tensor``).
        resume: a run directory to continue exactly where its last checkpoint stopped (pass the same ``model`` /
            data again when the run was trained on Python objects).
        x, y, val_x: arrays/tensors to train on (``x`` with labels ``y``); shapes as in docs/tutorials/your-own-data.md.
        overrides: dotted overrides, as on the command line (``["optim.lr=1e-4"]``).
        hooks: callables ``hook(event, state)`` called at "epoch_start", "epoch_end" and "stage_end" (observers
            only, e.g. timers; ``state`` is the live ``TrainState``: step, epoch, stage).
        **kwargs: section overrides, e.g. ``train={"epochs": 2}`` or ``train__epochs=2``; ``device="cpu"`` or
            ``cpu=True`` sets ``train.device=cpu``.
    """
    from vaekit.pipeline.run import Pipeline

    _device_choice(kwargs)
    _check_arguments(overrides, hooks, {"x": x, "val_x": val_x, "train_data": train_data, "val_data": val_data})
    if isinstance(model, Mapping):
        kwargs["model"] = model
        model = None
    elif model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected an nn.Module or a dict for the model section, got {type(model).__name__}")
    data = None
    if x is not None and train_data is not None:
        raise ConfigError("train_data: give either x= or train_data=, not both")
    if x is not None:
        data = {"arrays": {"x": x, "y": y, "val_x": val_x}}
    elif train_data is not None:
        data = {"train": train_data, "val": val_data}
    elif val_data is not None:
        raise ConfigError("val_data: given without train_data")
    if data is not None:
        kwargs.setdefault("data__source", "tensor")
    if model is not None:
        kwargs.setdefault("model__arch", "custom")
    run_dir = None
    if resume is not None:
        run_dir = Path(resume)
        cfg = _resume_config(run_dir, overrides or [], kwargs, model, data)
    else:
        cfg = load_config(resolve_dict(config, overrides or []), kwargs)
        if cfg.data.source == "tensor" and data is None:
            raise ConfigError(
                "data.source=tensor: needs data from Python: vaekit.train(..., train_data=...) or x=...; "
                "there is no file path for this source"
            )
        if cfg.model.arch == "custom" and model is None:
            raise ConfigError("model.arch=custom: pass the module itself: vaekit.train(..., model=my_module)")
    check_weights(cfg, init_from=run_dir is None)  # before a run directory or tracker run is created
    outcome = Pipeline(cfg, model, data, run_dir=run_dir, resume=run_dir is not None, hooks=hooks).run()
    trainer = outcome.trainer
    from vaekit.engine.checkpoint import latest_checkpoint
    from vaekit.models.adapter import export_module

    trained = trainer.eval_model()
    return TrainResult(
        run_dir=outcome.run_dir,
        history=History(
            {k: v for k, v in r.items() if k != "time"}
            for r in outcome.records
            if r["split"] != "train" or r.get("kind") == "epoch"
        ),
        checkpoint=latest_checkpoint(outcome.run_dir / "checkpoints"),
        model_path=outcome.run_dir / "model.safetensors",
        model=trained if model is None else export_module(trained),
        config=outcome.config,
        summary=outcome.summary,
    )


def _device_choice(kwargs: dict[str, Any]) -> None:
    """``device="cpu"`` / ``cpu=True`` (a Lightning habit) become ``train.device``; a device vaekit cannot pick
    this way is refused with a pointer."""
    cpu = kwargs.pop("cpu", None)
    device = kwargs.pop("device", None)
    if cpu is not None:
        device = "cpu" if cpu else device or "auto"
    if device is None:
        return
    name = str(device)
    if name in ("cpu", "auto", "cuda", "mps"):
        kwargs["train__device"] = "cpu" if name == "cpu" else "auto"
        return
    raise ConfigError(
        f"device: {name!r} cannot be chosen here; vaekit uses the GPU Accelerate finds (train.device=auto) or "
        "the CPU (device='cpu', train.device=cpu); pick one GPU with CUDA_VISIBLE_DEVICES, several with torchrun"
    )


def _check_arguments(overrides: Any, hooks: Any, data: dict[str, Any]) -> None:
    """What ``train`` was given from Python, checked before anything is built (one line each)."""
    from torch.utils.data import IterableDataset

    from vaekit.errors import DataError

    if overrides is not None and (isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"overrides: expected a list of 'key.path=value' strings, got {overrides!r}"[:300])
    if hooks is not None and not all(callable(h) for h in hooks):
        bad = next(h for h in hooks if not callable(h))
        raise ConfigError(f"hooks: each hook must be callable as hook(event, state); got {bad!r}"[:300])
    for name, value in data.items():
        if isinstance(value, torch.Tensor) and value.is_meta:
            raise DataError(f"{name}: a meta tensor holds no values; pass a tensor with data")
        if isinstance(value, IterableDataset):
            raise DataError(f"{name}: an IterableDataset has no length or index; pass a map-style Dataset, a "
                            "DataLoader over it (with val_data), or an array")


def check_weights(cfg: VaekitConfig, init_from: bool = True) -> None:
    """Weights the run needs, before any run directory exists: the pretrained perceptual networks
    (``MissingWeightsError``) and, with ``init_from``, every stage's ``init_from`` (``ConfigError``)."""
    from vaekit.objectives.perceptual import check_perceptual_weights
    from vaekit.pipeline.stages import check_init_from, resolve_stages

    stages = resolve_stages(cfg)
    for stage in stages:
        check_perceptual_weights(stage.cfg.loss.perceptual)
    if init_from:
        check_init_from(stages)


def _resume_config(run_dir: Path, overrides: list[str], kwargs: dict[str, Any], model: Any, data: Any) -> VaekitConfig:
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: {str(run_dir)!r} is not a run directory (no config.yaml)")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("data__source", "model__arch")}
    saved = load_config(run_dir / "config.yaml")
    cfg = load_config(resolve_dict(run_dir / "config.yaml", overrides), kwargs)
    from vaekit.config.resume import check_resume_overrides

    check_resume_overrides(saved, cfg)
    needs = []
    if cfg.data.source == "tensor" and data is None:
        needs.append("the same train_data=/val_data= (or x=)")
    if cfg.model.arch == "custom" and model is None:
        needs.append("model= (a fresh instance of the same class)")
    if needs:
        raise ConfigError(
            f"--resume: {run_dir} was trained on objects passed from Python, which a run directory cannot hold; "
            f"resume it from Python: vaekit.train(resume={str(run_dir)!r}, ...) with {' and '.join(needs)}"
        )
    return cfg
