"""Which reconstruction likelihood a run trains with, resolved the same way by the CLI, ``vaekit validate`` and the
Python API: ``loss.recon`` when the config set it, else what the data say (``info.meta["likelihood"]`` of a
table, tags or records source: ``bce`` for binary values, ``gaussian`` otherwise)."""

from __future__ import annotations

from typing import Any

from vaekit.config.schema import VaekitConfig


def data_likelihood(cfg: VaekitConfig, meta: dict[str, Any], resuming: bool = False) -> str | None:
    """The likelihood the data ask for, when it should replace ``loss.recon`` (None: keep the config's)."""
    want = meta.get("likelihood")
    if not want or want == cfg.loss.recon or "recon" in cfg.loss.model_fields_set or resuming:
        return None
    return want


def with_data_likelihood(cfg: VaekitConfig, meta: dict[str, Any], resuming: bool = False) -> VaekitConfig:
    """``cfg`` with ``loss.recon`` set from the data when the config left it at its default."""
    from vaekit.config.load import load_config

    want = data_likelihood(cfg, meta, resuming)
    if want is None:
        return cfg
    tree = cfg.model_dump(mode="json", exclude_unset=False)
    tree["loss"]["recon"] = want
    return load_config(tree)
