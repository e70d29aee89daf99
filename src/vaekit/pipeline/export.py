"""``vaekit export``: a run's weights as a plain ``model.safetensors`` or a diffusers folder, LoRA merged.

The weights come from ``--checkpoint``, else the run's exported ``model.safetensors``, else its newest checkpoint
(an interrupted run). A checkpoint taken inside a lora stage holds base weights and adapters apart; they are
merged here with that stage's ``finetune`` settings, so every export holds plain weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaekit.errors import CheckpointError, ConfigError

FORMATS = ("safetensors", "diffusers", "hub")


def _source(run_dir: Path, checkpoint: str | None) -> Path:
    from vaekit.engine.checkpoint import latest_checkpoint

    if checkpoint is not None:
        path = Path(checkpoint)
        path = path / "model.safetensors" if path.is_dir() else path
    elif (run_dir / "model.safetensors").is_file():
        path = run_dir / "model.safetensors"
    else:
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{run_dir}: no model.safetensors and no complete checkpoint to export")
        path = latest / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if (path.parent / "state.json").is_file():  # a checkpoint's weights: the checkpoint must check out
        from vaekit.engine.checkpoint import read_train_state

        read_train_state(path.parent)
    return path


def _owner_finetune(run_dir: Path, weights: Path) -> Any:
    """The finetune settings of the stage a checkpoint was taken in (its adapters' rank, alpha, targets)."""
    from vaekit.config.load import load_config
    from vaekit.pipeline.stages import resolve_stages

    stages = resolve_stages(load_config(run_dir / "config.yaml"))
    state_file = weights.parent / "state.json"
    index = json.loads(state_file.read_text()).get("stage_index", 0) if state_file.is_file() else len(stages) - 1
    return stages[min(index, len(stages) - 1)].cfg.finetune


def export_run(run_dir: str | Path, fmt: str = "safetensors", checkpoint: str | None = None,
               out: str | Path | None = None) -> Path:
    """Write the run's weights in ``fmt``; returns the file or folder written.

    Args:
        run_dir: a run directory (with ``config.yaml``).
        fmt: ``safetensors`` (``{out}/model.safetensors`` + ``model_config.json``; default out ``RUN_DIR/export``)
            or ``diffusers`` (a ``save_pretrained`` folder; default ``RUN_DIR/diffusers``; model.arch=diffusers)
            or ``hub`` (a folder ready to upload with a model card; default ``RUN_DIR/hub``; see `pipeline.hub`).
        checkpoint: a checkpoint directory or ``.safetensors`` file instead of the run's own export.
        out: the output folder.
    """
    import torch

    from vaekit.config.load import load_config
    from vaekit.engine.checkpoint import read_weights, save_weights
    from vaekit.engine.finetune import is_lora_key, merge_lora_state
    from vaekit.engine.rundir import is_run_dir
    from vaekit.eval.load import output_dir, write_failed
    from vaekit.models.diffusers import DiffusersVAE, build_module, save_diffusers

    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r}; use one of {', '.join(FORMATS)}")
    if not (run_dir / "config.yaml").is_file() or not is_run_dir(run_dir):
        raise ConfigError(f"{run_dir}: not a vaekit run directory (no .vaekit-run marker or checkpoint)")
    if fmt == "hub":
        from vaekit.pipeline.hub import export_hub

        return export_hub(run_dir, Path(out) if out else None, checkpoint, export_run)
    cfg = load_config(run_dir / "config.yaml")
    if fmt == "diffusers" and cfg.model.arch != "diffusers":
        raise ConfigError(f"--format diffusers: the run trained model.arch={cfg.model.arch}, not a diffusers "
                          "autoencoder; use --format safetensors")
    folder = output_dir(Path(out) if out else run_dir / ("diffusers" if fmt == "diffusers" else "export"), "--out")
    weights = _source(run_dir, checkpoint)
    state = read_weights(weights)
    model_cfg = _model_config(run_dir, weights, state, cfg.model.arch)
    module = None
    if cfg.model.arch == "diffusers":
        if model_cfg is not None:
            keys = ("class_name", "config", "recon_kind", "rescale", "pretrained")
            module = DiffusersVAE(**{k: model_cfg[k] for k in keys if k in model_cfg}).module
        else:  # an interrupted run: the architecture from the pretrained source (or the config)
            module = build_module(cfg.model)
            model_cfg = DiffusersVAE(cfg.model.class_name, {}, cfg.loss.recon if cfg.loss.recon in ("mse", "l1")
                                     else "mse", module=module).config
    if any(is_lora_key(k) for k in state):
        if module is None:
            from vaekit.models import build_model_from_config

            if model_cfg is None or model_cfg.get("arch") in (None, "custom"):
                raise ConfigError(f"{weights}: holds LoRA adapters of a user model; merge them in Python "
                                  "(vaekit.load_model(run_dir, model=...)) after the run finishes")
            module = build_model_from_config(model_cfg)
        state = merge_lora_state(state, module, _owner_finetune(run_dir, weights))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            if fmt == "diffusers":
                assert module is not None
                module.load_state_dict(state)
                _latent_factors(run_dir, save_diffusers(module, folder))
                return folder
            meta = {"config": model_cfg or {}, "vaekit_config": cfg.model_dump(mode="json")}
            _save_state(state, folder / "model.safetensors", meta, save_weights)
            (folder / "model_config.json").write_text(json.dumps(model_cfg or {}, indent=1))
            return folder / "model.safetensors"
    except OSError as err:
        raise write_failed(err, folder) from None


def _model_config(run_dir: Path, weights: Path, state: dict[str, Any], arch: str) -> dict[str, Any] | None:
    """The run's ``model_config.json`` (None when the run did not finish), checked: it must build a model the
    weights fit (a damaged file is refused here, not copied into the export)."""
    from vaekit.engine.checkpoint import fit_report
    from vaekit.engine.finetune import is_lora_key
    from vaekit.eval.load import model_skeleton, read_model_config

    file = run_dir / "model_config.json"
    if not file.is_file():
        return None
    model_cfg = read_model_config(file)
    if arch in ("diffusers", "custom") or model_cfg.get("arch") in (None, "custom", "diffusers"):
        return model_cfg
    report = fit_report(model_skeleton(model_cfg, file), {k: v for k, v in state.items() if not is_lora_key(k)})
    if report:
        raise CheckpointError(f"{weights}: the weights do not fit the model of {file} ({report})")
    return model_cfg


def _latent_factors(run_dir: Path, folder: Path) -> None:
    """The run's latent scale/shift (summary.json, written at the end of training) into the diffusers config."""
    from vaekit.latents.stats import write_diffusers_factors

    summary = run_dir / "summary.json"
    stats = json.loads(summary.read_text()).get("latent_stats") if summary.is_file() else None
    if stats:
        write_diffusers_factors(folder, stats)


def _save_state(state: dict[str, Any], path: Path, meta: dict[str, Any], save_weights: Any) -> None:
    """``save_weights`` takes a module: a flat one whose state dict is ``state`` with its own key names."""
    import torch

    class Flat(torch.nn.Module):
        def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
            return dict(state)

    save_weights(Flat(), path, metadata=meta)
