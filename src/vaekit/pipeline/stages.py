"""Stages: how one run config becomes a sequence of fits, and when each one ends.

``resolve_stages`` turns ``stages`` + ``stage_defaults`` into fully-validated per-stage configs (a config without
``stages`` is one stage named ``train``). ``StageClock`` decides when a stage is over: after N steps/epochs, when a
smoothed metric crosses a threshold, or on a plateau — with a safety limit that warns when it is what ended it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vaekit.config.load import ConfigError, deep_merge, validate_tree
from vaekit.config.schema import StageConfig, VaekitConfig

SECTIONS = ("data", "loss", "optim", "disc_optim", "train", "log", "finetune")
GROUPS = ("encoder", "decoder", "discriminator")
RUN_WIDE_TRAIN_KEYS = ("ema", "nan_policy", "nan_skip_limit", "keep_last", "compile", "deterministic", "timeout_s",
                        "strategy")


@dataclass
class Stage:
    """One resolved stage: its spec (length, transitions, freezing) and the full config it trains with."""

    index: int
    spec: StageConfig
    cfg: VaekitConfig

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def adversarial(self) -> bool:
        return self.cfg.loss.adversarial.weight > 0

    def frozen_groups(self, previously_frozen: set[str]) -> set[str]:
        """Frozen set after this stage's freeze/unfreeze (freezing carries over from earlier stages)."""
        return (previously_frozen | set(self.spec.freeze)) - set(self.spec.unfreeze)


def resolve_stages(cfg: VaekitConfig) -> list[Stage]:
    """Validated stages, each with its merged config; raises ConfigError (one line) on any problem."""
    base = cfg.model_dump(mode="json", exclude={"stages", "stage_defaults"})
    allowed_defaults = set(StageConfig.model_fields) - {"name"}
    for key in cfg.stage_defaults:
        if key not in allowed_defaults:
            raise ConfigError(f"stage_defaults.{key}: unknown key (allowed: {', '.join(sorted(allowed_defaults))})")

    if not cfg.stages:
        spec = StageConfig(name="train", **_length_of(cfg))
        return [Stage(0, spec, cfg)]

    stages = []
    seen: set[str] = set()
    for i, stage in enumerate(cfg.stages):
        raw = deep_merge(cfg.stage_defaults, stage.model_dump(exclude_unset=True))
        spec = validate_tree(raw, StageConfig, prefix=f"stages.{i}.")
        if spec.name in seen:
            raise ConfigError(f"stages.{i}.name: duplicate stage name {spec.name!r}; stage names must be unique")
        seen.add(spec.name)
        tree = base
        for section in SECTIONS:
            overrides = getattr(spec, section)
            if overrides:
                tree = deep_merge(tree, {section: overrides})
        stage_cfg = validate_tree(tree, VaekitConfig, prefix=f"stages.{i}.")
        stages.append(Stage(i, spec, stage_cfg))
    return stages


def _length_of(cfg: VaekitConfig) -> dict[str, Any]:
    # A single-stage run: train.max_steps wins over train.epochs.
    if cfg.train.max_steps:
        return {"steps": cfg.train.max_steps}
    return {"epochs": cfg.train.epochs} if cfg.train.epochs > 0 else {}


def check_stages(stages: list[Stage], produced: dict[str, set[str]] | None = None) -> None:
    """The cross-field rules ``vaekit validate`` enforces, one ConfigError line each."""
    precision = stages[0].cfg.train.precision
    frozen: set[str] = set()
    for st in stages:
        where = f"stages.{st.index}" if len(stages) > 1 or st.name != "train" else "train"
        spec = st.spec
        both = set(spec.freeze) & set(spec.unfreeze)
        if both:
            raise ConfigError(f"{where}: {sorted(both)} is both frozen and unfrozen; list it in one of freeze/unfreeze")
        for key in ("freeze", "unfreeze"):
            for group in getattr(spec, key):
                # a user model's paths are checked against the module itself when the run starts
                if group.split(".")[0] not in GROUPS and st.cfg.model.arch not in ("custom", "diffusers"):
                    raise ConfigError(
                        f"{where}.{key}: unknown group {group!r}; use one of {', '.join(GROUPS)} "
                        "or a submodule path inside them (e.g. decoder.head)"
                    )
        if spec.epochs is not None and spec.steps is not None:
            raise ConfigError(f"{where}: set either epochs or steps, not both")
        has_metric = spec.metric is not None or spec.plateau_window is not None
        if spec.epochs is None and spec.steps is None and not has_metric:
            if where == "train":
                raise ConfigError("train.epochs: 0 with no train.max_steps leaves nothing to train; set either")
            raise ConfigError(f"{where}: no length; set epochs, steps, or a metric/plateau transition")
        if spec.metric is not None and spec.threshold is None and spec.plateau_window is None:
            raise ConfigError(f"{where}.threshold: required with metric {spec.metric!r} (or set plateau_window)")
        if spec.plateau_window is not None and spec.metric is None:
            raise ConfigError(f"{where}.metric: required with plateau_window (the metric to watch)")
        if has_metric and spec.max_epochs is None and spec.max_steps is None and spec.epochs is None and spec.steps is None:
            raise ConfigError(f"{where}: a metric transition needs a safety limit (max_epochs or max_steps)")
        if spec.metric is not None and produced is not None:
            names = produced[st.name]
            if spec.metric not in names:
                raise ConfigError(
                    f"{where}.metric: {spec.metric!r} is never produced by this stage; it produces "
                    f"{', '.join(sorted(names))}"
                )
        if st.cfg.train.precision != precision:
            raise ConfigError(f"{where}.train.precision: cannot change between stages (the run uses {precision!r})")
        first = stages[0].cfg.train
        for key in RUN_WIDE_TRAIN_KEYS:  # read once for the whole run: a per-stage value would be ignored
            if getattr(st.cfg.train, key) != getattr(first, key):
                raise ConfigError(
                    f"{where}.train.{key}: applies to the whole run and cannot change between stages; "
                    f"set it in the top-level train section"
                )
        frozen = st.frozen_groups(frozen)
        trains = ({"encoder", "decoder"} - frozen) or (st.adversarial and "discriminator" not in frozen)
        if not trains:
            raise ConfigError(f"{where}: nothing to train (frozen: {', '.join(sorted(frozen))}); unfreeze a group")


