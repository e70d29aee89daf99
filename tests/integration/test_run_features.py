"""Run-level behaviour of the pipeline: overrides on resume, the test split, data facts kept in the run
directory, the likelihood a table asks for, and stage changes the model head cannot serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_tree

import vaekit
from vaekit.errors import ConfigError


def test_resume_applies_a_new_learning_rate_and_refuses_other_changes(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "runs", "lr", train={"max_steps": 4}, log={"every": 1})
    first = vaekit.train(tree)
    with pytest.raises(ConfigError, match=r"model\.latent_dim: cannot change when resuming"):
        vaekit.train(resume=first.run_dir, overrides=["model.latent_dim=5", "train.max_steps=6"])
    resumed = vaekit.train(resume=first.run_dir, overrides=["optim.lr=1e-4", "train.max_steps=6"])
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (resumed.run_dir / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train" and "kind" not in r}
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] == pytest.approx(1e-4) and lrs[6] == pytest.approx(1e-4)
    assert resumed.summary["steps"] == 6


def test_test_split_is_evaluated_once_and_recorded_in_the_summary(tmp_path: Path) -> None:
    result = vaekit.train(tiny_tree(tmp_path / "runs", "split", data={"split": [0.8, 0.1, 0.1]}))
    assert set(result.summary["test"]) >= {"loss", "recon", "kl"}
    tests = result.split("test")
    assert len(tests) == 1 and tests[0]["step"] == result.summary["steps"]


def test_table_kind_sets_the_likelihood_and_facts_go_to_data_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = tmp_path / "t.csv"
    rows = ["a,b,c,d"] + [",".join(f"{v:.3f}" for v in rng.normal(size=4)) for _ in range(80)]
    table.write_text("\n".join(rows) + "\n")
    tree = tiny_tree(tmp_path / "runs", "table", data={"source": "table", "path": str(table), "image_size": None,
                                                     "num_samples": None, "normalize": "standard"},
                     model={"arch": "mlp", "hidden_dims": [8], "norm": "none"}, train={"batch_size": 16})
    result = vaekit.train(tree)
    assert result.config.loss.recon == "gaussian"  # continuous columns: not the bce default
    meta = json.loads((result.run_dir / "data_meta.json").read_text())
    assert meta["columns"] == ["a", "b", "c", "d"] and len(meta["mean"]) == 4
    # an explicit choice wins
    forced = vaekit.train({**tree, "run": {**tree["run"], "name": "forced"}, "loss": {"recon": "mse"}})
    assert forced.config.loss.recon == "mse"


def test_a_stage_switching_to_a_gaussian_likelihood_is_refused_by_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from vaekit.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("stages:\n  - {name: a, steps: 2}\n  - {name: b, steps: 2, loss: {recon: gaussian}}\n")
    assert main(["validate", "--no-data", str(cfg)]) == 2
    assert "stages.1.loss.recon: 'gaussian' needs a model built for it" in capsys.readouterr().err


def test_user_data_curves_are_columns_per_epoch(tmp_path: Path) -> None:
    x = (torch.rand(64, 10) > 0.5).float()
    result = vaekit.train(tiny_tree(tmp_path / "runs", "curves", train={"max_steps": None, "epochs": 3,
                                                                      "batch_size": 16}),
                          model={"arch": "mlp", "hidden_dims": [8]}, train_data=x[:48], val_data=x[48:],
                          loss__denoise__mask_rate=0.2)
    curves = result.curves
    assert len(curves["train/loss"]) == 3 and len(curves["val/loss"]) == 3
    assert curves["val/step"] == curves["train/step"]


def test_eval_metrics_run_with_validation_and_drive_a_transition(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "runs", "evalm", train={"max_steps": None, "val_every": 2},
                     eval={"metrics": ["psnr", "ssim", "iwae"], "k": 4})
    tree["stages"] = [{"name": "until_psnr", "metric": "val/psnr", "threshold": 0.0, "mode": "above", "max_steps": 8},
                      {"name": "more", "steps": 2}]
    result = vaekit.train(tree)
    first = [r for r in result.split("val") if r["stage"] == "until_psnr"]
    assert first[0]["step"] == 2 and {"psnr", "ssim", "iwae_nll"} <= set(first[0])
    assert result.summary["steps"] == 4  # psnr > 0 at the first validation ended stage 1 at step 2
    events = (result.run_dir / "metrics.jsonl").read_text()
    assert '"psnr"' in events
    with pytest.raises(ConfigError, match=r"eval\.metrics: unknown metric 'psnrr'"):
        vaekit.train(tiny_tree(tmp_path / "runs", "bad", eval={"metrics": ["psnrr"]}))
