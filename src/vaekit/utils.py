"""Small utilities users expect: seeding and device choice (parameter counts live in ``vaekit.models``)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        from vaekit.errors import ConfigError

        raise ConfigError(f"set_seed: seed must be a whole number, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def get_device() -> torch.device:
    """CUDA if available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")



def tune_cpu_allocator(top_pad_bytes: int = 512 << 20) -> bool:
    """Keep up to ``top_pad_bytes`` of freed heap instead of returning it to the OS after every step (glibc's
    ``M_TOP_PAD``). Training on the CPU allocates and frees the same large activation buffers each step; with
    glibc's defaults every step pays fresh page faults for them (about a third of a conv VAE's step time on 2
    cores, measured). Returns whether the setting took effect (False off glibc)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-2, top_pad_bytes))  # -2: M_TOP_PAD
    except (OSError, AttributeError):
        return False
