"""The open engine: a user's own VAE class and a diffusers-style module (returning ``latent_dist`` / ``sample``
objects) train through ``vaekit.train(model=..., train_data=...)`` with KL warm-up, a second stage that freezes
the encoder, EMA, and bitwise resume after SIGKILL; a ``Dataset`` and a ``DataLoader`` both train; a module
that breaks the protocol gets one line naming the method and what it returned."""

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
from torch.utils.data import DataLoader, Dataset, TensorDataset

import vaekit
from vaekit.errors import ConfigError, DataError, ModelProtocolError

MODELS = textwrap.dedent(
    '''
    """User models for the open-engine tests (imported by the test and by its subprocesses)."""
    from dataclasses import dataclass

    import torch
    from torch import nn


    class PairVAE(nn.Module):
        """A plain user VAE: encode -> (mean, logvar), decode -> tensor. Has encoder/decoder groups."""

        def __init__(self, d: int = 12, z: int = 3) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 2 * z))
            self.decoder = nn.Sequential(nn.Linear(z, 16), nn.ReLU(), nn.Linear(16, d))

        def encode(self, x):
            mean, logvar = self.encoder(x).chunk(2, dim=1)
            return mean, logvar

        def decode(self, z):
            return self.decoder(z)


    @dataclass
    class Gaussian:  # diffusers' DiagonalGaussianDistribution has .mean and .logvar
        mean: torch.Tensor
        logvar: torch.Tensor


    @dataclass
    class EncoderOutput:  # AutoencoderKLOutput(latent_dist=...)
        latent_dist: Gaussian


    @dataclass
    class DecoderOutput:  # diffusers' DecoderOutput(sample=...)
        sample: torch.Tensor


    class TinyDiffusersStyleVAE(nn.Module):
        """A stand-in with diffusers' AutoencoderKL interface: conv encoder/decoder, quant convs, output objects."""

        def __init__(self, channels: int = 1, latent: int = 2) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 2 * latent, 3, 1, 1))
            self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
            self.post_quant_conv = nn.Conv2d(latent, latent, 1)
            self.decoder = nn.Sequential(nn.ConvTranspose2d(latent, 8, 4, 2, 1), nn.SiLU(), nn.Conv2d(8, channels, 3, 1, 1))

        def encode(self, x):
            mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
            return EncoderOutput(Gaussian(mean, logvar))

        def decode(self, z):
            return DecoderOutput(self.decoder(self.post_quant_conv(z)))
    '''
)

RUNNER = textwrap.dedent(
    '''
    import sys
    import torch
    import vaekit
    from user_models import PairVAE

    root, name, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
    torch.manual_seed(0)
    data = (torch.rand(240, 12) > 0.5).float()
    kwargs = dict(model=PairVAE(), train_data=data[:200], val_data=data[200:])
    if resume:
        vaekit.train(resume=f"{root}/{name}", **kwargs)
    else:
        vaekit.train(
            {
                "run": {"dir": root, "name": name},
                "loss": {"kl": {"schedule": "linear", "warmup_steps": 20}},
                "train": {"batch_size": 20, "ckpt_every": 5, "ema": {"enabled": True, "decay": 0.9}},
                "log": {"progress": False, "samples": False, "plots": False, "every": 5},
                "stages": [
                    {"name": "warm", "steps": 40},
                    {"name": "decoder_only", "steps": 40, "freeze": ["encoder"]},
                ],
            },
            **kwargs,
        )
    '''
)


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "user_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import user_models

    return importlib.reload(user_models)


def tiny_cfg(root: Path, name: str, **extra) -> dict:
    cfg = {
        "run": {"dir": str(root), "name": name},
        "train": {"batch_size": 16, "max_steps": 12, "val_batches": 2},
        "log": {"progress": False, "samples": False, "plots": False, "every": 4},
    }
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def test_user_vae_trains_with_stages_freezing_ema_and_reloads(tmp_path: Path, user_models) -> None:
    torch.manual_seed(0)
    data = (torch.rand(120, 12) > 0.5).float()
    model = user_models.PairVAE()
    cfg = tiny_cfg(tmp_path, "pair", loss={"kl": {"schedule": "linear", "warmup_steps": 8}},
                   train={"ema": {"enabled": True, "decay": 0.9}, "max_steps": None})
    cfg["stages"] = [{"name": "all", "steps": 8}, {"name": "frozen_enc", "steps": 6, "freeze": ["encoder"]}]

    result = vaekit.train(cfg, model=model, train_data=data[:100], val_data=data[100:])
    assert result.summary["steps"] == 14
    assert [r["stage"] for r in result.split("val")][-1] == "frozen_enc"
    assert result.curves["val/loss"] and len(result.curves["train/loss"]) == len(result.split("train"))
    # the second stage trained the decoder only: the encoder's weights at the end of stage 1 are kept
    ckpt8 = load_file(str(result.run_dir / "checkpoints" / "step_00000008" / "model.safetensors"))
    final = load_file(str(result.run_dir / "checkpoints" / "step_00000014" / "model.safetensors"))
    assert set(ckpt8) == set(model.state_dict())  # the user's own keys, no wrapper prefix
    for key in ckpt8:
        same = torch.equal(ckpt8[key], final[key])
        assert same == key.startswith("encoder."), key
    # exported (EMA) weights load back into a fresh instance of the user's class
    fresh = vaekit.load_model(result.run_dir, model=user_models.PairVAE())
    exported = load_file(str(result.model_path))
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, exported[key])
    with pytest.raises(ConfigError, match="pass a fresh instance"):
        vaekit.load_model(result.run_dir)


