"""What a hostile tester tried (issue 19): directories vaekit does not own, odd lock files, damaged or incomplete
checkpoints, non-finite weights and buffers, a changed process count, damaged run files and bad options. Each is
refused in one line (``vaekit: <label>: ...``, exit 2; a non-finite run exits 3), and nothing that is not
vaekit's own is ever removed or overwritten.

Runs are in-process (``vaekit.cli.main`` / ``vaekit.train``) on the tiny conv config of ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_tree
from safetensors.torch import load_file
from test_robustness import run_cli, write_config

import vaekit
from vaekit import cli
from vaekit.engine import checkpoint as ckpt_mod


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """``finished(name)`` → a copy (in ``dest``) of a finished tiny run trained once per module."""
    root = tmp_path_factory.mktemp("finished")
    tree = tiny_tree(root, "ref", train={"max_steps": 8, "ckpt_every": 4, "ema": {"enabled": True, "decay": 0.9}})
    reference = vaekit.train(tree).run_dir

    def copy(dest: Path) -> Path:
        shutil.copytree(reference, dest)
        (dest / ".lock").unlink(missing_ok=True)
        return dest

    return copy


# ------------------------------------------------------------------------------------------ 1. lost files
def test_a_foreign_directory_with_a_config_yaml_is_refused_and_left_untouched(tmp_path: Path, capsys) -> None:
    run = tmp_path / "runs" / "p"
    (run / "src").mkdir(parents=True)
    (run / "config.yaml").write_text("lr: 0.1\n")
    (run / "src" / "main.py").write_text("x\n")
    tree = tiny_tree(tmp_path / "runs", "p", run={"overwrite": True})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and len(lines) == 1 and "is not a vaekit run directory" in lines[0], lines
    assert (run / "src" / "main.py").read_text() == "x\n" and (run / "config.yaml").read_text() == "lr: 0.1\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "src"]  # no .lock, no marker


def test_resume_of_a_foreign_directory_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "p"
    run.mkdir()
    write_config(run / "config.yaml", tiny_tree(tmp_path, "p"))
    (run / "notes.txt").write_text("mine\n")
    code, lines = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(lines) == 1 and "is not a vaekit run directory" in lines[0], lines
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]


def test_overwrite_removes_only_vaekits_own_files(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / "notes.txt").write_text("mine\n")
    (run / "mine").mkdir()
    tree = tiny_tree(tmp_path / "runs", "ref", train={"max_steps": 4}, run={"overwrite": True})
    code, _ = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 0
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "mine").is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004"]  # the old run's are gone
    assert json.loads((run / ".vaekit-run").read_text())["format"] == 1


def test_a_run_made_before_the_marker_is_still_resumed_and_overwritten(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / ".vaekit-run").unlink()
    code, lines = run_cli(["train", "--resume", str(run), "train.max_steps=12"], capsys)
    assert code == 0, lines
    assert (run / ".vaekit-run").is_file()  # adopted
    (run / ".vaekit-run").unlink()
    tree = tiny_tree(tmp_path / "runs", "ref", train={"max_steps": 4}, run={"overwrite": True})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 0, lines


@pytest.mark.parametrize("resume", [False, True])
def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(finished, tmp_path: Path, capsys, resume) -> None:
    run = finished(tmp_path / "runs" / "ref")
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (run / ".lock").symlink_to(target)
    tree = tiny_tree(tmp_path / "runs", "ref", run={"overwrite": True})
    argv = ["train", "--resume", str(run)] if resume else ["train", str(write_config(tmp_path / "cfg.yaml", tree))]
    code, lines = run_cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and "is a symbolic link" in lines[0] and ".lock" in lines[0], lines
    assert target.read_text() == "precious\n" and (run / ".lock").is_symlink()


def test_a_lock_that_is_a_directory_says_so(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / ".lock").mkdir()
    code, lines = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(lines) == 1 and "is a directory" in lines[0], lines


def test_a_lock_with_a_second_name_is_not_truncated(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    os.link(target, run / ".lock")
    code, lines = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(lines) == 1 and "not a plain file of its own" in lines[0], lines
    assert target.read_text() == "precious\n"


def test_a_refused_start_leaves_no_lock_behind(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    tree = tiny_tree(tmp_path / "runs", "ref")
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and "already holds a run" in lines[0], lines
    assert not (run / ".lock").exists()


def test_a_held_lock_names_the_process_that_holds_it_not_the_pid_in_the_file(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "runs" / "ref")
    (run / ".lock").write_text("pid 1 on elsewhere since yesterday")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, lines = run_cli(["train", "--resume", str(run)], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and len(lines) == 1 and f"is in use by pid {holder.pid}" in lines[0], lines
    assert "pid 1 " not in lines[0]


# ------------------------------------------------------------------------------ 2. checkpoint completeness
def unfinish(run: Path) -> Path:
    """A finished run made to look killed after its last checkpoint (step 8)."""
    for name in ("model.safetensors", "summary.json", "model_config.json"):
        (run / name).unlink()
    return run / "checkpoints" / "step_00000008"


def make_legacy(ckpt: Path) -> None:
    """A checkpoint as vaekit wrote it before manifests: no manifest, no format or world in state.json."""
    (ckpt / "manifest.json").unlink()
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in ("format", "world")}))


def flip_a_bit(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-5] ^= 0x01
    file.write_bytes(bytes(data))


def step_abc(file: Path) -> None:
    state = json.loads(file.read_text())
    file.write_text(json.dumps({**state, "step": "abc"}))


DAMAGE = {  # name → (file, damage, legacy, the warning's words)
    "model-missing": ("model.safetensors", Path.unlink, False, "model.safetensors: missing"),
    "model-missing-legacy": ("model.safetensors", Path.unlink, True, "model.safetensors: missing"),
    "ema-missing-legacy": ("ema.safetensors", Path.unlink, True, "ema.safetensors: missing"),
    "bit-flip": ("model.safetensors", flip_a_bit, False, "the hash does not match"),
    "state-step-tampered": ("state.json", step_abc, False, "the manifest says"),
    "state-step-abc-legacy": ("state.json", step_abc, True, "damaged (step 'abc'"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_an_incomplete_or_damaged_checkpoint_falls_back_to_the_previous_with_one_warning(
    finished, tmp_path: Path, capsys, case: str
) -> None:
    name, damage, legacy, words = DAMAGE[case]
    run = finished(tmp_path / "run")
    reference = load_file(str(run / "model.safetensors"))
    last = unfinish(run)
    if legacy:
        make_legacy(last)
    damage(last / name)
    capsys.readouterr()
    vaekit.train(resume=run)
    err = capsys.readouterr().err
    assert err.count("skipping checkpoint step_00000008") == 1 and words in err, err
    assert "resuming at step 4 in" in err
    resumed = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # the previous one resumes bitwise


def test_a_legacy_checkpoint_without_a_manifest_still_resumes(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "run")
    last = unfinish(run)
    make_legacy(last)
    capsys.readouterr()
    vaekit.train(resume=run)
    err = capsys.readouterr().err
    assert "skipping" not in err and "resuming at step 8 in" in err, err


# ------------------------------------------------------------------------------ 4. process count
def test_resuming_with_another_process_count_is_one_line_naming_the_count(tmp_path: Path) -> None:
    from vaekit.errors import ConfigError

    two = ckpt_mod.CheckpointManager(tmp_path / "ck", rank=0, world=2, is_main=True, gather=lambda x: x * 2,
                                     keep_last=2)
    two.register("module", "model", torch.nn.Linear(2, 2))
    two.register("local", "rng", ckpt_mod.RNGState())
    path = two.save(3, {"step": 3, "stage_index": 0})
    assert (path / "rng_rank1.pt").is_file()
    one = ckpt_mod.CheckpointManager(tmp_path / "ck", rank=0, world=1, is_main=True, gather=lambda x: x, keep_last=2)
    one.register("module", "model", torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"trained with 2 processes and is resumed with 1; resume it with 2"):
        one.load()
    make_legacy(path)  # a checkpoint from before the count was saved: one RNG file per process tells it
    with pytest.raises(ConfigError, match=r"trained with 2 processes and is resumed with 1"):
        one.load()


# ------------------------------------------------------------------------------ 3. non-finite
def all_finite(ckpt: Path) -> bool:
    tensors = list(load_file(str(ckpt / "model.safetensors")).values())
    optim = torch.load(ckpt / "optim.pt", weights_only=True)
    for update in (v for k, v in optim.items() if k in ("generator", "discriminator")):
        tensors += [t for per in update["optimizer"]["state"].values() for t in per.values() if torch.is_tensor(t)]
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_exploding_batch_norm_buffer_stops_the_run_and_the_last_good_checkpoint_is_finite(
    tmp_path: Path, capsys, policy: str
) -> None:
    tree = tiny_tree(tmp_path / "runs", "bn", model={"norm": "batch"}, optim={"lr": 1e6}, log={"every": 1},
                     train={"ckpt_every": 1, "nan_policy": policy})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 3 and len(lines) == 1 and "running_var" in lines[0], lines
    good = Path(lines[0].split("the last good checkpoint is ")[1])
    assert all_finite(good)
    assert not (tmp_path / "runs" / "bn" / "model.safetensors").exists()


def test_a_huge_beta_stops_the_run_instead_of_checkpointing_an_infinite_optimizer_state(tmp_path: Path, capsys) -> None:
    # the losses stay finite (val loss ~1e36) while Adam's second moments overflow to inf
    tree = tiny_tree(tmp_path / "runs", "beta", loss={"beta": 1e38}, model={"norm": "batch"}, train={"ckpt_every": 4})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 3 and len(lines) == 1 and lines[0].startswith("vaekit: stopped: non-finite values"), lines
    assert "exp_avg_sq of model: " in lines[0], lines


def test_a_non_finite_validation_loss_stops_the_run(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaekit.engine.validation import Validator

    real = Validator.run

    def run(self: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        return {**real(self, *args, **kwargs), "loss": float("inf")}

    monkeypatch.setattr(Validator, "run", run)
    tree = tiny_tree(tmp_path / "runs", "val", train={"ckpt_every": 4, "val_every": 8})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 3 and len(lines) == 1, lines
    assert "non-finite validation loss at step 8 in term(s) loss; the last good checkpoint is " in lines[0], lines


# ------------------------------------------------------------------------------ 5. damaged run files, options
def with_model_config(run: Path, text: str) -> Path:
    (run / "model_config.json").write_text(text)
    return run


MODEL_CONFIGS = {  # model_config.json → the words of the one line
    "not-json": ("not json", "damaged (not JSON"),
    "a-list": ("[1, 2]", "damaged (a list"),
    "unknown-arch": ('{"arch": "nope"}', "cannot build a model (unknown arch 'nope'"),
    "unknown-kwarg": (None, "cannot build a model"),
    "negative-latent": (None, "cannot build a model (Trying to create tensor with negative dimension"),
    "huge": (None, "more than the available memory"),
}


def _edited_config(run: Path, case: str) -> str:
    text, _ = MODEL_CONFIGS[case]
    if text is not None:
        return text
    config = json.loads((run / "model_config.json").read_text())
    config |= {"unknown-kwarg": {"bogus": 1}, "negative-latent": {"latent_dim": -1},
               "huge": {"hidden_dims": [10**6, 10**6]}}[case]
    return json.dumps(config)


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("case", list(MODEL_CONFIGS))
def test_a_damaged_model_config_is_one_line(finished, tmp_path: Path, capsys, case: str, command: str) -> None:
    run = finished(tmp_path / "run")
    with_model_config(run, _edited_config(run, case))
    ckpt = run / "checkpoints" / "step_00000008"
    argv = [command, str(run), "--checkpoint", str(ckpt)] + (["--batches", "1", "--metrics", "mse"] if command == "eval" else [])
    code, lines = run_cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and MODEL_CONFIGS[case][1] in lines[0], lines
    assert "model_config.json" in lines[0]


def test_load_model_on_damaged_files_is_one_line(finished, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from vaekit.errors import CheckpointError, ConfigError

    run = finished(tmp_path / "run")
    with pytest.raises(ConfigError, match="model= must be an nn.Module"):
        vaekit.load_model(run, model="x")
    weights = load_file(str(run / "model.safetensors"))
    save_file(weights, str(run / "model.safetensors"), metadata={"vaekit": "{bad"})
    with pytest.raises(CheckpointError, match="damaged metadata"):
        vaekit.load_model(run)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        vaekit.load_model(run / "config.yaml")


def test_the_weights_do_not_fit_message_lists_the_keys(finished, tmp_path: Path) -> None:
    from vaekit.errors import CheckpointError

    run = finished(tmp_path / "run")
    config = json.loads((run / "model_config.json").read_text())
    other = vaekit.load_model(run)
    config["latent_dim"] += 1
    from vaekit.models import build_model_from_config

    with pytest.raises(CheckpointError, match=r"the weights do not fit this model \(\d+ mismatched \(file vs model\): ") as err:
        vaekit.load_model(run, model=build_model_from_config(config))
    assert "decoder.proj.0.weight (1024, 4) vs (1024, 5)" in str(err.value)
    assert other is not None


def test_eval_of_nan_weights_is_one_line(finished, tmp_path: Path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = finished(tmp_path / "run")
    file = run / "model.safetensors"
    with safe_open(str(file), "pt") as fh:
        meta = fh.metadata()
    weights = {k: v * float("nan") if k.startswith("encoder") and v.is_floating_point() else v
               for k, v in load_file(str(file)).items()}
    save_file(weights, str(file), metadata=meta)
    code, lines = run_cli(["eval", str(run), "--batches", "1"], capsys)
    assert code == 2 and len(lines) == 1 and "holds non-finite weights (encoder." in lines[0], lines


def test_a_checkpoint_with_a_damaged_state_is_refused_by_eval_and_export(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "run")
    ckpt = run / "checkpoints" / "step_00000008"
    step_abc(ckpt / "state.json")
    ckpt_mod.write_manifest(ckpt)
    for argv in (["eval", str(run), "--checkpoint", "step_00000008", "--batches", "1"],
                 ["export", str(run), "--checkpoint", str(ckpt)]):
        code, lines = run_cli(argv, capsys)
        assert code == 2 and len(lines) == 1 and "damaged (step 'abc'" in lines[0], (argv, lines)
    code, lines = run_cli(["eval", str(run), "--checkpoint", str(run / "config.yaml")], capsys)
    assert code == 2 and len(lines) == 1 and "not a readable safetensors file" in lines[0], lines


OPTIONS = {
    "k0": (["--k", "0"], "k: 0"),
    "batches0": (["--batches", "0"], "batches: 0"),
    "batches-1": (["--batches", "-1"], "batches: -1"),
    "batch-size0": (["--batch-size", "0"], "batch_size: 0"),
    "device-nope": (["--device", "nope"], "device: 'nope' is not a device"),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_eval_options_are_one_line(finished, tmp_path: Path, capsys, case: str) -> None:
    run = finished(tmp_path / "run")
    args, words = OPTIONS[case]
    code, lines = run_cli(["eval", str(run), *args], capsys)
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert not (run / "eval").exists()


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": -1}, {"batches": 0}])
def test_bad_evaluate_arguments_are_one_line(finished, tmp_path: Path, kwargs: dict[str, Any]) -> None:
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{next(iter(kwargs))}: "):
        vaekit.evaluate(finished(tmp_path / "run"), **kwargs)


def test_outputs_that_cannot_be_written_are_one_line(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "run")
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["export", str(run), "--out", str(tmp_path / "a-file")], "exists and is not a folder"),
        (["export", str(run), "--out", "/proc"], "cannot write '/proc/model.safetensors.tmp'"),
        (["compare", str(run), str(run), "--out", "/dev/null", "--batches", "1"], "exists and is not a folder"),
        (["export", str(tmp_path)], "not a vaekit run directory"),
    ]
    for argv, words in cases:
        code, lines = run_cli(argv, capsys)
        assert code == 2 and len(lines) == 1 and words in lines[0], (argv, lines)
    assert (tmp_path / "a-file").read_text() == "x"


def test_eval_on_a_read_only_run_directory_is_one_line(finished, tmp_path: Path, capsys) -> None:
    run = finished(tmp_path / "run")
    if subprocess.run(["chattr", "+i", str(run)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        code, lines = run_cli(["eval", str(run), "--batches", "1"], capsys)
    finally:
        subprocess.run(["chattr", "-i", str(run)], check=False)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vaekit: run error: out_dir"), lines


# ------------------------------------------------------------------------------ 5. the Python API
class NoParams(torch.nn.Module):
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1)[:, :4], x.flatten(1)[:, :4] * 0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class Linear(torch.nn.Module):
    """A tiny user VAE for 1×16×16 items (256 values)."""

    def __init__(self, d: int = 256) -> None:
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(d, 8), torch.nn.Linear(4, 256)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc(x.flatten(1)).chunk(2, 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z).view(-1, 1, 16, 16)


class TwoArgs(Linear):
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return super().encode(x)


class Buggy(Linear):
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("a bug in the user's own encode")


class BuggyDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> Any:
        raise ValueError("a bug in the user's own Dataset")


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self) -> Any:
        return iter([{"x": torch.rand(1, 16, 16)} for _ in range(40)])


def api_tree(tmp_path: Path) -> dict[str, Any]:
    return tiny_tree(tmp_path / "runs", "api", data={"image_size": 16, "num_samples": 100},
                     model={"arch": "mlp", "hidden_dims": [16]}, train={"batch_size": 16, "max_steps": 2})


def _images(n: int = 64, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, side, side)


def _loader(items: list[torch.Tensor]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(items, batch_size=None)


API_CASES: dict[str, tuple[Any, str, str]] = {  # name → (kwargs for train, label, words)
    "overrides-ints": (lambda: {"overrides": [1, 2]}, "config error", "overrides: expected a list"),
    "hooks-int": (lambda: {"hooks": [1]}, "config error", "hooks: each hook must be callable"),
    "no-parameters": (lambda: {"model": NoParams(), "x": _images()}, "model error", "has no parameters"),
    "encode-signature": (lambda: {"model": TwoArgs(), "x": _images()}, "model error", "TwoArgs.encode(x, y) must take one tensor"),
    "shape-does-not-fit": (lambda: {"model": Linear(10), "x": _images()}, "model error", "cannot take items of shape (1, 16, 16)"),
    "varying-batches": (lambda: {"train_data": _loader([_images(4), _images(4, 8)] * 4), "val_data": _images(8)},
                        "data error", "batch 1 holds items of shape (1, 8, 8)"),
    "empty-loader": (lambda: {"train_data": _loader([]), "val_data": _images(8)}, "data error", "yields no batches"),
    "meta-tensor": (lambda: {"x": torch.empty(64, 1, 16, 16, device="meta")}, "data error", "a meta tensor"),
    "iterable-dataset": (lambda: {"train_data": Stream()}, "data error", "an IterableDataset"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_python_api_mistakes_are_one_line_errors(tmp_path: Path, case: str) -> None:
    from vaekit.errors import VaekitError, user_message

    kwargs, label, words = API_CASES[case]
    with pytest.raises(VaekitError) as err:
        vaekit.train(api_tree(tmp_path), **kwargs())
    line, code = user_message(err.value)
    assert code == 2 and line.startswith(f"{label}: ") and words in line, line
    if case != "varying-batches":  # found when the odd batch comes; the rest before anything is created
        assert not (tmp_path / "runs" / "api").exists()


def test_set_seed_with_a_string_is_one_line() -> None:
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="set_seed: seed must be a whole number"):
        vaekit.set_seed("a")


@pytest.mark.parametrize("kwargs", [lambda: {"model": Buggy(), "x": _images()}, lambda: {"train_data": BuggyDataset()}])
def test_an_exception_from_the_users_own_code_keeps_its_type_and_traceback(tmp_path: Path, kwargs: Any) -> None:
    with pytest.raises(ValueError, match="a bug in the user's own") as err:
        vaekit.train(api_tree(tmp_path), **kwargs())
    from vaekit.errors import VaekitError

    assert not isinstance(err.value, VaekitError)  # not relabelled "config error"
    assert err.traceback[-1].path == Path(__file__)  # raised here, in the user's code


def test_missing_perceptual_weights_from_python_leave_no_run_directory(tmp_path: Path) -> None:
    from vaekit.errors import MissingWeightsError

    perceptual = {"kind": "vgg", "weight": 0.1, "weights_path": str(tmp_path / "missing.pth")}
    tree = tiny_tree(tmp_path / "runs", "lpips", loss={"perceptual": perceptual})
    with pytest.raises(MissingWeightsError):
        vaekit.train(tree)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ 5. disks, trackers, names
@pytest.fixture
def tiny_disk(tmp_path: Path):
    """``tiny_disk(size)`` → a fresh tmpfs of ``size`` (e.g. "400k"): a real full disk (needs root)."""
    mounts: list[Path] = []

    def make(size: str) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)  # lazy: a file still open never keeps it


@pytest.mark.parametrize("size", ["150k", "400k", "700k"])
def test_a_really_full_disk_is_one_line_and_leaves_no_half_written_checkpoint(
    tiny_disk, tmp_path: Path, capsys, size: str
) -> None:
    disk = tiny_disk(size)
    tree = tiny_tree(disk, "r", model={"arch": "mlp", "hidden_dims": [64]}, data={"image_size": 16},
                     train={"max_steps": 40, "ckpt_every": 2}, log={"every": 1})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and len(lines) == 1 and "(No space left on device" in lines[0], lines
    assert lines[0].startswith("vaekit: run error: cannot write"), lines
    leftovers = [p.name for p in (disk / "r" / "checkpoints").glob("step_*") if "." in p.name]
    assert not leftovers, leftovers


def test_a_full_disk_at_a_metrics_write_is_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from vaekit.tracking.tracker import Tracker

    real, calls = Tracker.log, [0]

    def log(self: Tracker, record: dict[str, Any]) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir / "metrics.jsonl"))
        real(self, record)

    monkeypatch.setattr(Tracker, "log", log)
    tree = tiny_tree(tmp_path / "runs", "r", train={"ckpt_every": 4})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    run = tmp_path / "runs" / "r"
    assert code == 2 and len(lines) == 1, lines
    assert f"(No space left on device: {run / 'metrics.jsonl'}); the last complete checkpoint is " in lines[0], lines
    assert "vaekit train --resume" in lines[0]


def test_wandb_without_an_api_key_is_one_line_before_training(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    tree = tiny_tree(tmp_path / "runs", "wb", log={"wandb": True})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and len(lines) == 1 and "log.wandb: no W&B API key" in lines[0], lines
    assert not list((tmp_path / "runs" / "wb").glob("checkpoints/*"))


def test_mlflow_with_an_unreachable_server_is_one_line_before_training(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tree = tiny_tree(tmp_path / "runs", "ml", log={"mlflow": True, "mlflow_uri": "http://127.0.0.1:9"})
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree))], capsys)
    assert code == 2 and len(lines) == 1 and "log.mlflow: cannot start a mlflow run" in lines[0], lines
    assert not list((tmp_path / "runs" / "ml").glob("checkpoints/*"))


def test_a_run_name_that_is_not_utf8_is_one_line(tmp_path: Path, capsys) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")  # what a Latin-1 shell passes in a UTF-8 locale
    tree = tiny_tree(tmp_path / "runs", "x")
    code, lines = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", tree)), f"run.name={name}"], capsys)
    assert code == 2 and len(lines) == 1 and "run.name" in lines[0] and "must be UTF-8 text" in lines[0], lines


# ------------------------------------------------------------------------------ 6. unclear or silently accepted
@pytest.mark.parametrize("value", ["no", "false"])
def test_precision_no_as_yaml_reads_it_is_accepted(value: str) -> None:
    from vaekit.config.load import load_config, resolve_dict

    assert load_config(resolve_dict(None, [f"train.precision={value}"])).train.precision == "no"


@pytest.mark.parametrize("text", ["run:\n  seed: 1\n  seed: 2\n", "optim: {lr: 0.1, lr: 0.2}\n"])
def test_duplicate_yaml_keys_are_refused(tmp_path: Path, capsys, text: str) -> None:
    (tmp_path / "cfg.yaml").write_text(text)
    code, lines = run_cli(["validate", str(tmp_path / "cfg.yaml"), "--no-data"], capsys)
    assert code == 2 and len(lines) == 1 and "duplicate key" in lines[0], lines


def test_invalid_stage_defaults_without_stages_are_refused(tmp_path: Path, capsys) -> None:
    tree = tiny_tree(tmp_path / "runs", "r", stage_defaults={"steps": -3})
    code, lines = run_cli(["validate", str(write_config(tmp_path / "cfg.yaml", tree)), "--no-data"], capsys)
    assert code == 2 and len(lines) == 1 and "stage_defaults.steps" in lines[0], lines


@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_missing_or_foreign_init_from_is_refused_before_anything_is_printed(tmp_path: Path, capsys, command: str) -> None:
    stages = [{"name": "a", "steps": 2}, {"name": "b", "steps": 2, "init_from": "/etc/passwd"}]
    tree = tiny_tree(tmp_path / "runs", "r", stages=stages)
    capsys.readouterr()
    code = cli.main([command, str(write_config(tmp_path / "cfg.yaml", tree))])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", out
    assert err.startswith("vaekit: config error: stages.1.init_from (b): '/etc/passwd' is not a readable safetensors"), err
    assert err.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_resuming_a_finished_run_keeps_the_stage_on_its_test_record(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "runs", "r", data={"split": [0.8, 0.1, 0.1]},
                     stages=[{"name": "a", "steps": 2}, {"name": "b", "steps": 2}])
    run = vaekit.train(tree).run_dir
    vaekit.train(resume=run)
    tests = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert tests and all(r["stage"] == "b" and r["stage_index"] == 1 for r in tests), tests


def test_init_from_weights_that_do_not_fit_are_refused_before_anything_is_printed(finished, tmp_path: Path, capsys) -> None:
    source = finished(tmp_path / "source")
    stages = [{"name": "ft", "steps": 2, "init_from": str(source)}]
    tree = tiny_tree(tmp_path / "runs", "r", stages=stages, model={"latent_dim": 5})
    capsys.readouterr()
    code = cli.main(["train", str(write_config(tmp_path / "cfg.yaml", tree))])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("vaekit: config error: stages.0.init_from (ft): ") and "mismatched (file vs model)" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["export", "compare"])
def test_a_full_disk_under_an_output_folder_is_one_line(finished, tiny_disk, tmp_path: Path, capsys, command: str) -> None:
    run = finished(tmp_path / "run")
    out = tiny_disk("8k") / "out"
    argv = {"export": ["export", str(run), "--out", str(out)],
            "compare": ["compare", str(run), str(run), "--out", str(out), "--batches", "1", "--metrics", "mse"]}[command]
    code, lines = run_cli(argv, capsys)
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], lines
    assert lines[0].startswith("vaekit: run error: cannot write"), lines
