"""A sweep's results: ``results.json``, ``results.md`` (one row per trial, best first) and ``params.png`` (the
metric against each parameter: complete trials as dots, pruned ones at their last reported value as crosses)."""

from __future__ import annotations

import json
from typing import Any

from vaekit.sweep.spec import SweepSpec


def _rows(study: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING:
            continue
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": value, "params": dict(t.params),
                     "run_dir": t.user_attrs.get("run_dir"),
                     "steps_reported": max(t.intermediate_values) if t.intermediate_values else None})
    sign = 1 if spec.settings.direction == "minimize" else -1
    rows.sort(key=lambda r: (r["state"] != "complete", sign * r["value"] if r["value"] is not None else float("inf")))
    return rows


def write_report(study: Any, spec: SweepSpec) -> dict[str, Any]:
    """Write the three files and return the JSON content."""
    s = spec.settings
    rows = _rows(study, spec)
    best = next((r for r in rows if r["state"] == "complete"), None)
    result = {"metric": s.metric, "direction": s.direction, "trials": rows, "best": best,
              "params": {p.key: p.__dict__ | {"choices": list(p.choices)} for p in spec.params},
              "directory": str(spec.directory)}
    (spec.directory / "results.json").write_text(json.dumps(result, indent=1, default=str))
    keys = [p.key for p in spec.params]
    lines = [f"# Sweep: {s.metric} ({s.direction})", "", "| trial | state | " + " | ".join(keys) + f" | {s.metric} |",
             "|" + "---|" * (len(keys) + 3)]
    for r in rows:
        value = f"{r['value']:.5g}" if r["value"] is not None else "-"
        params = " | ".join(_fmt(r["params"].get(k)) for k in keys)
        lines.append(f"| {r['trial']} | {r['state']} | {params} | {value} |")
    if best is not None:
        lines += ["", f"Best: trial {best['trial']} ({s.metric} = {best['value']:.5g}), run directory "
                  f"`{best['run_dir']}`."]
    (spec.directory / "results.md").write_text("\n".join(lines) + "\n")
    _plot(rows, spec)
    return result


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict[str, Any]], spec: SweepSpec) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    params = spec.params
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params, strict=True):
        for state, marker in (("complete", "o"), ("pruned", "x")):
            pts = [(r["params"][p.key], r["value"]) for r in rows
                   if r["state"] == state and r["value"] is not None and p.key in r["params"]]
            if pts:
                xs = [str(x) if p.kind == "choice" else x for x, _ in pts]
                ax.scatter(xs, [y for _, y in pts], marker=marker, label=state)
        if p.kind in ("loguniform", "intlog"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
        ax.set_xlabel(p.key)
        ax.set_ylabel(spec.settings.metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(spec.directory / "params.png", dpi=100)
    plt.close(fig)
