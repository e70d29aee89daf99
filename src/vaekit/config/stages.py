"""Stages as configuration: ``stages`` + ``stage_defaults`` resolved into per-stage configs, and the rules they obey.

``resolve_stages`` turns ``stages`` + ``stage_defaults`` into fully-validated per-stage configs (a config without
``stages`` is one stage named ``train``); ``check_stages`` enforces the cross-stage rules. When a stage ends at run
time is ``vaekit.pipeline.stages.StageClock``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vaekit.config.load import deep_merge, validate_tree
from vaekit.config.schema import StageConfig, VaekitConfig
from vaekit.errors import ConfigError

SECTIONS = ("data", "loss", "optim", "disc_optim", "train", "log", "eval", "finetune")
GROUPS = ("encoder", "decoder", "discriminator")
RUN_WIDE_TRAIN_KEYS = (
    "ema", "nan_policy", "nan_skip_limit", "keep_last", "compile", "deterministic", "timeout_s", "strategy", "device",
)


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

    @property
    def factor(self) -> bool:
        """A FactorVAE stage: its latent discriminator trains as the second update."""
        return self.cfg.loss.variant == "factor_vae"

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
        if cfg.stage_defaults:  # nothing uses them, but a mistake in them is still a mistake
            validate_tree(deep_merge(cfg.stage_defaults, {"name": "stage_defaults"}), StageConfig, prefix="stage_defaults.")
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


def check_stages(
    stages: list[Stage], produced: dict[str, set[str]] | None = None, model_recon: str | None = None
) -> None:
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
        if spec.threshold is not None and spec.metric is None:
            raise ConfigError(f"{where}.metric: required with threshold {spec.threshold:g} (the metric to compare)")
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
        recon = st.cfg.loss.recon
        if model_recon is not None and (recon == "gaussian") != (model_recon == "gaussian") and st.cfg.model.arch not in ("custom", "diffusers"):
            # the model is built once, for the top-level loss.recon: a gaussian likelihood needs its variance head
            raise ConfigError(
                f"{where}.loss.recon: {recon!r} needs a model built for it, but the model is built for the "
                f"top-level loss.recon={model_recon!r}; set loss.recon at the top level (a stage may switch "
                "between mse, l1 and bce, not to or from gaussian)"
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
