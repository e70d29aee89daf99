"""Run a sweep: an Optuna study stored in SQLite in the sweep's directory, each trial a ``vaekit train`` subprocess.

Layout of ``DIR``: ``study.db`` (the Optuna storage: every finished trial is committed there the moment it ends),
``base.yaml`` (the config the trials start from), ``trials/trial-NNNN/`` (one run directory per trial),
``results.json``, ``results.md`` and ``params.png`` (the metric against each parameter).

Killed and started again with the same command, a sweep continues: finished trials stay as they are; a trial that
was running is marked failed and its parameters are tried again, resuming its run directory from its last
checkpoint. Pruning reads the trial's validation records from its ``metrics.jsonl`` while it trains and stops it
(SIGTERM: it checkpoints and exits) when the pruner says so. Several trials run at once with ``jobs`` (threads
each waiting on a subprocess), several processes per trial with ``nproc`` (torchrun).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vaekit.sweep.spec import SweepSpec, override

POLL_S = 0.5


def _storage_url(directory: Path) -> str:
    return f"sqlite:///{(directory / 'study.db').resolve()}"


def _die_with_parent() -> None:  # runs in the child before exec: it gets SIGKILL when the sweep process dies
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _command(spec: SweepSpec, run_dir: Path, values: dict[str, Any], resume: bool) -> list[str]:
    nproc = spec.settings.nproc
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    if resume:
        return [*launcher, "-m", "vaekit", "train", "--resume", str(run_dir)]
    extra = [override(k, v) for k, v in values.items()]
    run = [f"run.dir={run_dir.parent}", f"run.name={run_dir.name}", "log.progress=false"]
    return [*launcher, "-m", "vaekit", "train", str(spec.directory / "base.yaml"), *run, *extra]


def _records(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of ``metric`` (``split/name``) in the run's records so far (a partial last line skipped)."""
    split, _, name = metric.partition("/")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("split") == split and name in rec and isinstance(rec[name], int | float) and "kind" not in rec:
            out.append((int(rec["step"]), float(rec[name])))
    return out


def _objective(spec: SweepSpec):  # noqa: ANN202 (returns the Optuna objective)
    import optuna

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in spec.params}
        resume_dir = trial.user_attrs.get("resume_dir")
        run_dir = Path(resume_dir) if resume_dir else spec.directory / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        resume = bool(resume_dir) and (run_dir / "checkpoints").is_dir()
        log = open(spec.directory / "trials" / f"trial-{trial.number:04d}.log", "w")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(_command(spec, run_dir, values, resume), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            reported: set[int] = set()
            while proc.poll() is None:
                time.sleep(POLL_S)
                for step, value in _records(run_dir, spec.settings.metric):
                    if step not in reported:
                        reported.add(step)
                        trial.report(value, step)
                        if trial.should_prune():
                            proc.send_signal(signal.SIGTERM)
                            proc.wait()
                            raise optuna.TrialPruned(f"pruned at step {step} ({spec.settings.metric}={value:.4g})")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        found = _records(run_dir, spec.settings.metric)
        if proc.returncode != 0 or not found:
            tail = (spec.directory / "trials" / f"trial-{trial.number:04d}.log").read_text()[-300:].strip()
            raise RuntimeError(f"trial {trial.number} failed (exit {proc.returncode}): {tail.splitlines()[-1:] }")
        return found[-1][1]

    return objective


def _recover(study: Any) -> None:
    """Trials left RUNNING by a killed sweep: marked failed, their parameters queued again with their run
    directory, so the new trial resumes it from its last checkpoint."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        attrs = {"resume_dir": t.user_attrs["run_dir"]} if "run_dir" in t.user_attrs else {}
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)


def run_sweep(spec: SweepSpec) -> dict[str, Any]:
    """Create or continue the study and run trials until ``settings.trials`` have finished (complete or pruned)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.settings
    (spec.directory / "trials").mkdir(parents=True, exist_ok=True)
    (spec.directory / "base.yaml").write_text(yaml.safe_dump(spec.base, sort_keys=False))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if s.pruner == "median" \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name="vaekit", storage=_storage_url(spec.directory), load_if_exists=True,
                                direction=s.direction, sampler=optuna.samplers.TPESampler(seed=s.seed), pruner=pruner)
    _recover(study)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = s.trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        study.optimize(_objective(spec), n_trials=remaining, n_jobs=s.jobs, catch=(RuntimeError,))
    from vaekit.sweep.report import write_report

    return write_report(study, spec)
