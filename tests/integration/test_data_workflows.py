"""Data workflows end to end (issue 19): a pixel-column CSV (the sklearn digits layout) trains as images with the
conv model; an evaluation-only split is refused for training in one line."""

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


def test_training_on_a_split_without_a_train_share_is_one_line_naming_data_split(tmp_path: Path, capsys) -> None:
    from vaekit.cli import main

    code = main(["train", "data.source=shapes", "data.num_samples=40", "data.split=[0,0.5,0.5]", "model.arch=mlp",
                 f"run.dir={tmp_path}", "log.progress=false"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vaekit:")]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("vaekit: config error: data.split: [0.0, 0.5, 0.5] leaves no training data"), err
