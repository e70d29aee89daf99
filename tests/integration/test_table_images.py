"""A pixel-column CSV (the sklearn digits layout) trains as images with the conv model (issue 19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import vaekit


def _digits_csv(path: Path, n: int) -> Path:
    """The sklearn digits layout: a label column, then 64 pixel columns with values 0-16."""
    pix = np.random.default_rng(0).integers(0, 17, size=(n, 64))
    names = ["target", *(f"pixel_{r}_{c}" for r in range(8) for c in range(8))]
    body = "\n".join(",".join(map(str, [i % 10, *row])) for i, row in enumerate(pix))
    path.write_text(",".join(names) + "\n" + body + "\n")
    return path

def test_pixel_column_csv_trains_as_images_with_the_conv_model(tmp_path: Path) -> None:
    path = _digits_csv(tmp_path / "digits.csv", n=32)
    result = vaekit.train(
        {
            "run": {"dir": str(tmp_path), "name": "digits"},
            "data": {"source": "table", "path": str(path), "columns": "1:", "shape": [1, 8, 8], "scale": 16},
            "model": {"arch": "conv", "hidden_dims": [4, 8], "latent_dim": 2},
            "train": {"max_steps": 2, "batch_size": 8, "val_batches": 1},
            "log": {"progress": False, "samples": False, "plots": False},
        }
    )
    assert type(result.model).__name__.startswith("Conv") and (result.run_dir / "metrics.jsonl").is_file()