def produced_metrics(cfg: VaekitConfig) -> set[str]:
    """The metric names a stage with this config logs (``train/…`` and ``val/…``)."""
    terms = {"loss", "recon", "kl", "mse", "kl_weight"}
    loss = cfg.loss
    if loss.perceptual.kind != "none":
        terms.add("perceptual")
    if loss.spectral.weight > 0:
        terms.add("spectral")
    if loss.kl.schedule == "capacity":
        terms.add("capacity")
    train_only = set()
    if loss.adversarial.weight > 0:
        train_only |= {"g_adv", "adv_weight", "d_loss", "d_real", "d_fake", "d_acc"}
        if loss.adversarial.r1_weight > 0:
            train_only.add("r1")
        if loss.adversarial.feature_matching > 0:
            train_only.add("feature_matching")
    val_only = {"val/active_units", "val/kl_dim_mean", "val/kl_dim_max"}
    return {f"train/{t}" for t in terms | train_only} | {f"val/{t}" for t in terms} | val_only


# ------------------------------------------------------------------------------------ the clock
@dataclass
class StageClock:
    """Decides when a stage ends. Fed once per optimizer step (train metrics) and per validation."""

    spec: StageConfig
    steps_per_epoch: int
    smoothing: int = 20
    _window: deque = field(default_factory=deque, repr=False)
    _history: list[float] = field(default_factory=list, repr=False)

    def limit_steps(self) -> int | None:
        """The hard cap in optimizer steps (the length, or the safety limit of a metric stage)."""
        spec = self.spec
        caps = []
        for steps, epochs in ((spec.steps, spec.epochs), (spec.max_steps, spec.max_epochs)):
            if steps is not None:
                caps.append(steps)
            if epochs is not None:
                caps.append(epochs * self.steps_per_epoch)
        return min(caps) if caps else None

    def epochs_done(self, epoch: int) -> str | None:
        """"length" once ``epoch`` epochs are done and the stage (or its safety limit) is counted in epochs."""
        spec = self.spec
        if any(e is not None and epoch >= e for e in (spec.epochs, spec.max_epochs)):
            return "length"
        return None

    def end_message(self, reason: str, step: int) -> str | None:
        """What to tell the user about how the stage ended (None: it simply ran its length)."""
        spec = self.spec
        if reason == "length":
            if (spec.metric is not None or spec.plateau_window is not None) and spec.epochs is None and spec.steps is None:
                return f"warning: stage {spec.name!r} hit its safety limit before {spec.metric!r} met its transition"
            return None
        return f"stage {spec.name!r} ends at step {step}: {reason}"

    def observe(self, name: str, value: float) -> None:
        if name != self.spec.metric or not math.isfinite(value):
            return
        self._window.append(value)
        if len(self._window) > self.smoothing:
            self._window.popleft()
        self._history.append(sum(self._window) / len(self._window))

    def metric_done(self) -> str | None:
        """A reason string when the threshold or plateau rule says the stage is over, else None."""
        spec = self.spec
        if not self._history:
            return None
        current = self._history[-1]
        if spec.threshold is not None:
            crossed = current <= spec.threshold if spec.mode == "below" else current >= spec.threshold
            if crossed:
                return f"{spec.metric} {current:.4g} crossed {spec.threshold:g}"
        if spec.plateau_window is not None and len(self._history) > spec.plateau_window:
            old = self._history[-1 - spec.plateau_window]
            sign = 1.0 if spec.mode == "below" else -1.0
            gain = sign * (old - current) / max(abs(old), 1e-12)
            if gain < (spec.plateau_threshold or 1e-3):
                return f"{spec.metric} improved {gain:.2%} over the last {spec.plateau_window} observations"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self._window), "history": list(self._history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._window = deque(state.get("window", []))
        self._history = list(state.get("history", []))
