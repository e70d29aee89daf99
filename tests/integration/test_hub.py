"""``vaekit export --format hub``: a folder with weights, configs, latent stats, curves and a model card that
``vaekit.load_model`` loads back; ``vaekit push`` and hub ids offline are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_tree

import vaekit
from vaekit.cli import main as cli_main
from vaekit.errors import ConfigError


def test_hub_export_folder_loads_back_with_equal_outputs(tmp_path: Path, capsys) -> None:
    cfg = tiny_tree(tmp_path / "runs", "t", data={"num_samples": 64, "image_size": 16, "split": [0.8, 0.1, 0.1]},
                    train={"max_steps": 2}, log={"plots": True})
    run = vaekit.train(cfg).run_dir
    assert cli_main(["export", str(run), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    folder = tmp_path / "hub"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "model_config.json", "config.yaml", "latent_stats.json", "README.md",
            "curves.png"} <= names
    card = (folder / "README.md").read_text()
    for needle in ("## Data", "## Objective", "Final validation", "Test split", "scaling_factor", "curves.png",
                   "vaekit.load_model"):
        assert needle in card
    a, b = vaekit.load_model(run), vaekit.load_model(folder)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(a.encode(x)[0], b.encode(x)[0])


def test_push_and_hub_ids_offline_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="hub cannot serve it") as err:
        vaekit.load_model("nobody-h16/no-such-vae")
    assert "\n" not in str(err.value)
    run = vaekit.train(tiny_tree(tmp_path / "runs", "t", data={"num_samples": 40, "image_size": 16},
                                 train={"max_steps": 1})).run_dir
    capsys.readouterr()
    assert cli_main(["push", str(run), "nobody-h16/no-such-vae"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("vaekit: ") and "\n" not in line and "huggingface-cli login" in line
    assert (run / "hub" / "README.md").is_file()
