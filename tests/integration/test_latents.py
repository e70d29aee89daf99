"""``vaekit encode`` / ``decode``: latents equal to ``model.encode``, stats equal to numpy's, resume, several
processes, both formats, and the one-line refusals (an occupied out dir, latents of another run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
import vaekit.pipeline.export
from vaekit.cli import main as cli_main
from vaekit.config.load import load_config
from vaekit.data import build_data
from vaekit.errors import ConfigError
from vaekit.latents.encode import decode_latents, encode_dataset, read_chunk
from vaekit.objectives.reconstruction import likelihood_mean


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import tiny_tree

    root = tmp_path_factory.mktemp("latents")
    cfg = tiny_tree(root / "runs", "t", data={"num_samples": 90, "image_size": 16},
                    model={"latent": "spatial", "latent_dim": 3}, train={"max_steps": 3, "batch_size": 16})
    return vaekit.train(cfg).run_dir


def all_latents(out: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((out / "manifest.json").read_text())
    parts: dict[str, list[torch.Tensor]] = {}
    for entry in manifest["chunks"]:
        parts.setdefault(entry["split"], []).append(read_chunk(out, entry, manifest["format"])[1])
    return {s: torch.cat(p) for s, p in parts.items()}


def test_encode_writes_model_encode_latents_and_numpy_stats(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "lat"
    assert cli_main(["encode", str(run), "--out", str(out), "--samples-per-chunk", "32", "--device", "cpu"]) == 0
    z = all_latents(out)
    model = vaekit.load_model(run)
    bundle = build_data(load_config(run / "config.yaml").data, 0)
    for split, source in (("train", bundle.train), ("val", bundle.val)):
        with torch.no_grad():
            mean, _ = model.encode(torch.stack([source[i]["x"] for i in range(len(source))]))
        torch.testing.assert_close(z[split], mean, rtol=0, atol=1e-6)  # batching may reorder float sums
    stats = json.loads((out / "stats.json").read_text())
    every = torch.cat([z["train"], z["val"]]).double().numpy()  # (N, C, h, w)
    per_channel = every.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(stats["mean"], per_channel.mean(1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["std"], per_channel.std(1), rtol=1e-10)
    assert stats["scaling_factor"] == pytest.approx(1 / every.std(), rel=1e-10)
    assert stats["shift_factor"] == pytest.approx(every.mean(), rel=1e-10, abs=1e-12)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 81, "val": 9} and manifest["latent_shape"] == [3, 4, 4]


def test_decode_writes_the_decoded_images_and_refuses_another_run(run: Path, tmp_path: Path) -> None:
    out = encode_dataset(run, tmp_path / "lat", split="val", device="cpu")
    dec = decode_latents(run, out, tmp_path / "dec", device="cpu")
    files = sorted((dec / "val").glob("*.png"))
    assert len(files) == 9
    model = vaekit.load_model(run)
    with torch.no_grad():
        x = likelihood_mean(model.recon_kind, model.decode(all_latents(out)["val"][:1])[0])[0]
    expected = (x.clamp(0, 1) * 255).round().to(torch.uint8)[0].numpy()  # shapes are grayscale: (H, W)
    assert np.array_equal(np.asarray(Image.open(files[0])), expected)

    other = vaekit.train(load_config(run / "config.yaml", ["run.name=other", "model.latent_dim=2"])).run_dir
    with pytest.raises(ConfigError, match="another model"):
        decode_latents(other, out, tmp_path / "dec2", device="cpu")
    assert cli_main(["decode", str(other), str(out), "--out", str(tmp_path / "dec3")]) == 2


def test_encode_refuses_an_out_dir_holding_other_files(run: Path, tmp_path: Path) -> None:
    (tmp_path / "lat").mkdir()
    (tmp_path / "lat" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        encode_dataset(run, tmp_path / "lat", device="cpu")


def test_encode_resumes_and_splits_across_processes(run: Path, tmp_path: Path, monkeypatch) -> None:
    ref = encode_dataset(run, tmp_path / "ref", per_chunk=16, device="cpu")
    # a killed encode: the manifest, the stats and one chunk missing; a rerun encodes only that chunk
    part = tmp_path / "part"
    encode_dataset(run, part, per_chunk=16, device="cpu")
    for name in ("manifest.json", "stats.json", "latents-train-000002.json", "latents-train-000002.safetensors"):
        (part / name).unlink()
    kept = (part / "latents-train-000001.safetensors").stat().st_mtime_ns
    encode_dataset(run, part, per_chunk=16, device="cpu")
    assert (part / "latents-train-000001.safetensors").stat().st_mtime_ns == kept
    assert json.loads((part / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())
    # two processes (RANK/WORLD_SIZE as torchrun sets them): disjoint chunks, the same figures
    multi = tmp_path / "multi"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        encode_dataset(run, multi, per_chunk=16, device="cpu")
        assert (multi / "manifest.json").is_file() == (rank == 1)
    assert json.loads((multi / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())
    with pytest.raises(ConfigError, match="finished encode"):
        encode_dataset(run, multi, per_chunk=16, device="cpu")


def test_encode_as_webdataset_shards_holds_the_same_latents(run: Path, tmp_path: Path) -> None:
    a = encode_dataset(run, tmp_path / "a", split="val", device="cpu")
    b = encode_dataset(run, tmp_path / "b", split="val", fmt="webdataset", device="cpu")
    assert torch.equal(all_latents(a)["val"], all_latents(b)["val"])
    assert (tmp_path / "b" / "latents-val-000000.tar").is_file()


def test_summary_holds_the_latent_stats_of_the_validation_split(run: Path, tmp_path: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())["latent_stats"]
    out = encode_dataset(run, tmp_path / "val", split="val", device="cpu")
    stats = json.loads((out / "stats.json").read_text())
    for key in ("scaling_factor", "shift_factor", "global_std"):
        assert summary[key] == pytest.approx(stats[key], rel=1e-5)
    np.testing.assert_allclose(summary["std"], stats["std"], rtol=1e-5)


def test_diffusers_export_config_carries_the_scale_and_shift(tmp_path: Path) -> None:
    from test_pretrained import cfg_for, make_tiny_vae

    vae = make_tiny_vae(tmp_path / "tiny-vae")
    run_dir = vaekit.train(cfg_for(tmp_path / "runs", "kl", vae, train={"max_steps": 1})).run_dir
    stats = json.loads((run_dir / "summary.json").read_text())["latent_stats"]
    for folder in (run_dir / "diffusers", vaekit.pipeline.export.export_run(run_dir, "diffusers", out=tmp_path / "e")):
        config = json.loads((Path(folder) / "config.json").read_text())
        assert config["scaling_factor"] == pytest.approx(stats["scaling_factor"])
        assert config["shift_factor"] == pytest.approx(stats["shift_factor"])


def test_encode_other_data_by_overrides_or_yaml(run: Path, tmp_path: Path) -> None:
    a = encode_dataset(run, tmp_path / "a", data=["data.num_samples=40"], split="train", device="cpu")
    assert json.loads((a / "manifest.json").read_text())["splits"] == {"train": 36}
    (tmp_path / "other.yaml").write_text("data: {source: shapes, num_samples: 20, image_size: 16}\n")
    b = encode_dataset(run, tmp_path / "b", data=[str(tmp_path / "other.yaml")], split="val", device="cpu")
    assert json.loads((b / "manifest.json").read_text())["splits"] == {"val": 2}
    with pytest.raises(ConfigError, match="only data"):
        encode_dataset(run, tmp_path / "c", data=["train.batch_size=3"], device="cpu")


def test_encode_killed_with_sigkill_resumes_to_the_same_latents_and_stats(run: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    ref = encode_dataset(run, tmp_path / "ref", per_chunk=1, data=["data.num_samples=400"], device="cpu")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vaekit", "encode", str(run), "--out", str(out), "--samples-per-chunk", "1",
           "--data", "data.num_samples=400", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while len(list(out.glob("latents-*.json"))) < 20:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the encode finished before it could be killed"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())
    a, b = all_latents(ref), all_latents(out)
    assert all(torch.equal(a[s], b[s]) for s in a)
    assert not list(out.glob("*.tmp"))


def test_encode_under_torchrun_with_two_processes_gives_the_same_stats(run: Path, tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    ref = encode_dataset(run, tmp_path / "ref", per_chunk=8, device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "vaekit", "encode", str(run), "--out", str(tmp_path / "ddp"), "--samples-per-chunk", "8",
           "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())
    a, b = all_latents(ref), all_latents(tmp_path / "ddp")
    assert all(torch.equal(a[s], b[s]) for s in a)
