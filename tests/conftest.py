"""Shared fixtures: tiny configs that train in a second or two on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Two threads: the CI machine's two cores, without oversubscribing them when torch picks its own default.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def tiny_tree(run_dir: Path, name: str = "run", **sections: Any) -> dict[str, Any]:
    """A config dict for a tiny conv VAE on 32×32 procedural shapes; ``sections`` deep-merge on top."""
    from vaekit.config.load import deep_merge

    base = {
        "run": {"dir": str(run_dir), "name": name, "seed": 0},
        "data": {"source": "shapes", "num_samples": 400, "image_size": 32},
        "model": {"arch": "conv", "hidden_dims": [8, 16], "latent_dim": 4, "norm": "group"},
        "train": {"batch_size": 32, "max_steps": 12, "val_batches": 2, "keep_last": 50},
        "log": {"progress": False, "samples": False, "every": 4, "plots": False},
    }
    return deep_merge(base, sections)


@pytest.fixture
def tiny(tmp_path: Path):
    """``tiny(name, **sections)`` → a config dict writing under this test's tmp dir."""

    def make(name: str = "run", **sections: Any) -> dict[str, Any]:
        return tiny_tree(tmp_path / "runs", name, **sections)

    return make
