"""Finishing a run: the test split evaluated once, the weights exported (EMA when enabled; LoRA merged; FSDP
gathered; a diffusers folder for diffusers models), ``summary.json`` and ``curves.png``."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from vaekit.config.schema import VaekitConfig
from vaekit.engine import checkpoint as ckpt
from vaekit.engine.plan import Plan
from vaekit.errors import RunDirError
from vaekit.latents.stats import stats_of_batches, write_diffusers_factors
from vaekit.models import count_parameters
from vaekit.models.adapter import export_module
from vaekit.models.diffusers import DiffusersVAE, save_diffusers
from vaekit.pipeline.build import RunParts
from vaekit.pipeline.plan import batches, save_adapters
from vaekit.tracking.plots import plot_curves


def finish_run(run: RunParts, plan: Plan) -> dict[str, Any]:
    """Evaluate the test split, export weights, write summary.json and curves.png; the summary ({} off the main
    process)."""
    t = run.trainer
    test = _test_metrics(run, plan)
    full = _gather_if_sharded(run)
    t.rt.wait()
    if not run.rt.is_main:
        return {}
    _export(run, export_module(t.eval_model()) if full is None else full)
    latent = _latent_stats(run, plan) if full is None else None
    if latent is not None and (run.run_dir / "diffusers").is_dir():
        write_diffusers_factors(run.run_dir / "diffusers", latent)
    records = t.tracker.records
    last_val = next((r for r in reversed(records) if r["split"] == "val"), {})
    last_train = next((r for r in reversed(records) if r["split"] == "train" and r.get("kind") == "epoch"), {})
    summary = {
        "run_dir": str(run.run_dir),
        "steps": t.state.step,
        "stages": [s.name for s in run.stages],
        "wall_time_sec": round(t.elapsed(), 2),
        "parameters": count_parameters(run.model),
        "discriminator_parameters": count_parameters(run.disc) if run.disc is not None else 0,
        "final_train": _metrics_only(last_train),
        "final_val": _metrics_only(last_val),
        "test": test,
        "skipped_batches": t.state.skipped_batches,
        "data": run.info.description,
        **run.rt.placement(),
        "checkpoint": str(ckpt.latest_checkpoint(run.run_dir / "checkpoints")),
        "model": str(run.run_dir / "model.safetensors"),
        **_export_paths(run),
        "latent_stats": latent,
        "config": run.cfg.model_dump(mode="json"),  # the resolved config the metrics above came from
    }
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if run.cfg.log.plots:
        plot_curves(records, run.run_dir / "curves.png")
    return summary


def _export(run: RunParts, export: nn.Module) -> None:
    """``model.safetensors`` (with the model and run configs in its metadata), ``model_config.json`` and, for a
    diffusers model, the ``diffusers`` folder."""
    t = run.trainer
    model_cfg = getattr(t.eval_model(), "config", {})
    meta = {"config": model_cfg, "vaekit_config": _portable(run.cfg)}
    _export_finetuned(run, export)
    try:
        ckpt.save_weights(export, run.run_dir / "model.safetensors", metadata=meta)
    except OSError as err:
        raise RunDirError(
            f"cannot write {run.run_dir / 'model.safetensors'} in run directory {str(run.run_dir)!r} "
            f"({err.strerror or err}); the last complete checkpoint is "
            f"{ckpt.latest_checkpoint(run.run_dir / 'checkpoints')}: free space and run "
            f"`vaekit train --resume {run.run_dir}` to export again"
        ) from None
    (run.run_dir / "model_config.json").write_text(json.dumps(model_cfg, indent=1))
    if isinstance(t.eval_model(), DiffusersVAE):
        save_diffusers(export, run.run_dir / "diffusers")


def _latent_stats(run: RunParts, plan: Plan) -> dict[str, Any] | None:
    """Per-channel latent mean/std and the diffusion scale/shift (`vaekit.latents.stats`) of the posterior means
    of the validation split, in one pass on this (the main) process; None without validation samples."""
    from vaekit.data.loader import BatchLoader

    val = plan.data.val
    if val is None or not hasattr(val, "__len__") or len(val) == 0 or not hasattr(val, "__getitem__"):
        return None
    model = run.trainer.eval_model()
    loader = BatchLoader(val, plan.cfg.train.batch_size, shuffle=False, drop_last=False, seed=run.cfg.run.seed)
    device = next(model.parameters()).device
    moved = ({k: v.to(device) for k, v in b.items()} for b in loader)
    training = model.training
    model.eval()  # batch norm in inference mode (running statistics; a last batch of 1 is fine)
    try:
        with torch.no_grad():
            return stats_of_batches(model.encode, moved)  # float32: the figures a diffusion model is trained with
    finally:
        model.train(training)


def _test_metrics(run: RunParts, plan: Plan) -> dict[str, float]:
    """The last stage's test split, evaluated once with the final (EMA) weights and that stage's objective;
    {} without one."""
    test = plan.data.test
    if test is None or len(test) == 0:
        return {}
    t = run.trainer
    loader = batches(run.rt, test, plan.cfg, train=False)
    means = t.validator.run(plan, t.state, t.eval_model(), loader=loader)
    where = {"stage": plan.name, "stage_index": plan.index}  # also when a resumed finished run never began one
    t.metrics.write({**where, "step": t.state.step, "epoch": t.state.epoch, "split": "test", **means}, t.state)
    return means


def _gather_if_sharded(run: RunParts) -> nn.Module | None:
    """FSDP: the full weights (collective) in a fresh unsharded copy of the module on the main process."""
    if not (run.rt.strategy == "fsdp" and run.rt.world > 1):
        return None
    state = run.tuner.gather()
    run.tuner.gathered = None
    if not run.rt.is_main:
        return None
    config = dict(getattr(run.model, "config", {}))
    from vaekit.models import build_model_from_config

    fresh = export_module(build_model_from_config(config))
    fresh.load_state_dict(state)
    return fresh


def _export_finetuned(run: RunParts, export: nn.Module) -> None:
    """Adapters still present at the end: written alone, then merged, so the exports hold plain weights."""
    if run.tuner.lora is not None and export is run.tuner.module:
        save_adapters(run, run.stages[run.trainer.state.stage_index].name)
        run.tuner.merge()


def _export_paths(run: RunParts) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    if (run.run_dir / "diffusers").is_dir():
        paths["diffusers"] = str(run.run_dir / "diffusers")
    if (run.run_dir / "lora").is_dir():
        paths["lora"] = sorted(str(p) for p in (run.run_dir / "lora").iterdir() if p.is_dir())
    return paths


def _portable(cfg: VaekitConfig) -> dict[str, Any]:
    """The config stored in an export: where the run lived (run.dir, run.name) is left out, so identical runs
    give byte-identical ``model.safetensors`` files."""
    tree = cfg.model_dump(mode="json")
    tree["run"] = {"seed": tree["run"]["seed"]}
    return tree


def _metrics_only(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, float) and k != "time"}
