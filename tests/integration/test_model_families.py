"""Every family (mlp, conv, resnet, causal-3D resnet) and bottleneck (gaussian, vq, rvq, fsq, lfq) trains through
``vaekit.train`` and the CLI with every engine feature it touches: validation's code health and rate, bitwise
resume (codebook EMA state included, also after SIGKILL), stages, EMA, LoRA, export and reload; a diffusers
autoencoder trains from a config (random weights) and exports to a folder ``from_pretrained`` loads."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file
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

import vaekit

RESNET = {"arch": "resnet", "hidden_dims": [8, 16], "latent_dim": 4, "resnet": {"layers_per_block": 1}}
VIDEO = {"data": {"source": "moving_shapes", "num_samples": 64, "frames": 5, "image_size": 16},
         "model": {"arch": "resnet", "hidden_dims": [8, 8, 8], "latent_dim": 2, "temporal_downsample": 2,
                   "resnet": {"layers_per_block": 1, "causal": True, "mid_attention": True}},
         "train": {"batch_size": 8}}
BOTTLENECKS = {
    "gaussian": {"kind": "gaussian"},
    "vq": {"kind": "vq", "codebook_size": 32, "threshold_ema_dead_code": 1.0, "kmeans_init": True},
    "vq_learned": {"kind": "vq", "codebook_size": 32, "codebook": "learned"},
    "rvq": {"kind": "rvq", "codebook_size": 16, "num_quantizers": 2},
    "fsq": {"kind": "fsq", "levels": [5, 3, 3]},
    "lfq": {"kind": "lfq", "codebook_size": 16},
}
# (family model section, bottleneck): mlp and conv with each quantiser once, resnet with every bottleneck
CASES = {
    "mlp-vq": ({"arch": "mlp", "hidden_dims": [32], "latent_dim": 4}, "vq"),
    "conv-rvq": ({"latent": "spatial"}, "rvq"),
    "conv-lfq": ({"latent": "spatial"}, "lfq"),
    **{f"resnet-{kind}": (RESNET, kind) for kind in BOTTLENECKS},
}


def case_tree(root: Path, name: str, case: str, **sections: Any) -> dict[str, Any]:
    from vaekit.config.load import deep_merge

    model, kind = CASES[case]
    base = {"model": {**model, "bottleneck": BOTTLENECKS[kind]}, "loss": {"recon": "mse"},
            "train": {"max_steps": 6, "ckpt_every": 3}}
    return tiny_tree(root, name, **deep_merge(base, sections))


def video_tree(root: Path, name: str, kind: str = "gaussian", **sections: Any) -> dict[str, Any]:
    from vaekit.config.load import deep_merge

    tree = deep_merge(VIDEO, {"model": {"bottleneck": BOTTLENECKS[kind]}, "loss": {"recon": "mse"}})
    return tiny_tree(root, name, **deep_merge(tree, sections))


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("case", list(CASES))
def test_every_family_and_bottleneck_trains_and_reports_code_health_and_rate(tmp_path: Path, case: str) -> None:
    result = vaekit.train(case_tree(tmp_path, case, case))
    val = result.split("val")[-1]
    kind = CASES[case][1]
    data_elements = 1 * 32 * 32
    model = vaekit.load_model(result.run_dir)
    latent = model.latent_shape
    if kind == "gaussian":
        assert "kl" in val and "commit" not in val
        assert val["bits_per_element"] == pytest.approx(val["kl"] / math.log(2) / data_elements)
    else:
        assert "kl" not in val and 0 < val["code_usage"] <= 1 and val["perplexity"] >= 1
        assert val["dead_codes"] >= 0
        positions = math.prod(latent[1:]) if len(latent) > 1 else 1
        assert val["bits_per_element"] == pytest.approx(val["bits_per_position"] * positions / data_elements)
    # the export reloads into the same model: the codebook (an EMA buffer or a parameter) included
    x = torch.rand(2, 1, 32, 32)
    trained = load_file(str(result.run_dir / "model.safetensors"))
    assert set(trained) == set(model.state_dict())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x).recon).all()


@pytest.mark.parametrize("case", list(CASES))
def test_every_family_and_bottleneck_trains_through_the_cli_and_exports(tmp_path: Path, case: str) -> None:
    import vaekit.cli

    cfg = tmp_path / f"{case}.yaml"
    cfg.write_text(yaml.safe_dump(case_tree(tmp_path / "runs", case, case, train={"max_steps": 1, "val_batches": 1})))
    assert vaekit.cli.main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / case
    assert vaekit.cli.main(["export", str(run), "--format", "safetensors"]) == 0
    assert set(load_file(str(run / "export" / "model.safetensors"))) == set(load_file(str(run / "model.safetensors")))


def test_causal_video_resnet_trains_with_a_quantised_latent(tmp_path: Path) -> None:
    result = vaekit.train(video_tree(tmp_path, "video", "fsq", train={"max_steps": 4}))
    model = vaekit.load_model(result.run_dir)
    assert model.latent_shape == (2, 2, 4, 4)  # 5 frames -> 1 + 1, 16x16 -> 4x4
    assert "code_usage" in result.split("val")[-1]


def test_cli_validate_describes_the_model_and_train_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "vq.yaml"
    cfg.write_text(yaml.safe_dump(case_tree(tmp_path / "runs", "cli", "resnet-vq")))
    shown = subprocess.run([sys.executable, "-m", "vaekit", "validate", str(cfg)], capture_output=True, text=True,
                           env=CHILD_ENV, timeout=240)
    assert shown.returncode == 0, shown.stderr[-2000:]
    out = shown.stdout
    assert "parameters, latent shape (4, 16, 16), compression 1 (input elements per latent element)" in out
    assert "bottleneck vq 32 codes" in out and "5 bits per latent position" in out
    assert "commit: Σ(h − sg(z_q))² ×0.25" in out and "kl:" not in out
    trained = subprocess.run([sys.executable, "-m", "vaekit", "train", str(cfg), "train.max_steps=2"],
                             capture_output=True, text=True, env=CHILD_ENV, timeout=240)
    assert trained.returncode == 0, trained.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "vaekit", "validate", str(cfg), "loss.kl.free_bits=1"],
                         capture_output=True, text=True, env=CHILD_ENV, timeout=240)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "loss.kl.free_bits" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------------ resume
def resumed(root: Path, tree: dict[str, Any], k: int) -> tuple[Any, Any]:
    name = tree["run"]["name"]
    straight = vaekit.train(tree)
    copy = root / f"{name}-resumed"
    shutil.copytree(straight.run_dir, copy)
    truncate_after(copy, k)
    return straight, vaekit.train(resume=copy)


@pytest.fixture
def one_thread():
    """One intra-op thread: a busy machine reschedules two threads' partial sums (seen once: a 2e-7 difference in
    the learned-codebook run), and these tests compare two runs bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", [k for k in BOTTLENECKS if k != "gaussian"])
