"""``vaekit eval`` / ``vaekit compare`` and ``vaekit.evaluate`` end to end on one tiny trained run.

The run is trained once per module (a few steps on 32×32 shapes); commands go through ``vaekit.cli.main`` in
process. Models for the other modalities have random weights: these tests check what is computed and written,
not how good the model is. LPIPS uses a random trunk and FID a small random feature extractor (no pretrained
weights can be downloaded here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest
import torch
from conftest import tiny_tree
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import vaekit
from vaekit.cli import main

STEPS = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tiny_tree(
        tmp_path_factory.mktemp("eval") / "runs",
        "a",
        data={"num_samples": 200},
        train={"max_steps": STEPS, "ckpt_every": 3, "val_batches": 1},
    )
    return vaekit.train(tree).run_dir


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if "eval" not in p.parts}


def _png(path: Path) -> tuple[tuple[int, int], str | None]:
    with Image.open(path) as image:
        return image.size, image.info.get("panels")


def test_eval_writes_json_table_and_figures_and_nothing_else(run_dir: Path, capsys) -> None:
    before = _snapshot(run_dir)
    assert main(["eval", str(run_dir), "--batches", "1", "--k", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    path = run_dir / "eval" / f"val-{STEPS}.json"
    assert out[-1] == str(path)
    assert out[0].startswith("| metric | unit | a |") and any(line.startswith("| neg_elbo |") for line in out)
    result = json.loads(path.read_text())
    metrics = result["metrics"]
    for name in (
        "neg_elbo",
        "recon_nll",
        "kl",
        "iwae_nll",
        "iwae_bpd",
        "mse",
        "active_units",
        "mi",
        "psnr",
        "ssim",
        "scaling_factor",
        "shift_factor",
        "mig",
        "sap",
    ):
        assert isinstance(metrics[name], float), name
    assert metrics["neg_elbo"] == pytest.approx(metrics["recon_nll"] + metrics["kl"], rel=1e-5)
    assert result["units"]["iwae_bpd"] == "bits/dim" and result["step"] == STEPS and result["k"] == 2
    assert "161 px" in result["skipped"]["ms_ssim"]
    assert {"lpips", "rfid", "fid"} <= set(result["skipped"])  # no pretrained weights on this machine
    assert len(result["details"]["kl_per_dim"]) == 4 and set(result["details"]["mig_per_factor"]) >= {"shape"}

    figures = run_dir / "eval" / f"val-{STEPS}"
    cell = 32 + 2
    assert _png(figures / "recon.png")[0] == (8 * cell + 2, 2 * cell + 2)  # 8 inputs over their recons
    assert _png(figures / "traversal.png")[0] == (7 * cell + 2, 4 * cell + 2)  # 4 latent dims × 7 steps
    assert _png(figures / "interpolation.png")[0] == (10 * cell + 2, 3 * cell + 2)  # 3 pairs, a + 8 + b
    assert _png(figures / "latent_pca.png")[1] == "1" and _png(figures / "error_hist.png")[1] == "1"
    assert _snapshot(run_dir) == before


def test_evaluate_is_deterministic_and_seeded(run_dir: Path) -> None:
    kwargs = {"batches": 1, "k": 2, "metrics": ["elbo", "iwae", "mi"]}
    first, again = vaekit.evaluate(run_dir, **kwargs), vaekit.evaluate(run_dir, **kwargs)
    other = vaekit.evaluate(run_dir, seed=1, **kwargs)
    assert first["metrics"] == again["metrics"]
    assert first["metrics"]["neg_elbo"] != other["metrics"]["neg_elbo"]
    assert set(first["metrics"]) == {
        "neg_elbo",
        "recon_nll",
        "kl",
        "neg_elbo_bpd",
        "iwae_nll",
        "iwae_bpd",
        "mi",
    }


def test_eval_checkpoint_and_missing_paths_are_one_line_errors(run_dir: Path, capsys) -> None:
    assert (
        main(
            [
                "eval",
                str(run_dir),
                "--checkpoint",
                "step_00000003",
                "--batches",
                "1",
                "--k",
                "2",
                "--metrics",
                "elbo,mse",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().endswith("val-3.json")
    early = json.loads((run_dir / "eval" / "val-3.json").read_text())
    assert early["source"].endswith("step_00000003/model.safetensors") and set(early["skipped"]) == set()

    missing = run_dir / "checkpoints" / "step_00000099"
    assert main(["eval", str(run_dir), "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint error" in err and str(missing) in err
    assert main(["eval", str(run_dir), "--checkpoint", "step_00000003", "--ema"]) == 2
    assert "ema.safetensors" in capsys.readouterr().err
    assert main(["eval", str(run_dir.parent / "nope")]) == 2
    assert "nope: no such run directory" in capsys.readouterr().err


def _perturbed_copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    weights = dest / "model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(weights))
    g = torch.Generator().manual_seed(0)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in state.items()
    }
    save_file(state, str(weights), metadata=meta)
    return dest


def test_compare_writes_json_markdown_and_figure(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = _perturbed_copy(run_dir, tmp_path / "b")
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                str(run_dir),
                str(other),
                "--out",
                str(out),
                "--batches",
                "1",
                "--k",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    result = json.loads((out / "compare.json").read_text())
    assert result["models"] == ["a", "b"]
    a, b = (result["results"][n]["metrics"] for n in ("a", "b"))
    assert a["neg_elbo"] != b["neg_elbo"] and result["results"]["a"]["samples"] == 20
    table = (out / "compare.md").read_text().splitlines()
    assert table[0] == "| metric | unit | a | b |" and any(row.startswith("| psnr | dB |") for row in table)
    # recon grid + KL per dim + bars for neg_elbo, iwae_nll, mse, psnr, ssim, mig
    assert _png(out / "compare.png")[1] == "8"


def test_compare_refuses_models_of_different_channels_naming_both(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    model = vaekit.build_model(
        vaekit.load_config({"model": {"hidden_dims": [8, 16], "latent_dim": 4}}).model, (3, 32, 32), "bce"
    )
    path = tmp_path / "rgb.safetensors"
    save_file(model.state_dict(), str(path), metadata={"config": json.dumps(model.config)})
    assert main(["compare", str(run_dir), str(path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rgb" in err and "a expects" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ other modalities
class TinyFeatures(nn.Module):
    """A small random feature extractor standing in for InceptionV3."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def _model(shape: tuple[int, ...], recon: str, **model: object) -> nn.Module:
    torch.manual_seed(0)
    cfg = vaekit.load_config({"model": {"hidden_dims": [8, 8], "latent_dim": 3, **model}})
    return vaekit.build_model(cfg.model, shape, recon).eval()


