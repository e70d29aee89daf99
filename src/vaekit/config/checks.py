"""Cross-section checks that a single field's type cannot express; each failure is one ConfigError line."""

from __future__ import annotations

from vaekit.config.load import ConfigError
from vaekit.config.schema import VaekitConfig


def check_config(cfg: VaekitConfig) -> None:
    """Stages, transitions and freezing rules, then optimizer/scheduler arguments (before any data is read)."""
    from vaekit.pipeline.stages import check_stages, produced_metrics, resolve_stages

    stages = resolve_stages(cfg)
    check_stages(stages, {st.name: produced_metrics(st.cfg) for st in stages})
    for st in stages:
        prefix = f"stages.{st.index}." if cfg.stages else ""
        _check_optim(st.cfg, prefix)


def _check_optim(cfg: VaekitConfig, prefix: str) -> None:
    for key in ("optim", "disc_optim"):
        optim = getattr(cfg, key)
        for group in optim.group_lr:
            if group not in ("encoder", "decoder"):
                raise ConfigError(f"{prefix}{key}.group_lr.{group}: unknown group; use encoder or decoder")