def test_resume_is_bitwise_for_every_quantiser_codebook_state_included(tmp_path: Path, kind: str, one_thread) -> None:
    straight, again = resumed(tmp_path, case_tree(tmp_path, kind, f"resnet-{kind}", train={"ema": {"enabled": True}}), 3)
    a, b = straight.run_dir, again.run_dir
    assert_same_weights(a / "model.safetensors", b / "model.safetensors")
    last_a, last_b = complete_checkpoints(a)[-1], complete_checkpoints(b)[-1]
    for weights in last_a.glob("*.safetensors"):  # model and ema, codebook buffers included
        assert_same_weights(weights, last_b / weights.name)
    if kind in ("vq", "rvq"):
        assert any("embed_avg" in key for key in load_file(str(last_a / "model.safetensors")))
    assert_same_tree(straight.history, again.history, "history")


def test_two_stage_run_with_a_quantised_model_resumes_bitwise_between_stages(tmp_path: Path) -> None:
    stages = [{"name": "all", "steps": 4},
              {"name": "decoder", "steps": 4, "freeze": ["encoder"], "metric": "val/code_usage", "mode": "above",
               "threshold": 2.0, "max_steps": 4}]
    tree = case_tree(tmp_path, "staged", "resnet-vq", stages=stages, train={"max_steps": None, "ckpt_every": 2})
    straight, again = resumed(tmp_path, tree, 4)
    assert [r["stage"] for r in straight.split("val")][-1] == "decoder"
    assert_same_weights(straight.run_dir / "model.safetensors", again.run_dir / "model.safetensors")
    # the encoder (and the codebook, which the frozen encoder side feeds) stayed fixed in the decoder stage
    ckpts = complete_checkpoints(straight.run_dir)
    at_4, last = load_file(str(ckpts[1] / "model.safetensors")), load_file(str(ckpts[-1] / "model.safetensors"))
    assert all(torch.equal(at_4[k], last[k]) for k in at_4 if k.startswith("encoder."))
    assert any(k.startswith("bottleneck.") for k in at_4)  # the EMA codebook and its statistics
    assert all(torch.equal(at_4[k], last[k]) for k in at_4 if k.startswith("bottleneck."))
    assert not all(torch.equal(at_4[k], last[k]) for k in at_4 if k.startswith("decoder."))


