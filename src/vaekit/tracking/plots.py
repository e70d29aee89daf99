"""``curves.png``: training and validation curves, one panel per loss term."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIP = {"step", "epoch", "stage", "stage_index", "split", "time", "samples_per_sec", "lr", "disc_lr", "kind"}


SERIES = (  # (label, style, which records)
    ("train (per log)", "-", lambda r: r.get("split") == "train" and r.get("kind") != "epoch"),
    ("train (epoch mean)", "s--", lambda r: r.get("split") == "train" and r.get("kind") == "epoch"),
    ("val", "o-", lambda r: r.get("split") == "val"),
)


def stage_boundaries(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """``(step, name)`` where each stage after the first starts (the step of its first record)."""
    out, current = [], None
    for r in records:
        stage = r.get("stage")
        if stage is not None and stage != current:
            if current is not None:
                out.append((r["step"], stage))
            current = stage
    return out


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Plot every numeric term against the step: per-log train points, train epoch means and validation as
    separate series, with a dashed line where each stage starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = sorted({k for r in records for k, v in r.items() if k not in SKIP and isinstance(v, (int, float))})
    if not terms:
        return
    boundaries = stage_boundaries(records)
    ncol = min(3, len(terms))
    nrow = (len(terms) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3 * nrow), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):
        for label, style, keep in SERIES:
            pts = [(r["step"], r[term]) for r in records if keep(r) and term in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=label, markersize=3)
        for step, name in boundaries:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
            ax.annotate(name, (step, 1.0), xycoords=("data", "axes fraction"), fontsize=6, va="top", rotation=90)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