def test_images_with_lpips_and_fid_from_stand_in_networks(tmp_path: Path) -> None:
    x = torch.rand(12, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    result = vaekit.evaluate(
        _model((1, 32, 32), "bce"),
        x,
        metrics=["psnr", "lpips", "rfid", "fid"],
        lpips_pretrained=False,
        fid_feature=TinyFeatures(),
        batch_size=6,
    )
    assert set(result["metrics"]) == {"psnr", "lpips", "rfid", "fid"} and result["samples"] == 12
    assert result["metrics"]["rfid"] >= 0 and result["metrics"]["fid"] >= 0


def test_audio_gets_audio_metrics_and_wav_files(tmp_path: Path) -> None:
    x = torch.rand(8, 1, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = vaekit.evaluate(_model((1, 256), "mse", latent="spatial"), x, out_dir=tmp_path, k=2)
    assert {"si_sdr", "mrstft", "lsd", "scaling_factor"} <= set(result["metrics"]) and "psnr" not in result[
        "metrics"
    ]
    assert len(result["details"]["scaling_factor_per_channel"]) == 3  # one per latent channel
    wavs = sorted(p.name for p in (tmp_path / "audio").iterdir())
    assert wavs == [f"{i}-{kind}.wav" for i in range(4) for kind in ("input", "recon")]


def test_binary_tables_get_tag_scores(tmp_path: Path) -> None:
    x = (torch.rand(40, 10, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    result = vaekit.evaluate(_model((10,), "bce", arch="mlp"), x, k=2)
    assert {"f1_micro", "f1_macro", "map", "auroc"} <= set(result["metrics"])
    assert len(result["details"]["f1_per_label"]) == 10


def test_video_gets_frame_metrics_and_a_side_by_side_mp4(tmp_path: Path) -> None:
    x = torch.rand(4, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    result = vaekit.evaluate(_model((1, 4, 16, 16), "bce", latent="spatial"), x, out_dir=tmp_path, k=2)
    assert {"psnr", "ssim"} <= set(result["metrics"]) and "lpips" in result["skipped"]
    with av.open(str(tmp_path / "recon.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 4  # one per clip frame
    assert (frames[0].width, frames[0].height) == (
        (2 * 18 + 2) * 8,
        (4 * 18 + 2) * 8,
    )  # 4 clips × (input | recon)
