"""vaekit: train variational autoencoders on images, video, audio and tables.

Heavy modules (torch) are imported on first use, so ``vaekit --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "train": "vaekit.api",
    "load_model": "vaekit.api",
    "TrainResult": "vaekit.api",
    "load_config": "vaekit.config.load",
    "ConfigError": "vaekit.config.load",
    "VaekitConfig": "vaekit.config.schema",
    "set_seed": "vaekit.utils",
    "get_device": "vaekit.utils",
    "count_parameters": "vaekit.models",
    "model_summary": "vaekit.models",
    "build_model": "vaekit.models",
    "evaluate": "vaekit.eval.evaluate",
    "compare": "vaekit.eval.evaluate",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaekit' has no attribute {name!r}")
