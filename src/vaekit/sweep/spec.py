"""What a sweep searches: parameters (config key + distribution), the metric and its direction, checked up front.

Everything here fails in one line before any trial trains: a parameter that is not a config key (or whose values
the config refuses), a distribution string that does not parse, a metric the runs never log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vaekit.config.load import load_config, resolve_dict
from vaekit.config.schema import SweepConfig, VaekitConfig
from vaekit.errors import ConfigError

KINDS = ("loguniform", "uniform", "int", "intlog", "choice")


@dataclass(frozen=True)
class Param:
    """One searched config key: ``kind`` in KINDS; ``low``/``high`` for ranges, ``choices`` for ``choice``."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind in ("int", "intlog"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.kind == "intlog")
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")

    def examples(self) -> list[Any]:
        """Values to check against the config before the study starts (the range's ends, every choice)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "intlog"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def parse_param(text: str) -> Param:
    """``KEY=KIND:ARGS`` (``optim.lr=loguniform:1e-4:1e-2``, ``loss.beta=choice:1,4,10``) → ``Param``."""
    key, eq, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not eq or not key or not spec:
        raise ConfigError(f"--param {text!r}: expected KEY=DISTRIBUTION, e.g. optim.lr=loguniform:1e-4:1e-2")
    kind, _, args = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"--param {key}: unknown distribution {kind!r} in {spec!r}; use one of {', '.join(KINDS)} "
                          "(loguniform:LO:HI, uniform:LO:HI, int:LO:HI, intlog:LO:HI, choice:A,B,C)")
    if kind == "choice":
        values = tuple(yaml.safe_load(v) for v in args.split(",") if v.strip())
        if not values:
            raise ConfigError(f"--param {key}: choice needs values, e.g. choice:1,4,10")
        return Param(key, kind, choices=values)
    parts = args.split(":")
    try:
        low, high = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"--param {key}: {spec!r} does not parse; expected {kind}:LOW:HIGH with LOW < HIGH")
    if kind in ("loguniform", "intlog") and low <= 0:
        raise ConfigError(f"--param {key}: {kind} needs LOW > 0 (got {parts[0]})")
    if kind in ("int", "intlog") and (low != int(low) or high != int(high)):
        raise ConfigError(f"--param {key}: {kind} bounds must be integers (got {spec!r})")
    return Param(key, kind, low, high)


@dataclass
class SweepSpec:
    """A checked sweep: the base config file/tree, its parameters and the settings."""

    base: dict[str, Any]
    params: list[Param]
    settings: SweepConfig
    directory: Path
    extra: list[str] = field(default_factory=list)


def override(key: str, value: Any) -> str:
    """A dotted override for the command line (values in YAML flow syntax)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix(chr(10) + '...').strip()}"


def build_spec(config: str | None, overrides: list[str], flags: dict[str, Any], params: list[str]) -> SweepSpec:
    """Merge the config's ``sweep:`` section with the command-line flags, parse and check everything.

    Raises ``ConfigError`` (one line) for a bad parameter, distribution or metric; trains nothing.
    """
    tree = resolve_dict(config, overrides)
    cfg = load_config(tree)
    section = (cfg.sweep or SweepConfig()).model_dump()
    section.update({k: v for k, v in flags.items() if v is not None})
    parsed = {p.key: p for p in (parse_param(f"{k}={v}") for k, v in section.get("params", {}).items())}
    parsed.update({p.key: p for p in map(parse_param, params)})
    section["params"] = {}
    try:
        settings = SweepConfig(**section)
    except ValueError as err:
        raise ConfigError(f"sweep: {str(err).splitlines()[-2].strip() if len(str(err).splitlines()) > 1 else err}") from None
    if not parsed:
        raise ConfigError("sweep: no parameters; add --param KEY=DISTRIBUTION (or a sweep.params section)")
    for param in parsed.values():
        _check_param(tree, param)
    _check_metric(cfg, settings.metric)
    name = cfg.run.name or "study"
    directory = Path(settings.dir) if settings.dir else Path(cfg.run.dir) / f"sweep-{name}"
    tree.pop("sweep", None)
    return SweepSpec(tree, list(parsed.values()), settings, directory)


def _check_param(tree: dict[str, Any], param: Param) -> None:
    if param.key.split(".")[0] in ("run", "sweep", "stages", "stage_defaults", "preset"):
        raise ConfigError(f"--param {param.key}: run/sweep/stage keys are set by the sweep itself; search a training key")
    for value in param.examples():
        try:
            load_config(tree, [override(param.key, value)])
        except ConfigError as err:
            raise ConfigError(f"--param {param.key}={value!r}: {err}") from None


def _check_metric(cfg: VaekitConfig, metric: str) -> None:
    from vaekit.config.stages import resolve_stages
    from vaekit.objectives.terms import produced_metrics

    produced: set[str] = set()
    for stage in resolve_stages(cfg):
        produced |= produced_metrics(stage.cfg.loss, stage.cfg.eval.metrics)
    if metric not in produced:
        close = sorted(m for m in produced if m.split("/")[-1] == metric.split("/")[-1]) or sorted(
            m for m in produced if m.startswith("val/"))
        raise ConfigError(f"--metric {metric}: the runs never log it; they log e.g. {', '.join(close[:8])}")
