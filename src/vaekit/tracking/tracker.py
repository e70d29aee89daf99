"""Where metrics go: ``metrics.jsonl``, TensorBoard, optional W&B / MLflow, and the console.

Only the main process writes. W&B and MLflow runs are created once per vaekit run; their ids are kept in
``{run_dir}/trackers.json`` so ``--resume`` continues the same tracker runs. Every record is a flat dict with ``step``, ``epoch``, ``stage``, ``split`` and the
loss terms; TensorBoard tags are ``{split}/{term}``, grouped under ``{stage}/`` when the run has several stages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vaekit.config.schema import LogConfig
from vaekit.errors import ConfigError

META = ("step", "epoch", "stage", "stage_index", "split", "time", "kind")


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        cfg: LogConfig,
        enabled: bool,
        multi_stage: bool,
        config: dict[str, Any],
        resume_step: int | None = None,
        resume_records: int | None = None,
    ):
        self.run_dir = run_dir
        self.cfg = cfg
        self.enabled = enabled
        self.multi_stage = multi_stage
        self.records: list[dict[str, Any]] = []
        self._jsonl = None
        self._tb = None
        self._wandb = None
        self._mlflow = None
        if not enabled:
            return
        if resume_step is not None:
            self._truncate(resume_step, resume_records)
        if cfg.jsonl:
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 (closed in close())
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None  # drop events logged after the checkpoint
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        ids = _read_ids(run_dir) if resume_step is not None else {}
        try:  # a tracker that cannot start is one line now, before training, not a traceback after it
            if cfg.wandb:
                self._wandb = _start("wandb", WandbLogger, run_dir, cfg, config, ids.get("wandb"))
            if cfg.mlflow:
                self._mlflow = _start("mlflow", MlflowLogger, run_dir, cfg, config, ids.get("mlflow"))
        except BaseException:
            self.close(failed=True)
            raise
        if self._wandb is not None or self._mlflow is not None:
            _write_ids(run_dir, {k: t.ids for k, t in (("wandb", self._wandb), ("mlflow", self._mlflow)) if t})

    def _truncate(self, step: int, count: int | None) -> None:
        """On resume: keep exactly the records written before the checkpoint (the first ``count``; by step when
        the checkpoint does not know the count); later ones will be logged again. ``step < 0``: keep none."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        records = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a line cut by a kill: nothing after it was written completely
        if count is not None:
            records = records[:count]
        records = [r for r in records if isinstance(r, dict) and r.get("step", step + 1) <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        tmp.replace(path)
        self.records = records

    def _tag(self, record: dict[str, Any], key: str) -> str:
        split = "train_epoch" if record.get("kind") == "epoch" else record["split"]
        tag = f"{split}/{key}"
        return f"{record['stage']}/{tag}" if self.multi_stage else tag

    def log(self, record: dict[str, Any]) -> None:
        """Write one record everywhere (main process only)."""
        record = {"time": round(time.time(), 3), **record}
        self.records.append(record)
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        if record.get("kind") == "epoch":
            return  # epoch means are for the run's history; the scalars above already show the same terms
        scalars = {k: v for k, v in record.items() if k not in META and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(self._tag(record, key), value, record["step"])
        if self._wandb is not None:
            self._wandb.scalars({self._tag(record, k): v for k, v in scalars.items()}, record["step"])
        if self._mlflow is not None:
            self._mlflow.scalars({self._tag(record, k): v for k, v in scalars.items()}, record["step"])

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        """An image (3, H, W) in [0, 1] to TensorBoard / W&B."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_image(tag, img, step)
        for logger in (self._wandb, self._mlflow):
            if logger is not None:
                logger.image(tag, img, step)

    def audio(self, tag: str, wave: torch.Tensor, step: int, sample_rate: int) -> None:
        """A waveform (C, L) in [-1, 1] to TensorBoard (first channel)."""
        if self.enabled and self._tb is not None:
            self._tb.add_audio(tag, wave.detach().float().cpu()[:1].clamp(-1, 1), step, sample_rate=sample_rate)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self, failed: bool | None = None) -> None:
        """Close every sink. ``failed`` (default: whether an exception is propagating) marks the W&B / MLflow
        run as failed (interrupted runs too: they are resumed into the same tracker run)."""
        if failed is None:
            failed = sys.exc_info()[0] is not None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for name in ("_wandb", "_mlflow"):
            logger = getattr(self, name)
            if logger is not None:
                setattr(self, name, None)
                try:
                    logger.close(failed)
                except Exception as err:  # noqa: BLE001 (the tracker's own failure; the run's files are complete)
                    print(f"warning: log.{name[1:]}: could not close the tracker run ({_first_line(err)})",
                          file=sys.stderr)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _start(name: str, cls: Any, run_dir: Path, cfg: LogConfig, config: dict[str, Any], saved: Any) -> Any:
    """Start one tracker; any failure of the tracker's library (no API key, an unreachable server) is one
    ``ConfigError`` naming the setting to change."""
    if name == "wandb":
        _check_wandb_login(cfg)
    try:
        if name == "mlflow":
            with _quick_mlflow_requests():
                return cls(run_dir, cfg, config, saved)
        return cls(run_dir, cfg, config, saved)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (the tracker library raises many kinds)
        hint = ("check log.mlflow_uri / MLFLOW_TRACKING_URI" if name == "mlflow"
                else "check `wandb login`, or set log.wandb_mode=offline")
        raise ConfigError(f"log.{name}: cannot start a {name} run ({_first_line(err)}); {hint}, or set "
                          f"log.{name}=false") from None


def _check_wandb_login(cfg: LogConfig) -> None:
    """Online W&B needs an API key (``WANDB_API_KEY`` or ``wandb login``'s netrc entry); without one, wandb would
    prompt or fail later."""
    mode = cfg.wandb_mode or os.environ.get("WANDB_MODE") or "online"
    if mode not in ("online", "run") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    host = os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1].split("/")[0].split(":")[0]
    try:
        if host in netrc.read_text(errors="replace"):
            return
    except OSError:
        pass
    raise ConfigError("log.wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`), or set "
                      "log.wandb_mode=offline or log.wandb=false")


@contextlib.contextmanager
def _quick_mlflow_requests() -> Any:
    """An unreachable tracking server answers in seconds, not after MLflow's minutes of retries (unless the
    user set these variables)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    added = {k: v for k, v in quick.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


TRACKERS_FILE = "trackers.json"


def _read_ids(run_dir: Path) -> dict[str, Any]:
    try:
        ids = json.loads((run_dir / TRACKERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def _write_ids(run_dir: Path, ids: dict[str, Any]) -> None:
    tmp = run_dir / (TRACKERS_FILE + ".tmp")
    tmp.write_text(json.dumps({**_read_ids(run_dir), **ids}, indent=1))
    tmp.replace(run_dir / TRACKERS_FILE)


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"log.{name}: true needs the {name} package: pip install 'vaekit[{name}]'") from None


class WandbLogger:
    """A W&B run (``log.wandb``): offline runs write under ``{run_dir}/wandb``; a resumed vaekit run continues the
    W&B run whose id ``trackers.json`` holds (``resume="must"``; offline, ``wandb sync`` joins the pieces)."""

    def __init__(self, run_dir: Path, cfg: LogConfig, config: dict[str, Any], saved: dict[str, Any] | None) -> None:
        self.wandb = _import("wandb")
        kwargs: dict[str, Any] = {"dir": str(run_dir), "config": config, "name": run_dir.name,
                                  "project": cfg.wandb_project or os.environ.get("WANDB_PROJECT") or "vaekit"}
        if cfg.wandb_mode is not None:
            kwargs["mode"] = cfg.wandb_mode
        if saved and saved.get("id"):
            kwargs.update(id=saved["id"], resume="must")
        self.run = self.wandb.init(**kwargs)
        self.ids = {"id": self.run.id, "project": kwargs["project"], "mode": cfg.wandb_mode}

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        self.run.log({tag: self.wandb.Image(img.permute(1, 2, 0).numpy())}, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowLogger:
    """An MLflow run (``log.mlflow``) through ``MlflowClient`` (no process-global active run): the tracking URI is
    ``log.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store ``{run_dir}/mlflow.db`` with artifacts in
    ``{run_dir}/mlartifacts``. Scalars are
    metrics named ``{split}.{term}``; images are artifacts ``{tag}/step_XXXXXXXX.png``; a resumed vaekit run
    continues the MLflow run whose id ``trackers.json`` holds."""

    def __init__(self, run_dir: Path, cfg: LogConfig, config: dict[str, Any], saved: dict[str, Any] | None) -> None:
        _import("mlflow")
        from mlflow.tracking import MlflowClient

        local = not (cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        # MLflow 3 keeps its file store in maintenance mode: the local default is a SQLite store in the run dir
        uri = cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        if saved and saved.get("run_id"):
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(cfg.mlflow_experiment)
            artifacts = (run_dir / "mlartifacts").resolve().as_uri() if local else None
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                cfg.mlflow_experiment, artifact_location=artifacts)
            self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:500]) for k, v in _flat(config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.ids = {"run_id": self.run_id, "tracking_uri": uri}

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "."), float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        array = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        self.client.log_image(self.run_id, array, artifact_file=f"{tag}/step_{step:08d}.png")

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


class Console:
    """A tqdm progress bar (step, loss, it/s, ETA) and one line per validation; silent off the main process.

    When stderr is not a terminal (a log file, a scheduler's output), the bar's carriage-return updates would fill
    the log; it prints one plain line per log interval instead (``log.every``: the steps that log metrics).
    """

    def __init__(self, enabled: bool, progress: bool):
        self.enabled = enabled
        self.progress = progress and enabled
        self.bar = None
        self.lines: dict[str, Any] | None = None
        """Line mode (stderr not a terminal): description, total, step, and the time/step of the last line."""

    def start_stage(self, desc: str, total: int | None, initial: int) -> None:
        self.close()
        if not self.progress:
            return
        if not _is_terminal(sys.stderr):
            self.lines = {"desc": desc, "total": total, "n": initial, "t": time.perf_counter(), "n0": initial}
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1, postfix: dict[str, float] | None = None) -> None:
        if self.lines is not None:
            self.lines["n"] += n
            if postfix:  # a log step: one line
                self._line(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def _line(self, postfix: dict[str, float]) -> None:
        st, now = self.lines, time.perf_counter()
        assert st is not None
        rate = (st["n"] - st["n0"]) / max(now - st["t"], 1e-9)
        st["t"], st["n0"] = now, st["n"]
        total = f"/{st['total']}" if st["total"] else ""
        values = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
        print(f"{st['desc']}: step {st['n']}{total} {values} ({rate:.3g} it/s)", file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        if self.lines is not None:
            self.lines["desc"] = desc
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.lines = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False
