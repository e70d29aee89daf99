"""Every modality trains end to end through the real loop, with the objective terms that belong to it, and
writes its sample pictures: tabular (multi-hot tags, denoising), audio (1D conv, spectral), video (3D conv,
perceptual on sampled frames), images (LPIPS with random backbone weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import vaekit

QUIET = {"progress": False, "samples": True, "plots": False, "every": 2}


def _last(result: vaekit.TrainResult, split: str) -> dict:
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split][-1]


def test_multi_hot_tags_with_denoising_mlp(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tags = (torch.rand(200, 40, generator=g) < 0.15).float()  # (N, D) multi-hot
    result = vaekit.train(
        {
            "preset": "denoising",
            "run": {"dir": str(tmp_path), "name": "tags"},
            "model": {"arch": "mlp", "hidden_dims": [32], "latent_dim": 4, "norm": "none"},
            "train": {"max_steps": 6, "batch_size": 32, "val_batches": 1},
            "log": QUIET,
        },
        x=tags,
    )
    assert result.config.loss.denoise.mask_rate > 0
    val = _last(result, "val")
    assert math.isfinite(val["recon"]) and val["recon"] < 40 * math.log(2) * 1.5
    assert list((result.run_dir / "samples").glob("*-recon.png"))


def test_audio_waveforms_with_spectral_loss(tmp_path: Path) -> None:
    t = torch.linspace(0, 1, 512)
    freqs = torch.linspace(5, 40, 64).unsqueeze(1)
    waves = (0.5 * torch.sin(2 * math.pi * freqs * t)).unsqueeze(1)  # (N, 1, L) in [-1, 1]
    result = vaekit.train(
        {
            "run": {"dir": str(tmp_path), "name": "audio"},
            "model": {"arch": "conv", "hidden_dims": [8, 16], "latent_dim": 4, "latent": "spatial", "norm": "group"},
            "loss": {
                "recon": "l1",
                "beta": 1e-3,
                "spectral": {"weight": 0.1, "fft_sizes": [64, 128], "hop_sizes": [16, 32], "win_lengths": [64, 128]},
            },
            "train": {"max_steps": 4, "batch_size": 16, "val_batches": 1},
            "log": QUIET,
        },
        x=waves,
    )
    assert "spectral" in _last(result, "train") and math.isfinite(_last(result, "val")["spectral"])
    assert result.model.latent_shape[0] == 4


def test_video_clips_with_perceptual_loss_on_sampled_frames(tmp_path: Path) -> None:
    result = vaekit.train(
        {
            "run": {"dir": str(tmp_path), "name": "video"},
            "data": {"source": "moving_shapes", "num_samples": 48, "frames": 4, "image_size": 16},
            "model": {"arch": "conv", "hidden_dims": [8, 16], "latent_dim": 4, "latent": "spatial", "norm": "group"},
            "loss": {"recon": "l1", "beta": 1e-3, "perceptual": {"kind": "vgg", "pretrained": False, "frames": 2}},
            "train": {"max_steps": 2, "batch_size": 8, "val_batches": 1},
            "log": QUIET,
        }
    )
    train = _last(result, "train")
    assert "perceptual" in train and math.isfinite(train["perceptual"])
    assert list((result.run_dir / "samples").glob("*-prior.png"))


def test_images_with_lpips_random_backbone(tmp_path: Path) -> None:
    result = vaekit.train(
        {
            "preset": "lpips",
            "run": {"dir": str(tmp_path), "name": "lpips"},
            "data": {"num_samples": 100, "image_size": 32},
            "model": {"hidden_dims": [8, 16]},
            "loss": {"perceptual": {"pretrained": False, "net": "squeeze"}},
            "train": {"max_steps": 2, "batch_size": 16, "val_batches": 1},
            "log": QUIET,
        }
    )
    assert math.isfinite(_last(result, "val")["perceptual"])
