"""Tiled encode/decode of an input 2x the trained size matches the untiled result away from the seams.

Tolerance: with a model without global normalisation (``model.norm=none``) every window sees the whole receptive
field of the elements inside it, so away from the seams tiled and untiled agree to float rounding: we require a
mean squared difference below 1e-10 inside and a larger one near the seams; ``vaekit eval --tiled`` reports both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import tiny_tree

import vaekit
from vaekit.cli import main as cli_main
from vaekit.latents.tiling import seam_mask, starts, tiled_decode, tiled_encode


def test_window_starts_cover_the_axis_and_stay_on_the_factor() -> None:
    assert starts(64, 32, 16, 4) == [0, 16, 32]
    assert starts(72, 32, 8, 4) == [0, 24, 40]
    assert starts(16, 32, 8) == [0]


def test_tiled_encode_decode_of_twice_the_trained_size_matches_away_from_seams(tmp_path: Path) -> None:
    cfg = tiny_tree(tmp_path / "runs", "t", data={"num_samples": 64, "image_size": 32},
                    model={"latent": "spatial", "latent_dim": 3, "norm": "none"}, train={"max_steps": 2})
    run = vaekit.train(cfg).run_dir
    model = vaekit.load_model(run)
    x = vaekit.data.make_shapes(4, size=64, seed=1)[0]  # (4, 1, 64, 64): 2x the trained 32
    with torch.no_grad():
        mean, _ = model.encode(x)
        tm, _ = tiled_encode(model, x, tile=32, overlap=16)
        recon, _ = model.decode(mean)
        tiled = tiled_decode(model, mean, tuple(x.shape), tile=32, overlap=16)
    assert tm.shape == mean.shape and tiled.shape == recon.shape
    lat_near = seam_mask(tuple(mean.shape), [(2, 8, 4), (3, 8, 4)])  # the same windows in latent units (factor 4)
    d = (tm - mean) ** 2
    assert d[~lat_near].mean() < 1e-10 < d[lat_near].mean()
    near = seam_mask(tuple(x.shape), [(2, 32, 16), (3, 32, 16)])
    d = (tiled - recon) ** 2
    assert d[~near].mean() < 1e-10 < d[near].mean()

    assert cli_main(["eval", str(run), "data.image_size=64", "--tiled", "32", "--overlap", "16", "--batches", "1",
                     "--batch-size", "4", "--device", "cpu", "--split", "val"]) == 0
    result = json.loads((run / "eval" / "tiled-val.json").read_text())
    assert result["diff_inside"] < 1e-10 < result["diff_near_seams"]
    assert result["shape"] == [1, 64, 64]

    # vaekit encode/decode --tile: the same blended windows over a whole split
    out, dec = tmp_path / "lat", tmp_path / "dec"
    assert cli_main(["encode", str(run), "--data", "data.image_size=64", "--split", "val", "--out", str(out),
                     "--tile", "32", "--overlap", "16", "--device", "cpu"]) == 0
    from vaekit.latents.encode import read_chunk

    manifest = json.loads((out / "manifest.json").read_text())
    z = read_chunk(out, manifest["chunks"][0], "safetensors")[1]
    assert manifest["input_shape"] == [1, 64, 64] and tuple(z.shape[1:]) == (3, 16, 16)
    assert cli_main(["decode", str(run), str(out), "--out", str(dec), "--tile", "32", "--overlap", "16",
                     "--device", "cpu"]) == 0
    assert len(list((dec / "val").glob("*.png"))) == len(z)


def test_temporal_chunks_of_a_video_model_keep_the_shapes() -> None:
    from vaekit.config.schema import ModelConfig
    from vaekit.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="conv", latent="spatial", latent_dim=2, hidden_dims=[4, 8], norm="none", temporal_downsample=1)
    model = build_model(cfg, (3, 8, 16, 16), "mse").eval()
    x = torch.rand(1, 3, 16, 32, 32)  # twice the trained frames and size
    with torch.no_grad():
        mean, _ = model.encode(x)
        tm, _ = tiled_encode(model, x, tile=16, overlap=8, frames=8, frame_overlap=4)
        recon = tiled_decode(model, mean, tuple(x.shape), tile=16, overlap=8, frames=8, frame_overlap=4)
    assert tm.shape == mean.shape and recon.shape == x.shape
    assert torch.isfinite(recon).all()
