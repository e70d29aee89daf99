"""Pretrained diffusers autoencoders (``model.arch=diffusers``): a tiny random ``AutoencoderKL`` saved with
``save_pretrained`` into the test's tmp dir (nothing is downloaded) trains in each finetune mode; a LoRA warm-up
then full finetune is one two-stage pipeline that resumes bitwise after SIGKILL (and from a checkpoint inside the
lora stage or right at its end); the exports load back in diffusers and peft with the same outputs; a source that
cannot be loaded is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
import vaekit.cli
from vaekit.errors import ConfigError, MissingWeightsError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

STAGES = [{"name": "lora", "steps": 8, "finetune": {"mode": "lora", "rank": 2, "alpha": 4, "dropout": 0.1}},
          {"name": "full", "steps": 6, "optim": {"lr": 3e-4}}]


def make_tiny_vae(folder: Path) -> Path:
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1, latent_channels=2,
        norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("pretrained") / "tiny-vae")


def cfg_for(root: Path, name: str, vae: Path, **extra) -> dict:
    cfg = {
        "run": {"dir": str(root), "name": name},
        "data": {"source": "shapes", "num_samples": 64, "image_size": 16, "channels": 3},
        "model": {"arch": "diffusers", "pretrained": str(vae), "class": "AutoencoderKL"},
        "loss": {"recon": "mse"},
        "train": {"batch_size": 16, "val_batches": 1, "ckpt_every": 2, "keep_last": 20},
        "log": {"progress": False, "samples": False, "plots": False, "every": 2},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def test_each_finetune_mode_trains_only_its_parameters(tmp_path: Path, tiny_vae: Path) -> None:
    base = load_file(str(tiny_vae / "diffusion_pytorch_model.safetensors"))
    trained = {}
    for mode in ("full", "lora", "decoder"):
        cfg = cfg_for(tmp_path, mode, tiny_vae, train={"max_steps": 3}, finetune={"mode": mode, "rank": 2})
        result = vaekit.train(cfg)
        assert result.summary["steps"] == 3
        trained[mode] = load_file(str(result.run_dir / "checkpoints" / "step_00000003" / "model.safetensors"))
    full, lora, dec = trained["full"], trained["lora"], trained["decoder"]
    assert set(full) == set(base) and set(dec) == set(base)
    assert all(not torch.equal(full[k], base[k]) for k in base if k.endswith("conv_in.weight"))
    # decoder: the decoder side (decoder, post_quant_conv) moved, the encoder side did not
    for key in base:
        moved = not torch.equal(dec[key], base[key])
        assert moved == key.startswith(("decoder.", "post_quant_conv.")), key
    # lora: base weights untouched under their plain names; adapters beside them, B trained away from zero
    assert {k for k in lora if ".lora_" not in k} == set(base)
    assert all(torch.equal(lora[k], base[k]) for k in base)
    adapters = [k for k in lora if ".lora_B." in k]
    assert adapters and any(lora[k].abs().sum() > 0 for k in adapters)
    assert any(k.startswith("encoder.mid_block.attentions.0.to_q.") for k in lora)  # attention has adapters too
    # the lora run's export holds merged plain weights
    export = load_file(str(tmp_path / "lora" / "model.safetensors"))
    assert set(export) == set(base) and any(not torch.equal(export[k], base[k]) for k in base)


def test_export_loads_back_in_diffusers_and_peft_with_equal_outputs(tmp_path: Path, tiny_vae: Path) -> None:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    result = vaekit.train(cfg_for(tmp_path, "exp", tiny_vae, stages=STAGES[:1]))
    run = result.run_dir
    z = torch.randn(2, 2, 4, 4)
    x = torch.rand(2, 3, 16, 16)
    ours = vaekit.load_model(run).eval()  # vaekit's own export (model.safetensors + model_config.json)
    theirs = diffusers.AutoencoderKL.from_pretrained(str(run / "diffusers")).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs.decode(z).sample, ours.module.decode(z).sample, rtol=0, atol=0)
        torch.testing.assert_close(theirs.encode(x).latent_dist.mean, ours.module.encode(x).latent_dist.mean,
                                   rtol=0, atol=0)
        # the adapters alone, injected into the original model with peft, give the merged model's outputs
        fresh = diffusers.AutoencoderKL.from_pretrained(str(tiny_vae)).eval()
        lora_dir = run / "lora" / "lora"
        inject_adapter_in_model(LoraConfig.from_pretrained(str(lora_dir)), fresh)
        set_peft_model_state_dict(fresh, load_file(str(lora_dir / "adapter_model.safetensors")))
        fresh.eval()
        torch.testing.assert_close(fresh.decode(z).sample, theirs.decode(z).sample, rtol=1e-4, atol=1e-5)
    # `vaekit export` from a checkpoint inside the lora stage merges its adapters the same way
    assert vaekit.cli.main(["export", str(run), "--format", "diffusers", "--out", str(tmp_path / "d4"),
                            "--checkpoint", str(run / "checkpoints" / "step_00000008")]) == 0
    again = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "d4")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.decode(z).sample, theirs.decode(z).sample, rtol=1e-5, atol=1e-6)
    assert vaekit.cli.main(["export", str(run), "--format", "safetensors"]) == 0
    assert set(load_file(str(run / "export" / "model.safetensors"))) == set(theirs.state_dict())


RUNNER = textwrap.dedent(
    """
    import json, sys
    import vaekit
    vaekit.train(json.loads(sys.argv[1]))
    """
)


def _same_files(a: Path, b: Path) -> None:
    for rel in ("model.safetensors", "diffusers/diffusion_pytorch_model.safetensors",
                "lora/lora/adapter_model.safetensors"):
        x, y = load_file(str(a / rel)), load_file(str(b / rel))
        assert set(x) == set(y), rel
        for key in x:
            assert torch.equal(x[key], y[key]), (rel, key)


def test_lora_then_full_pipeline_resumes_bitwise_after_sigkill(tmp_path: Path, tiny_vae: Path) -> None:
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the in-process reference's threads
    root = tmp_path / "runs"
    cfg = json.dumps(cfg_for(root, "killed", tiny_vae, stages=STAGES))
    killed = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), cfg, "new"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        ckpts = root / "killed" / "checkpoints"
        while not (ckpts.is_dir() and any((p / "state.json").is_file() for p in ckpts.glob("step_*"))):
            assert killed.poll() is None, killed.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)  # at or soon after step 2: inside the lora stage
        assert killed.wait(timeout=30) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    assert not (root / "killed" / "model.safetensors").exists(), "the killed run had already finished"
    vaekit.train(cfg_for(root, "straight", tiny_vae, stages=STAGES))  # the uninterrupted run, in this process
    vaekit.train(resume=str(root / "killed"))
    _same_files(root / "straight", root / "killed")
    assert json.loads((root / "killed" / "summary.json").read_text())["steps"] == 14

    # deterministic resume points: inside the lora stage (step 4) and right at its end (step 8, adapters unmerged)
    for step in (4, 8):
        copy = root / f"from{step}"
        shutil.copytree(root / "straight", copy)
        for path in [*copy.glob("checkpoints/step_*"), copy / "model.safetensors", copy / "diffusers", copy / "lora"]:
            if path.name.startswith("step_") and int(path.name[5:]) <= step:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        vaekit.train(resume=str(copy))
        _same_files(root / "straight", copy)


def test_sources_that_cannot_load_are_one_line_errors(tmp_path: Path, tiny_vae: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match=r"not in the local hub cache.*hf download someone/no-such-vae"):
        vaekit.train(cfg_for(tmp_path, "hub", tiny_vae, model={"pretrained": "someone/no-such-vae"}))
    with pytest.raises(MissingWeightsError, match="has no config.json"):
        vaekit.train(cfg_for(tmp_path, "dir", tiny_vae, model={"pretrained": str(tmp_path / "nowhere") + "/"}))
    with pytest.raises(ConfigError, match="no model class 'AutoencoderNope'"):
        vaekit.train(cfg_for(tmp_path, "cls", tiny_vae, model={"class": "AutoencoderNope"}))
    with pytest.raises(ConfigError, match="AutoencoderKLTemporalDecoder does not fit.*num_frames"):
        vaekit.train(cfg_for(tmp_path, "cls", tiny_vae, model={"class": "AutoencoderKLTemporalDecoder"}))
    with pytest.raises(ConfigError, match="loss.recon: bce is not supported"):
        vaekit.train(cfg_for(tmp_path, "bce", tiny_vae, loss={"recon": "bce"}))
    with pytest.raises(ConfigError, match="finetune.mode: lora cannot run with train.ema"):
        vaekit.train(cfg_for(tmp_path, "ema", tiny_vae, finetune={"mode": "lora"}, train={"ema": {"enabled": True}}))
    assert not any((tmp_path / n).exists() for n in ("hub", "dir", "cls", "bce", "ema"))
