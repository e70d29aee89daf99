"""``evaluate`` one model and ``compare`` several on the same batches with the same seeds: the public entry.

Each job has its own module: loading what to evaluate (`vaekit.eval.load`), resolving the data
(`vaekit.eval.data`), the metric table (`vaekit.eval.registry`), the deterministic pass (`vaekit.eval.run`),
comparing (`vaekit.eval.comparison`) and drawing (`vaekit.eval.figures`); the numbers come from `vaekit.eval.metrics`.
This module ties them together for one model and re-exports their public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.eval.comparison import compare, markdown_table
from vaekit.eval.data import EvalData, resolve_data
from vaekit.eval.load import Loaded, check_options, load_for_eval, output_dir, write_failed
from vaekit.eval.registry import ALL_METRICS, METRICS, NEEDS_WEIGHTS, UNITS, default_metrics
from vaekit.eval.run import Artifacts, measure, measure_loaded, options

__all__ = [
    "ALL_METRICS",
    "METRICS",
    "NEEDS_WEIGHTS",
    "UNITS",
    "Artifacts",
    "EvalData",
    "Loaded",
    "compare",
    "default_metrics",
    "evaluate",
    "load_for_eval",
    "markdown_table",
    "measure",
    "resolve_data",
]


def evaluate(
    model_or_run: nn.Module | str | Path,
    data: Any = None,
    *,
    split: str = "val",
    batches: int | None = None,
    batch_size: int = 64,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    k: int = 64,
    checkpoint: str | Path | None = None,
    ema: bool = False,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    lpips_net: str = "alex",
    lpips_pretrained: bool = True,
    lpips_weights: str | Path | None = None,
    fid_feature: nn.Module | None = None,
    fid_weights: str | Path | None = None,
    model: nn.Module | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate one model on a split, deterministically (same seed, same batches → same numbers).

    Args:
        model_or_run: a run directory, a ``model.safetensors`` or an ``nn.Module`` (the VAE protocol).
        data: None (the run's own ``data`` config and ``run.seed``), a ``DataBundle`` (``split`` picks the
            source), a ``Dataset`` of dict batches, a tensor ``(N, ...)``, a tuple ``(x, y)``, a dict
            ``{"x": ..., "y": ...}``, a YAML config path, or dotted overrides applied to the run's config
            (``["data.num_samples=500"]``).
        split: ``val``, ``test`` or ``train`` (bundles and configs only); ``auto``: the test split when the data
            has one, else val. An empty split of a config's data is replaced by all of its samples, with a
            ``note`` in the result saying so.
        batches: evaluate only the first N batches (in order; default all).
        batch_size: samples per batch.
        metrics: names from `ALL_METRICS`; default: those that fit the modality. Defaults that need pretrained
            weights not on disk (LPIPS, FID) are skipped with a note; named ones raise ``MissingWeightsError``.
        seed: seeds posterior samples, importance samples and prior samples.
        k: importance samples per input for ``iwae``.
        checkpoint, ema: evaluate a checkpoint's weights (see `load_for_eval`).
        device: where to run (default: where the module is; run directories load on CPU).
        out_dir: when given, figures are written there (see `vaekit.eval.figures.write_figures`).
        lpips_net, lpips_pretrained, lpips_weights: LPIPS backbone (alex, vgg, squeeze), ``False`` for a random
            trunk (tests only), the torchvision weights file (default: the torch hub cache).
        fid_feature, fid_weights: a feature extractor replacing InceptionV3 / the InceptionV3 weights file.
        model: a fresh instance of the user module a run trained (the run's weights are loaded into it).
        progress: a progress bar over the batches on stderr, then the time each metric took.

    Returns:
        A JSON-able dict: ``metrics`` (name → value), ``units``, ``details`` (per-dimension KL, per-channel
        scale/shift factors, per-label F1, per-factor MIG/SAP), ``skipped`` (name → why), the provenance
        (``model``, ``source``, ``step``, ``split`` (the one used), ``samples``, ``seed``, ``k``), ``note`` when
        there is something to tell (an empty split replaced), and ``files`` with ``out_dir``.
    """
    check_options(batches, batch_size, k, device)  # and the output folder, before any work
    folder = output_dir(out_dir, "out_dir") if out_dir is not None else None
    loaded = load_for_eval(model_or_run, checkpoint, ema, model=model)
    if device is not None:
        loaded.model.to(device)
    eval_data = resolve_data(data, loaded, split)
    result, artifacts = measure_loaded(
        loaded, eval_data, split, batches=batches, batch_size=batch_size, metrics=metrics, seed=seed, k=k,
        opts=options(lpips_net, lpips_pretrained, lpips_weights, fid_feature, fid_weights), progress=progress,
    )
    if eval_data.note:
        result["note"] = eval_data.note
    if folder is not None:
        result["files"] = _figures(artifacts, folder, seed)
    return result


def _figures(artifacts: Artifacts, folder: Path, seed: int) -> list[str]:
    """The figures of one evaluation in ``folder``; a write that fails (a full disk) is one line."""
    from vaekit.eval.figures import write_figures

    try:
        return [str(p) for p in write_figures(artifacts, folder, seed=seed)]
    except OSError as err:
        raise write_failed(err, folder) from None