def _kill_and_resume(tmp_path: Path, tree: dict[str, Any], kill_at: int) -> None:
    """Train ``tree`` twice in subprocesses, SIGKILL one once a checkpoint >= ``kill_at`` exists, resume it, and
    compare weights and logs with the uninterrupted run."""
    root = Path(tree["run"]["dir"])
    configs = {}
    for name in ("killed", "straight"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump({**tree, "run": {**tree["run"], "name": name}}))
    run_dir = root / "killed"
    train_and_kill(tmp_path, configs, run_dir, kill_at, wait_s=240)
    resume = subprocess.run([sys.executable, "-m", "vaekit", "train", "--resume", str(run_dir)], capture_output=True,
                            text=True, timeout=300, env=CHILD_ENV)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert_same_weights(root / "straight" / "model.safetensors", run_dir / "model.safetensors")
    records = [without_timing(r) for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert records == [without_timing(r) for r in read_jsonl(root / "straight" / "metrics.jsonl")]


def test_quantised_model_resumes_bitwise_after_sigkill(tmp_path: Path) -> None:
    tree = case_tree(tmp_path / "runs", "q", "resnet-vq", train={"max_steps": 40, "ckpt_every": 5},
                     log={"every": 1})
    _kill_and_resume(tmp_path, tree, 10)


def test_causal_video_model_resumes_bitwise_after_sigkill(tmp_path: Path) -> None:
    tree = video_tree(tmp_path / "runs", "v", train={"max_steps": 30, "ckpt_every": 5}, log={"every": 1})
    _kill_and_resume(tmp_path, tree, 10)


# ------------------------------------------------------------------------------------ engine features
def test_lora_finds_the_resnet_convs_and_attention(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    tree = case_tree(tmp_path, "lora", "resnet-gaussian", finetune={"mode": "lora", "rank": 2},
                     train={"max_steps": 2})
    result = vaekit.train(tree)
    adapter_config = next((result.run_dir / "lora").rglob("adapter_config.json"))
    adapters = json.loads(adapter_config.read_text())["target_modules"]
    names = " ".join(adapters)
    assert "to_q" in names and "conv1" in names and "conv2" in names


def test_bf16_autocast_trains_resnet_with_a_quantiser(tmp_path: Path) -> None:
    result = vaekit.train(case_tree(tmp_path, "bf16", "resnet-lfq", train={"precision": "bf16", "max_steps": 2}))
    assert math.isfinite(result.split("val")[-1]["loss"])


def test_diffusers_autoencoder_trains_from_a_config_and_exports_a_from_pretrained_folder(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    config = {"in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
              "latent_channels": 2, "norm_num_groups": 4, "down_block_types": ["DownEncoderBlock2D"] * 2,
              "up_block_types": ["UpDecoderBlock2D"] * 2}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    tree = tiny_tree(tmp_path, "scratch", model={"arch": "diffusers", "class": "AutoencoderKL",
                                                 "diffusers_config": str(path)},
                     loss={"recon": "mse"}, train={"max_steps": 2})
    tree["model"].pop("hidden_dims"), tree["model"].pop("latent_dim"), tree["model"].pop("norm")
    result = vaekit.train(tree)
    theirs = diffusers.AutoencoderKL.from_pretrained(str(result.run_dir / "diffusers")).eval()
    ours = vaekit.load_model(result.run_dir).eval()
    z = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.decode(z).sample, ours.module.decode(z).sample, rtol=0, atol=0)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(vaekit.errors.ConfigError, match=r"^model\.diffusers_config: .* holds a list, not a mapping"):
        vaekit.train({**tree, "model": {**tree["model"], "diffusers_config": str(bad)}})


# ------------------------------------------------------------------------------------------ eval / compare
def test_eval_and_compare_report_code_health_and_rate_at_equal_footing(tmp_path: Path) -> None:
    from vaekit.eval import compare, evaluate

    runs = {kind: vaekit.train(case_tree(tmp_path, kind, f"resnet-{kind}", train={"max_steps": 2})).run_dir
            for kind in ("gaussian", "vq", "rvq")}
    result = evaluate(runs["vq"], metrics=["psnr", "rate", "codebook", "mse"], batches=2, batch_size=16)
    m = result["metrics"]
    assert 0 < m["code_usage"] <= 1 and 1 <= m["perplexity"] <= 32 and m["dead_codes"] >= 0
    assert m["bits_per_position"] == 5.0 and m["bits_per_element"] == pytest.approx(5.0 * 16 * 16 / (32 * 32))
    assert result["units"]["bits_per_element"] == "bits/input element"
    # defaults: the posterior metrics are skipped with a reason, not crashed on
    default = evaluate(runs["rvq"], batches=1, batch_size=16)
    assert "elbo" in default["skipped"] and "quantised" in default["skipped"]["elbo"]
    assert default["metrics"]["bits_per_position"] == 8.0 and "code_usage" in default["metrics"]
    table = compare([runs["gaussian"], runs["vq"]], metrics=["psnr", "ssim", "elbo", "rate", "codebook"],
                    batches=2, batch_size=16, out_dir=tmp_path / "cmp")
    gauss, vq = table["results"]["gaussian"]["metrics"], table["results"]["vq"]["metrics"]
    assert "neg_elbo" in gauss and "neg_elbo" not in vq  # −ELBO where defined
    assert gauss["bits_per_element"] == pytest.approx(gauss["bits_per_position"] * 16 * 16 / (32 * 32))
    assert "code_usage" in vq and "code_usage" not in gauss
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| bits_per_element | bits/input element |" in md and "| code_usage |" in md


# ------------------------------------------------------------------------------------------ data parallel
def test_two_processes_train_a_quantised_resnet_like_one(tmp_path: Path) -> None:
    """torchrun with 2 processes vs 1 on the same global batch: the codebook's EMA statistics are all-reduced by
    the library (its ``sync_codebook`` sees the process group vaekit opened before building the model), so the
    weights, the EMA codebook and the validation's code counts agree."""
    import os
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for n in (2, 1):
        cfg = tmp_path / f"ddp{n}.yaml"
        tree = case_tree(tmp_path / "runs", f"ddp{n}", "resnet-vq", optim={"name": "sgd", "lr": 1e-4},
                         train={"max_steps": 4, "ckpt_every": None})
        tree["model"]["bottleneck"] = {"kind": "vq", "codebook_size": 32}  # no k-means: its init is per process
        cfg.write_text(yaml.safe_dump(tree))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
               str(port()), "-m", "vaekit", "train", str(cfg)]
        procs[n] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for proc in procs.values():
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    a = load_file(str(tmp_path / "runs" / "ddp2" / "model.safetensors"))
    b = load_file(str(tmp_path / "runs" / "ddp1" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    val = [[r for r in read_jsonl(tmp_path / "runs" / f"ddp{n}" / "metrics.jsonl") if r["split"] == "val"][-1]
           for n in (2, 1)]
    assert val[0]["code_usage"] == val[1]["code_usage"] and val[0]["dead_codes"] == val[1]["dead_codes"]


def test_fsdp_trains_a_quantised_resnet_and_exports_full_weights(tmp_path: Path) -> None:
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "fsdp.yaml"
    tree = case_tree(tmp_path / "runs", "fsdp", "resnet-fsq", train={"max_steps": 3, "strategy": "fsdp"})
    cfg.write_text(yaml.safe_dump(tree))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m",
           "vaekit", "train", str(cfg)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    model = vaekit.load_model(tmp_path / "runs" / "fsdp")
    assert set(load_file(str(tmp_path / "runs" / "fsdp" / "model.safetensors"))) == set(model.state_dict())
    assert "code_usage" in [r for r in read_jsonl(tmp_path / "runs" / "fsdp" / "metrics.jsonl") if r["split"] == "val"][-1]
