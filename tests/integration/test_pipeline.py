"""Multi-stage pipelines and VAE-GAN training through the real loop: resume inside a stage, per-stage outputs,
optimizer step counts, transitions, and the shipped examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import vaekit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DISC = {"layers": 2, "channels": 8}


def _two_stage(tiny, name: str) -> dict:
    tree = tiny(name, loss={"recon": "l1"}, train={"ckpt_every": 3, "max_steps": None})
    tree["stages"] = [
        {"name": "vae", "steps": 6, "loss": {"kl": {"schedule": "linear", "warmup_steps": 4}}},
        {
            "name": "gan",
            "steps": 9,
            "freeze": ["encoder"],
            "loss": {"adversarial": {"weight": 0.5, "start_step": 7, "discriminator": DISC}},
            "optim": {"lr": 5e-4, "scheduler": {"name": "cosine", "warmup_steps": 2}},
            "train": {"batch_size": 16},
        },
    ]
    return tree


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _truncate_to(run_dir: Path, dest: Path, step: int) -> Path:
    """A copy of a finished run as if it had been killed right after the checkpoint of ``step``."""
    shutil.copytree(run_dir, dest)
    for ckpt in (dest / "checkpoints").iterdir():
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    (dest / "model.safetensors").unlink()
    return dest


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory) -> vaekit.TrainResult:
    from conftest import tiny_tree

    root = tmp_path_factory.mktemp("pipeline")
    return vaekit.train(_two_stage(lambda name, **s: tiny_tree(root, name, **s), "straight"))


def test_resume_inside_second_stage_matches_uninterrupted_run(two_stage_run, tmp_path: Path) -> None:
    # step 12 is inside stage "gan" (steps 7..15), after the discriminator started: two optimizers to restore
    resumed = _truncate_to(two_stage_run.run_dir, tmp_path / "resumed", 12)
    state = json.loads((resumed / "checkpoints" / "step_00000012" / "state.json").read_text())
    assert (state["stage_name"], state["stage_step"], state["stage_done"]) == ("gan", 6, False)
    result = vaekit.train(resume=resumed)
    _assert_same_weights(two_stage_run.run_dir, result.run_dir)
    disc_a = load_file(two_stage_run.checkpoint / "discriminator.safetensors")
    disc_b = load_file(result.checkpoint / "discriminator.safetensors")
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)


def test_resume_at_a_stage_boundary_skips_the_finished_stage(two_stage_run, tmp_path: Path) -> None:
    resumed = _truncate_to(two_stage_run.run_dir, tmp_path / "boundary", 6)
    assert json.loads((resumed / "checkpoints" / "step_00000006" / "state.json").read_text())["stage_done"]
    result = vaekit.train(resume=resumed)
    _assert_same_weights(two_stage_run.run_dir, result.run_dir)
    assert not [r for r in _records(result.run_dir) if r["stage"] == "vae" and r["step"] > 6]


def test_each_optimizer_steps_exactly_once_per_step(two_stage_run) -> None:
    optim = torch.load(two_stage_run.checkpoint / "optim.pt", weights_only=True)
    gen_steps = {float(s["step"]) for s in optim["generator"]["optimizer"]["state"].values()}
    disc_steps = {float(s["step"]) for s in optim["discriminator"]["optimizer"]["state"].values()}
    # stage 2 rebuilt the generator optimizer (9 steps) and the discriminator ran from global step 7: 15 - 7
    assert gen_steps == {9.0}
    assert disc_steps == {8.0}


def test_frozen_encoder_does_not_change_in_its_stage(two_stage_run, tmp_path: Path) -> None:
    end_of_vae = load_file(two_stage_run.run_dir / "checkpoints" / "step_00000006" / "model.safetensors")
    final = load_file(two_stage_run.run_dir / "model.safetensors")
    enc = [k for k in final if k.startswith("encoder.")]
    dec = [k for k in final if k.startswith("decoder.") and "weight" in k]
    assert enc and all(torch.equal(end_of_vae[k], final[k]) for k in enc)
    assert any(not torch.equal(end_of_vae[k], final[k]) for k in dec)


def test_records_samples_and_tensorboard_are_grouped_by_stage(two_stage_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _records(two_stage_run.run_dir)
    assert {r["stage"] for r in records} == {"vae", "gan"}
    assert all(r["stage"] == "vae" for r in records if r["step"] <= 6 and r["split"] == "train")
    assert any("d_loss" in r for r in records if r["stage"] == "gan")
    acc = EventAccumulator(str(two_stage_run.run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"vae/train/loss", "gan/train/loss", "gan/train/d_loss", "gan/val/recon"} <= tags


def test_sample_files_are_named_by_stage_epoch_and_step(tiny) -> None:
    tree = _two_stage(tiny, "samples")
    tree["log"]["samples"] = True
    tree["stages"][1]["steps"] = 3
    result = vaekit.train(tree)
    names = sorted(p.name for p in (result.run_dir / "samples").iterdir())
    assert "vae_000_000_000006-recon.png" in names and "vae_000_000_000006-prior.png" in names
    assert "gan_001_000_000009-recon.png" in names


def test_threshold_transition_ends_the_stage_early(tiny) -> None:
    tree = tiny("threshold", train={"max_steps": None})
    tree["stages"] = [
        {"name": "warm", "metric": "train/recon", "threshold": 1e9, "max_steps": 40},
        {"name": "rest", "steps": 2},
    ]
    result = vaekit.train(tree)
    warm_steps = [r["step"] for r in _records(result.run_dir) if r["stage"] == "warm"]
    assert max(warm_steps) == 4  # the first train log (log.every=4) already crossed the threshold
    assert result.summary["steps"] == 6


def test_safety_limit_warns_when_it_ends_the_stage(tiny, capsys) -> None:
    tree = tiny("safety", train={"max_steps": None})
    tree["stages"] = [{"name": "never", "metric": "train/recon", "threshold": -1.0, "max_steps": 4}]
    vaekit.train(tree)
    assert "hit its safety limit" in capsys.readouterr().err


def test_init_from_loads_weights_of_another_run(two_stage_run, tiny) -> None:
    tree = tiny("init", loss={"recon": "l1"}, train={"max_steps": None, "val_batches": 1})
    tree["stages"] = [{"name": "ft", "steps": 1, "init_from": str(two_stage_run.run_dir), "freeze": ["encoder"]}]
    result = vaekit.train(tree)
    source = load_file(two_stage_run.run_dir / "model.safetensors")
    final = load_file(result.run_dir / "model.safetensors")
    assert all(torch.equal(source[k], final[k]) for k in source if k.startswith("encoder."))


def test_discriminator_learns_to_tell_real_from_reconstructions(tiny) -> None:
    tree = tiny(
        "gan",
        loss={"recon": "l1", "adversarial": {"weight": 0.1, "discriminator": DISC}},
        train={"max_steps": 40},
        log={"every": 10},
    )
    result = vaekit.train(tree)
    train = [r for r in _records(result.run_dir) if r["split"] == "train" and "kind" not in r]
    assert all(k in train[-1] for k in ("g_adv", "adv_weight", "d_loss", "d_real", "d_fake", "d_acc", "recon", "kl"))
    assert train[-1]["d_acc"] > 0.5


def test_video_curriculum_cpu_example_runs(tmp_path: Path) -> None:
    cfg = yaml.safe_load((EXAMPLES / "video_curriculum_cpu.yaml").read_text())
    overrides = {
        "run__dir": str(tmp_path),
        "data__num_samples": 24,
        "log__progress": False,
        "log__plots": False,
    }
    result = vaekit.train(cfg, overrides=["stages.0.steps=2", "stages.1.steps=2", "stages.2.steps=1"], **overrides)
    stages = {r["stage"]: r for r in result.history if r["split"] == "val"}
    assert list(stages) == ["low_res", "mid_res", "high_res"]
    assert result.summary["steps"] == 5
    # each stage trained at its own clip size: the prior samples grow with the stage
    from PIL import Image

    sizes = [Image.open(p).size for p in sorted((result.run_dir / "samples").glob("*-prior.png"))]
    assert len(set(sizes)) == 3


@pytest.mark.parametrize("name", ["video_curriculum.yaml", "video_curriculum_cpu.yaml", "vae_to_vaegan.yaml"])
def test_examples_validate(name: str) -> None:
    from vaekit.config.load import load_config
    from vaekit.pipeline.summary import summarize

    cfg = load_config(EXAMPLES / name)
    text = summarize(cfg, build=False)
    for stage in cfg.stages:
        assert stage.name in text


def test_vae_to_vaegan_example_runs(tmp_path: Path) -> None:
    result = vaekit.train(
        EXAMPLES / "vae_to_vaegan.yaml",
        overrides=["stages.0.steps=3", "stages.1.steps=3", "data.num_samples=300"],
        run__dir=str(tmp_path),
        log__progress=False,
        log__plots=False,
        train__val_batches=1,
    )
    assert [r["stage"] for r in result.history if r["split"] == "val"][-1] == "vae_gan"
    assert (result.checkpoint / "discriminator.safetensors").is_file()
