"""``curves.png``: training and validation curves, one panel per loss term."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIP = {"step", "epoch", "stage", "stage_index", "split", "time", "samples_per_sec", "lr", "disc_lr", "kind"}


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Plot every numeric term of train and val records against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = sorted({k for r in records for k, v in r.items() if k not in SKIP and isinstance(v, (int, float))})
    if not terms:
        return
    ncol = min(3, len(terms))
    nrow = (len(terms) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3 * nrow), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):
        for split, style in (("train", "-"), ("val", "o-")):
            pts = [(r["step"], r[term]) for r in records if r.get("split") == split and term in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
