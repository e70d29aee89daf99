"""Workflows that used to run, print nothing and train the wrong thing (issue 17): each test fails on the old code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import vaekit

DISC = {"layers": 2, "channels": 8}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ 1. a GAN-only stage with the adaptive weight
def test_gan_only_stage_trains_the_decoder_adversarially(tiny) -> None:
    tree = tiny("ganonly", loss={"recon": "l1"}, train={"max_steps": None, "ckpt_every": 4},
                log={"every": 1, "progress": False, "samples": False, "plots": False})
    tree["stages"] = [
        {"name": "vae", "steps": 4},
        {"name": "gan", "steps": 4, "freeze": ["encoder"],
         "loss": {"recon_weight": 0.0, "adversarial": {"weight": 0.5, "discriminator": DISC}}},
    ]
    result = vaekit.train(tree)
    gan = [r for r in _records(result.run_dir) if r.get("stage") == "gan" and r["split"] == "train" and "adv_weight" in r]
    assert gan and all(r["adv_weight"] == 0.5 for r in gan)  # the fixed weight, not ‖∇rec‖/‖∇g‖ = 0
    before = load_file(result.run_dir / "checkpoints" / "step_00000004" / "model.safetensors")
    after = load_file(result.run_dir / "model.safetensors")
    dec = [k for k in after if k.startswith("decoder")]
    assert any(not torch.equal(before[k], after[k]) for k in dec)  # only the adversarial term reaches the decoder


def test_validate_warns_about_the_gan_only_fallback() -> None:
    from vaekit.config.load import load_config
    from vaekit.config.notes import config_warnings

    cfg = load_config({"loss": {"recon_weight": 0, "adversarial": {"weight": 0.5}}})
    (line,) = config_warnings(cfg)
    assert "loss.adversarial.adaptive" in line and "fixed weight" in line
