"""Research objectives and priors through the real entry points: presets train via ``vaekit.train`` and the CLI,
with the mlp and conv families and a user's module, in stages, with EMA, and resume bitwise (SIGKILL included)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_tree
from test_resume import (
    CHILD_ENV,
    assert_same_tree,
    assert_same_weights,
    complete_checkpoints,
    read_jsonl,
    train_and_kill,
    truncate_after,
    without_timing,
)
from torch import nn

import vaekit
from vaekit.errors import ConfigError

MLP = {"arch": "mlp", "hidden_dims": [32], "latent_dim": 4, "norm": "none"}
HVAE = {"arch": "hvae", "hidden_dims": [32], "latent_dim": 6, "top": {"latent_dim": 3, "hidden_dims": [16]}}

# preset → overrides that keep it tiny
PRESETS: dict[str, dict[str, Any]] = {
    "beta-tcvae": {},
    "dip-vae-i": {},
    "dip-vae-ii": {"model": MLP},
    "iwae": {"loss": {"iw": {"k": 3}}},
    "miwae": {"loss": {"iw": {"k": 2, "m": 2}}, "model": MLP},
    "vampprior": {"model": {"prior": {"pseudo_inputs": 16}, "norm": "group"}},
    "hvae-2": {"model": HVAE, "loss": {"iw": {"k": 2}}},
    "factor-vae": {"loss": {"factor": {"hidden": 32, "layers": 2}}},
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_research_preset_trains_and_logs_its_terms(tmp_path: Path, preset: str) -> None:
    tree = tiny_tree(tmp_path, preset, preset=preset, **PRESETS[preset])
    tree["train"]["max_steps"] = 6
    result = vaekit.train(tree)
    val = result.summary["final_val"]
    assert all(torch.isfinite(torch.tensor(v)) for v in val.values())
    expected = {"beta-tcvae": {"mi", "tc", "dwkl"}, "dip-vae-i": {"dip"}, "dip-vae-ii": {"dip"}}.get(preset, set())
    assert expected | {"loss", "recon", "kl"} <= set(val)
    assert (result.run_dir / "model.safetensors").is_file()
    if preset == "factor-vae":  # the TC estimate and the latent discriminator's own update are logged in training
        train = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if r["split"] == "train" and "kind" not in r]
        assert {"tc", "d_loss", "d_acc", "disc_lr"} <= set(train[-1])
        assert (result.run_dir / "checkpoints" / f"step_{6:08d}" / "discriminator.safetensors").is_file()


def test_iwae_preset_trains_through_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    tree = tiny_tree(tmp_path / "runs", "cli")
    tree["train"]["max_steps"] = 4
    cfg.write_text(yaml.safe_dump(tree))
    proc = subprocess.run([sys.executable, "-m", "vaekit", "train", "--preset", "iwae", str(cfg), "loss.iw.k=2"],
                          capture_output=True, text=True, timeout=240, env=CHILD_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_jsonl(tmp_path / "runs" / "cli" / "metrics.jsonl")
    assert any(r["split"] == "val" and "loss" in r for r in records)


class UserVAE(nn.Module):
    """A user's module: encode → (mean, logvar), decode → logits; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 8))
        self.dec = nn.Sequential(nn.Linear(4, 32 * 32), nn.Unflatten(1, (1, 32, 32)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc(x).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


@pytest.mark.parametrize("variant", ["iwae", "beta_tcvae", "dip_vae_ii"])
def test_user_module_trains_with_encode_decode_only_variants(tmp_path: Path, variant: str) -> None:
    torch.manual_seed(0)
    tree = tiny_tree(tmp_path, variant, loss={"variant": variant, "iw": {"k": 3}})
    tree["train"]["max_steps"] = 4
    del tree["model"]
    result = vaekit.train(tree, model=UserVAE())
    assert "loss" in result.summary["final_val"]


def test_beta_vae_warmup_then_beta_tcvae_in_stages(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path, "stages", stages=[
        {"name": "warmup", "steps": 4, "loss": {"beta": 4.0, "kl": {"schedule": "linear", "warmup_steps": 4}}},
        {"name": "tcvae", "steps": 4, "loss": {"variant": "beta_tcvae"}},
    ])
    del tree["train"]["max_steps"]
    result = vaekit.train(tree)
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    tc_val = [r for r in records if r["split"] == "val" and r.get("stage") == "tcvae"]
    assert tc_val and "tc" in tc_val[-1]
    assert not any("tc" in r for r in records if r["split"] == "val" and r.get("stage") == "warmup")


def test_vampprior_with_more_pseudo_inputs_than_samples_is_refused(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path, "vamp", model={"norm": "group", "prior": {"kind": "vampprior", "pseudo_inputs": 1000}})
    with pytest.raises(ConfigError, match=r"model.prior.pseudo_inputs=1000: more pseudo-inputs than the 360"):
        vaekit.train(tree)


def test_iwae_k_that_cannot_fit_is_refused_in_one_line_before_training(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_tree(tmp_path / "runs", "big")))
    proc = subprocess.run([sys.executable, "-m", "vaekit", "train", str(cfg), "loss.variant=iwae",
                           "loss.iw.k=100000", "loss.iw.memory_limit_mb=64"],
                          capture_output=True, text=True, timeout=240, env=CHILD_ENV)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vaekit:")]
    assert len(errors) == 1 and "loss.iw.k=100000" in errors[0] and "use k <=" in errors[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs" / "big").glob("checkpoints/step_*"))


@pytest.mark.parametrize("name", ["tcvae_ema", "vamp_mlp"])
def test_research_run_resumed_mid_epoch_matches_uninterrupted_run(tmp_path: Path, name: str) -> None:
    sections = {
        "tcvae_ema": {"loss": {"variant": "beta_tcvae"}, "train": {"ema": {"enabled": True, "decay": 0.9}}},
        "vamp_mlp": {"model": {**MLP, "prior": {"kind": "vampprior", "pseudo_inputs": 8}}},
    }[name]
    tree = tiny_tree(tmp_path, name, **sections)
    tree["train"].update(max_steps=10, ckpt_every=5)
    straight = vaekit.train(tree)
    copy = tmp_path / f"{name}-resumed"
    shutil.copytree(straight.run_dir, copy)
    truncate_after(copy, 5)
    resumed = vaekit.train(resume=copy)
    assert_same_weights(straight.run_dir / "model.safetensors", copy / "model.safetensors")
    assert_same_tree(straight.history, resumed.history, "history")


KILLED = {
    "iwae": {"loss": {"variant": "iwae", "iw": {"k": 4}}},
    # two optimizers: the autoencoder's and the latent discriminator's (factor_optim)
    "factor_vae": {"preset": "factor-vae", "loss": {"factor": {"hidden": 32, "layers": 2}}},
}


@pytest.mark.parametrize("variant", list(KILLED))
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path, variant: str) -> None:
    root = tmp_path / "runs"
    sections = {"train": {"max_steps": 60, "ckpt_every": 10}, "log": {"every": 1}, **KILLED[variant]}
    configs = {}
    for name in ("killed", "straight"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(tiny_tree(root, name, **sections)))
    run_dir = root / "killed"
    train_and_kill(tmp_path, configs, run_dir, 20)
    resume = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(run_dir)],
                            capture_output=True, text=True, timeout=240, env=CHILD_ENV)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert_same_weights(root / "straight" / "model.safetensors", run_dir / "model.safetensors")
    last = complete_checkpoints(run_dir)[-1]
    for weights in last.glob("*.safetensors"):  # model (+ discriminator)
        assert_same_weights(root / "straight" / "checkpoints" / last.name / weights.name, weights)
    assert_same_tree(torch.load(root / "straight" / "checkpoints" / last.name / "optim.pt", weights_only=True),
                     torch.load(last / "optim.pt", weights_only=True), "optim.pt")
    reference = [without_timing(r) for r in read_jsonl(root / "straight" / "metrics.jsonl")]
    assert [without_timing(r) for r in read_jsonl(run_dir / "metrics.jsonl")] == reference


def test_vaekit_eval_reports_the_disentanglement_metrics(tmp_path: Path, capsys) -> None:
    from vaekit.cli import main

    tree = tiny_tree(tmp_path, "dis", data={"num_samples": 600})
    tree["train"]["max_steps"] = 4
    run = vaekit.train(tree).run_dir
    names = "mig,dci,factor_vae_score,beta_vae_score"
    assert main(["eval", str(run), "--metrics", names]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads(out.read_text())["metrics"]
    for key in ("dci_disentanglement", "dci_completeness", "dci_informativeness", "factor_vae_score",
                "beta_vae_score"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
