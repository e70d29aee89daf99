"""Warnings about configs that are valid but may not do what their author expects (torch-free).

``config_warnings`` returns one line per finding; ``vaekit validate`` prints them and a run prints them at its start.
"""

from __future__ import annotations

from vaekit.config.schema import VaekitConfig


def config_warnings(cfg: VaekitConfig) -> list[str]:
    """One ``warning: ...`` line per setting that trains differently from what it may seem to ask for."""
    from vaekit.config.stages import resolve_stages

    out = []
    stages = resolve_stages(cfg)
    for st in stages:
        where = f"stages.{st.index}." if cfg.stages else ""
        loss = st.cfg.loss
        adv = loss.adversarial
        perceptual = loss.perceptual.kind != "none" and loss.perceptual.weight > 0
        if adv.weight > 0 and adv.adaptive and loss.recon_weight == 0 and not perceptual:
            out.append(
                f"warning: {where}loss.adversarial.adaptive: no reconstruction term to balance (loss.recon_weight=0), "
                f"so the fixed weight loss.adversarial.weight={adv.weight:g} applies"
            )
    return out
