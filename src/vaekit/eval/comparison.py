"""``compare`` several models on the same batches with the same seeds, and the markdown table of the results."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vaekit.errors import ConfigError
from vaekit.eval.data import describe, expected_shape, fixed_size, resolve_data
from vaekit.eval.load import Loaded, check_options, load_for_eval, output_dir, write_failed
from vaekit.eval.run import measure_loaded, options


def _check_compatible(models: list[Loaded]) -> None:
    """All models must take the same modality and channels, and the same size when one is fixed-size."""
    first = models[0]
    a = expected_shape(first.model)
    for other in models[1:]:
        b = expected_shape(other.model)
        if a is None or b is None:
            continue
        ok = len(a) == len(b) and a[0] == b[0]
        if ok and (fixed_size(first.model) or fixed_size(other.model)):
            ok = a[1:] == b[1:]
        if not ok:
            raise ConfigError(
                f"compare: {other.name} expects {describe(b)} but {first.name} expects {describe(a)}; "
                "compare models of the same modality, channels and size"
            )


def compare(
    models: Sequence[nn.Module | str | Path],
    data: Any = None,
    *,
    split: str = "val",
    batches: int | None = None,
    batch_size: int = 64,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    k: int = 64,
    out_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate several models on the same batches with the same seeds.

    Args:
        models: run directories, ``model.safetensors`` files or modules (at least two).
        data: as in `evaluate`; None uses the first model's run config.
        out_dir: when given, writes ``compare.json``, ``compare.md`` (a markdown table) and ``compare.png``.
        names: column names (default: run directory names, made unique).
        **kwargs: ``device``, ``lpips_net``, ``lpips_pretrained``, ``lpips_weights``, ``fid_feature``,
            ``fid_weights``, ``progress`` as in `evaluate`.

    Returns:
        ``{"models": [names], "results": {name: evaluate's dict}, "data", "split", "seed", "notes"}``
        (+ ``files``); ``notes`` says what the numbers cannot tell (e.g. −ELBOs under different likelihoods).

    Raises:
        ConfigError: models with different modality, channels or (fixed) size, naming both.
    """
    if len(models) < 2:
        raise ConfigError(f"compare: needs at least two models (got {len(models)})")
    check_options(batches, batch_size, k, kwargs.get("device"))
    directory = output_dir(out_dir, "--out") if out_dir is not None else None
    loaded = [load_for_eval(m) for m in models]
    labels = list(names) if names is not None else _unique([m.name for m in loaded])
    for item, label in zip(loaded, labels, strict=True):
        item.name = label
    _check_compatible(loaded)
    eval_data = resolve_data(data, loaded[0], split)
    device = kwargs.pop("device", None)
    progress = kwargs.pop("progress", False)
    opts = options(**kwargs)
    results, artifacts = {}, {}
    for item in loaded:
        if device is not None:
            item.model.to(device)
        results[item.name], artifacts[item.name] = measure_loaded(
            item, eval_data, split, batches=batches, batch_size=batch_size, metrics=metrics, seed=seed, k=k,
            opts=opts, progress=progress,
        )
    out = {"models": labels, "results": results, "data": eval_data.description, "split": eval_data.split or split,
           "seed": seed, "notes": comparison_notes(results, eval_data.note)}
    if directory is not None:
        from vaekit.eval.figures import comparison_figure

        try:
            directory.mkdir(parents=True, exist_ok=True)
            notes = "".join(f"\n> note: {n}\n" for n in out["notes"])
            (directory / "compare.md").write_text(markdown_table(results) + "\n" + notes)
            comparison_figure(artifacts, results, directory / "compare.png")
            out["files"] = [str(directory / n) for n in ("compare.json", "compare.md", "compare.png")]
            (directory / "compare.json").write_text(json.dumps(out, indent=1))
        except OSError as err:
            raise write_failed(err, directory) from None
    return out


def comparison_notes(results: Mapping[str, Mapping[str, Any]], data_note: str | None = None) -> list[str]:
    """What a reader of the comparison must know: models under different likelihoods (their −ELBO / IWAE
    values are log-likelihoods of different models of the data: not comparable), and the data's own note."""
    notes = [data_note] if data_note else []
    kinds = {name: r.get("recon") for name, r in results.items()}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{n}: {k}" for n, k in kinds.items())
        notes.append(
            f"the models use different likelihoods ({shown}); their neg_elbo / iwae_nll are not comparable "
            "(compare mse, psnr, ssim or other likelihood-free metrics instead)"
        )
    return notes


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per metric (with its unit), one column per model."""
    names = list(results)
    rows: list[str] = []
    for result in results.values():
        rows += [m for m in result["metrics"] if m not in rows]
    units = {m: u for r in results.values() for m, u in r["units"].items()}
    lines = ["| metric | unit | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for metric in rows:
        cells = [_format(results[n]["metrics"].get(metric)) for n in names]
        lines.append(f"| {metric} | {units.get(metric, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