def test_diffusers_style_module_trains_with_a_spatial_latent(tmp_path: Path, user_models) -> None:
    x = torch.rand(48, 1, 16, 16)
    cfg = tiny_cfg(tmp_path, "diff", loss={"recon": "mse", "kl": {"schedule": "linear", "warmup_steps": 6}},
                   train={"ema": {"enabled": True}})
    cfg["stages"] = [{"name": "a", "steps": 6}, {"name": "b", "steps": 4, "freeze": ["encoder", "quant_conv"]}]
    result = vaekit.train(cfg, model=user_models.TinyDiffusersStyleVAE(), train_data=x)
    assert result.summary["steps"] == 10
    val = result.split("val")[-1]
    assert val["active_units"] <= 2 and val["loss"] > 0
    assert tuple(result.model.encode(x[:2]).latent_dist.mean.shape) == (2, 2, 8, 8)


class DictDataset(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {"x": self.x[i], "y": torch.tensor(i % 3)}


def test_dataset_and_dataloader_train_and_dataset_resume_is_exact(tmp_path: Path, user_models) -> None:
    torch.manual_seed(1)
    x = (torch.rand(96, 12) > 0.5).float()
    ds = DictDataset(x)
    # a Dataset: vaekit's own sampler (global order), resumable mid-epoch
    straight = vaekit.train(tiny_cfg(tmp_path, "ds", train={"ckpt_every": 3}), model=user_models.PairVAE(),
                            train_data=ds, val_data=TensorDataset(x[:32]))
    assert straight.summary["steps"] == 12
    # resumed from step 9 (mid-epoch: 6 batches per epoch) with the same objects, it ends bitwise where it did
    copy = tmp_path / "ds-resumed"
    shutil.copytree(straight.run_dir, copy)
    for path in copy.glob("checkpoints/step_*"):
        if int(path.name[5:]) > 9:
            shutil.rmtree(path)
    (copy / "model.safetensors").unlink()
    vaekit.train(resume=copy, model=user_models.PairVAE(), train_data=ds, val_data=TensorDataset(x[:32]))
    a, b = load_file(str(straight.model_path)), load_file(str(copy / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # a DataLoader: iterated as the user built it (sample grids drawn from its first batches)
    loader = DataLoader(TensorDataset(x), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    cfg = tiny_cfg(tmp_path, "dl", log={"samples": True})
    result = vaekit.train(cfg, model=user_models.PairVAE(), train_data=loader,
                          val_data=DataLoader(TensorDataset(x[:32]), batch_size=16))
    assert result.summary["steps"] == 12 and result.split("val")
    assert list((result.run_dir / "samples").glob("*-recon.png"))


def test_wrong_item_and_broken_protocol_are_one_line_errors(tmp_path: Path, user_models) -> None:
    class Strings(Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):
            return "not a tensor"

    with pytest.raises(DataError, match=r"train_data\[0\]: expected a tensor.*got str"):
        vaekit.train(tiny_cfg(tmp_path, "bad"), model=user_models.PairVAE(), train_data=Strings())

    class NoPair(user_models.PairVAE):
        def encode(self, x):
            return self.encoder(x)

    with pytest.raises(ModelProtocolError, match=r"model\.encode\(x\) returned a tensor of shape \(1, 6\)"):
        vaekit.train(tiny_cfg(tmp_path, "proto"), model=NoPair(), train_data=torch.rand(40, 12))
    assert not (tmp_path / "proto").exists(), "a failed start leaves no run directory"


def test_cli_resume_of_a_python_data_run_says_what_to_pass(tmp_path: Path, user_models) -> None:
    result = vaekit.train(tiny_cfg(tmp_path, "py", train={"max_steps": 2}), model=user_models.PairVAE(),
                          train_data=torch.rand(40, 12))
    out = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(result.run_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "resume it from Python" in out.stderr and "model=" in out.stderr and "train_data=" in out.stderr


def test_user_model_pipeline_resumes_bitwise_after_sigkill(tmp_path: Path, user_models) -> None:
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    root = tmp_path / "runs"

    def launch(name: str, mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(root), name, mode],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    straight, killed = launch("straight", "new"), launch("killed", "new")
    try:
        deadline = time.monotonic() + 180
        ckpts = root / "killed" / "checkpoints"
        while not any(p.name >= "step_00000045" and (p / "state.json").is_file() for p in ckpts.glob("step_*")) \
                if ckpts.is_dir() else True:
            assert killed.poll() is None, killed.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert straight.wait(timeout=240) == 0, straight.stderr.read()[-3000:]
    finally:
        for proc in (straight, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (root / "killed" / "model.safetensors").exists(), "the killed run had already finished"
    resumed = launch("killed", "resume")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()[-3000:]
    for name in ("model.safetensors",):
        a, b = load_file(str(root / "straight" / name)), load_file(str(root / "killed" / name))
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key
    summary = json.loads((root / "killed" / "summary.json").read_text())
    assert summary["steps"] == 80 and summary["stages"] == ["warm", "decoder_only"]
