"""The ``vaekit`` command end to end: lazy imports, one-line errors with exit code 2, validate / presets, and a
train run whose printed run directory and saved config reproduce it bitwise.

Every command is a real subprocess (``python -m vaekit``); the error cases are launched side by side.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file

VAEKIT = [sys.executable, "-m", "vaekit"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*VAEKIT, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=ENV)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzipped: magic 0x08 0x<ndim>, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_mnist_dir(root: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return root


# ------------------------------------------------------------------------------------- import / help
def test_cli_parser_does_not_import_torch() -> None:
    code = "import vaekit.cli, sys; vaekit.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_vaekit_help_exits_zero(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("vaekit")
    cmd = [str(script)] if script.is_file() else [shutil.which("vaekit") or pytest.fail("no vaekit script")]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=ENV)
    assert out.returncode == 0, out.stderr
    for command in ("train", "validate", "presets"):
        assert command in out.stdout
    assert out.stderr == ""


# -------------------------------------------------------------------------------------- bad configs
# id → (arguments after `vaekit train`, strings the one-line message must contain). {d} is the case directory.
BAD = {
    "unknown_key": (["train.epochz=3"], ["train.epochz", "epochs"]),
    "bad_literal": (["train.precision=fp32"], ["train.precision", "fp32", "'no'", "'fp16'", "'bf16'"]),
    "bad_optimizer": (["optim.name=adamx"], ["optim.name", "adamx", "adam", "sgd"]),
    "bad_scheduler": (["optim.scheduler.name=foo"], ["optim.scheduler.name", "foo", "cosine"]),
    "negative_lr": (["optim.lr=-0.001"], ["optim.lr", "-0.001"]),
    "invalid_yaml": (["{d}/broken.yaml"], ["broken.yaml", "YAML"]),
    "missing_file": (["{d}/nowhere.yaml"], ["nowhere.yaml"]),
    "mnist_without_path": (["data.source=mnist"], ["data.path", "mnist"]),
    "truncated_gz": (
        ["data.source=mnist", "data.path={d}/mnist"],
        ["{d}/mnist/train-images-idx3-ubyte.gz"],
    ),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every bad case run once, all launched at the same time (each pays the interpreter start-up)."""
    root = tmp_path_factory.mktemp("bad")
    procs = {}
    for case, (args, _) in BAD.items():
        d = root / case
        d.mkdir()
        if case == "invalid_yaml":
            (d / "broken.yaml").write_text("train:\n  epochs: [1, 2\nmodel: {arch: conv\n")
        if case == "truncated_gz":
            gz = make_mnist_dir(d / "mnist") / "train-images-idx3-ubyte.gz"
            gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
        argv = [a.format(d=d) for a in args] + [f"run.dir={d}/runs", f"run.name={case}", "log.progress=false"]
        procs[case] = (
            subprocess.Popen([*VAEKIT, "train", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=d, env=ENV),
            argv,
            d,
        )
    results = {}
    try:
        for case, (proc, argv, d) in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            results[case] = (subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), d)
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_is_one_line_on_stderr_with_exit_code_2(bad_runs, case: str) -> None:
    out, d = bad_runs[case]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert out.returncode == 2, out.stderr
    assert lines[0].startswith("vaekit: ")
    for needle in BAD[case][1]:
        assert needle.format(d=d) in lines[0], (needle, lines[0])
    assert out.stdout == ""


# --------------------------------------------------------------------------------- validate / presets
def test_validate_prints_what_the_config_would_train(tmp_path: Path) -> None:
    from vaekit.config.load import load_config
    from vaekit.models import build_model, count_parameters

    tree = tiny_tree(tmp_path / "runs", "v")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tree))
    out = run_cli("validate", "tiny.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    cfg = load_config(tree)
    params = count_parameters(build_model(cfg.model, (1, 32, 32), cfg.loss.recon))
    for needle in (
        "360 train / 40 val",  # data sizes
        "(1, 32, 32)",
        f"{params:,} parameters",
        "recon: bce",  # loss terms
        "kl: β=1",
        "adam lr=0.001",  # optimizer
        "precision no",
    ):
        assert needle in text, (needle, text)
    assert text.strip().splitlines()[-1] == "config OK"
    assert not (tmp_path / "runs").exists(), "validate must not create a run directory"


def test_presets_lists_every_named_preset(tmp_path: Path) -> None:
    out = run_cli("presets", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.strip().splitlines()]
    assert set(names) >= {"beta-vae", "beta-vae-high", "vae-gan", "denoising", "lpips"}
    assert all(len(line.split(maxsplit=1)) == 2 for line in out.stdout.strip().splitlines()), "each has a description"


# ---------------------------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`vaekit train tiny.yaml optim.lr=0.02`, where tiny.yaml itself sets optim.lr=0.01."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_tree(root / "runs", "first", optim={"lr": 0.01})))
    out = run_cli("train", "tiny.yaml", "optim.lr=0.02", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "out": out, "run_dir": root / "runs" / "first"}


def test_train_prints_run_directory_as_last_stdout_line(cli_run) -> None:
    last = cli_run["out"].stdout.strip().splitlines()[-1]
    assert Path(last) == cli_run["run_dir"]
    assert (Path(last) / "model.safetensors").is_file()


def test_overrides_take_precedence_over_yaml_over_defaults(cli_run) -> None:
    resolved = yaml.safe_load((cli_run["run_dir"] / "config.yaml").read_text())
    assert resolved["optim"]["lr"] == 0.02  # command line beats the YAML's 0.01
    assert resolved["train"]["batch_size"] == 32  # the YAML beats the default 64
    assert resolved["model"]["hidden_dims"] == [8, 16]
    assert resolved["optim"]["name"] == "adam"  # untouched defaults stay
    from vaekit.config.schema import TrainConfig

    assert resolved["train"]["epochs"] == TrainConfig().epochs


def test_saved_config_reproduces_the_run_bitwise(cli_run) -> None:
    run_dir = cli_run["run_dir"]
    out = run_cli("train", str(run_dir / "config.yaml"), "run.name=again", cwd=cli_run["root"])
    assert out.returncode == 0, out.stderr[-3000:]
    again = Path(out.stdout.strip().splitlines()[-1])
    assert again == run_dir.parent / "again"
    a, b = load_file(str(run_dir / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
