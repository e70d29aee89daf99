"""Random-SIGKILL soak: kill ``python -m vaekit train`` at random moments, resume each time, and check that the
run ends exactly where an uninterrupted run ends.

The run checkpoints after every step (``train.ckpt_every=1``) and keeps two (``train.keep_last=2``), so most of
its time is spent writing, swapping (epoch ends re-save the same step) and pruning checkpoints: that is where
most kills land. Every fourth kill comes at a random moment of start-up (before or while the run directory is
locked and the checkpoint read); the others a random 0-300 ms after the process wrote a new checkpoint.

After each kill, before resuming, the newest complete checkpoint on disk (``step_X``, or ``step_X.old`` when a
same-step replacement was cut between its renames) is compared with the uninterrupted run's checkpoint of that
step: weights, optimizer state and RNG state tensors bitwise, ``state.json`` minus its wall-clock field. A kill
whose checkpoint matches, and whose next process resumed at that step (or started over when there was no
checkpoint yet), is an exact resume. At the end the exported weights and the whole ``metrics.jsonl`` (minus
wall-clock fields) must equal the uninterrupted run's.

    python bench/soak_sigkill.py --kills 20             # prints "N kills, M exact resumes"; exit 1 on a mismatch
    python bench/soak_sigkill.py --kills 50 --seed 3 --keep   # keep the work directory

Every process runs with ``OMP_NUM_THREADS=1`` and this checkout's ``src`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def config(root: Path, name: str, steps: int, keep_last: int) -> dict[str, Any]:
    """The tests' tiny conv VAE on 32×32 shapes (360 train samples, batch 32: 11 steps per epoch)."""
    return {
        "run": {"dir": str(root), "name": name, "seed": 0},
        "data": {"source": "shapes", "num_samples": 400, "image_size": 32},
        "model": {"arch": "conv", "hidden_dims": [8, 16], "latent_dim": 4, "norm": "group"},
        "train": {"batch_size": 32, "max_steps": steps, "val_batches": 2, "ckpt_every": 1, "keep_last": keep_last},
        "log": {"progress": False, "samples": False, "every": 1, "plots": False},
    }


def vaekit(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "vaekit", *args], stdout=subprocess.DEVNULL, stderr=fh, env=ENV)


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_").split(".")[0])


def newest_complete(run: Path) -> Path | None:
    """What a resume must pick: the highest step with a complete ``step_X`` (else ``step_X.old``)."""
    found = {}
    for path in sorted((run / "checkpoints").glob("step_*"), key=lambda p: p.name.endswith(".old")):
        if re.fullmatch(r"step_\d{8}(\.old)?", path.name) and (path / "state.json").is_file():
            found.setdefault(step_of(path), path)  # step_X before step_X.old
    return found[max(found)] if found else None


def newest_step(run: Path) -> int:
    ckpt = newest_complete(run)
    return step_of(ckpt) if ckpt is not None else -1


def same_tree(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same_checkpoint(ckpt: Path, ref: Path) -> tuple[str | None, bool]:
    """(None if ``ckpt`` holds exactly the reference checkpoint's state, else what differs; whether ``ckpt`` is
    the periodic copy of an epoch-end step).

    An epoch-end step is saved twice: by the periodic block, then after the epoch record and validation. The
    reference keeps only the second; a kill between the two leaves the first, whose weights and optimizer are the
    same but whose position (``batch_in_epoch`` = the epoch's last batch) and meters are those before the epoch
    end: for it, weights and optimizer state are compared bitwise and the position checked.
    """
    state = {k: v for k, v in json.loads((ckpt / "state.json").read_text()).items() if k != "elapsed"}
    ref_state = {k: v for k, v in json.loads((ref / "state.json").read_text()).items() if k != "elapsed"}
    periodic = state != ref_state and state["batch_in_epoch"] > 0 and ref_state["batch_in_epoch"] == 0 and (
        state["epoch"] + 1 == ref_state["epoch"])
    if not same_tree(load_file(str(ckpt / "model.safetensors")), load_file(str(ref / "model.safetensors"))):
        return "model.safetensors", periodic
    names = ("optim.pt",) if periodic else ("optim.pt", "rng_rank0.pt")
    for name in names:
        if not same_tree(torch.load(ckpt / name, weights_only=True), torch.load(ref / name, weights_only=True)):
            return name, periodic
    if not periodic and state != ref_state:
        return f"state.json {state} != {ref_state}", periodic
    return None, periodic


def records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("time", "samples_per_sec")} for x in lines if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=0, help="max_steps (default: 10 per kill)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    steps = args.steps or 10 * args.kills
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vaekit-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "runs"
    started = time.monotonic()
    failures: list[str] = []

    # the uninterrupted reference keeps every checkpoint, to compare each resume point with
    ref_cfg = work / "reference.yaml"
    ref_cfg.write_text(yaml.safe_dump(config(root, "reference", steps, keep_last=10**6)))
    reference = root / "reference"
    t0 = time.monotonic()
    if subprocess.run([sys.executable, "-m", "vaekit", "train", str(ref_cfg)], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, env=ENV).returncode != 0:
        print("the uninterrupted reference run failed", file=sys.stderr)
        return 1
    print(f"reference: {steps} steps in {time.monotonic() - t0:.1f} s", flush=True)

    cfg = work / "soak.yaml"
    cfg.write_text(yaml.safe_dump(config(root, "soak", steps, keep_last=2)))
    run = root / "soak"
    kills = exact = 0
    landed = {"startup": 0, "tmp": 0, "old": 0, "del": 0, "periodic": 0}
    pending: tuple[int, bool] | None = None  # (step the next process must resume at, its checkpoint matched)
    life = 0
    while True:
        life += 1
        log = work / f"life{life:03d}.err"
        args_ = ["train", "--resume", str(run)] if (run / "config.yaml").is_file() else ["train", str(cfg)]
        at_spawn = newest_step(run)
        proc = vaekit(*args_, log=log)
        finishing = kills >= args.kills
        if not finishing:
            if kills % 4 == 3:  # somewhere in start-up: imports, data, the lock, the checkpoint read
                deadline, mode = time.monotonic() + rng.uniform(0.5, 4.0), "startup"
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.005)
            else:  # training: shortly after a new checkpoint, so mostly inside the next write or prune
                mode = "train"
                while proc.poll() is None and newest_step(run) <= at_spawn:
                    time.sleep(0.005)
                delay = time.monotonic() + rng.uniform(0.0, 0.3)
                while time.monotonic() < delay and proc.poll() is None:
                    time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                names = [p.name for p in (run / "checkpoints").glob("step_*")] if (run / "checkpoints").is_dir() else []
                landed["startup"] += mode == "startup"
                for suffix in ("tmp", "old", "del"):
                    landed[suffix] += any(n.endswith("." + suffix) for n in names)
        if proc.poll() is None:
            proc.wait()
        text = log.read_text()
        if pending is not None:  # did this process resume where the last kill left the run?
            step, matched = pending
            said = re.search(r"resuming at step (\d+) in", text)
            if said is not None and int(said.group(1)) != step:
                failures.append(f"life {life}: resumed at step {said.group(1)}, the newest checkpoint was {step}")
                matched = False
            if step < 0 and said is not None:
                failures.append(f"life {life}: resumed at step {said.group(1)} without a checkpoint")
                matched = False
            exact += matched
            pending = None
        if proc.returncode not in (0, -signal.SIGKILL):
            failures.append(f"life {life}: exit {proc.returncode}: {text[-1500:]}")
            break
        if proc.returncode == 0:
            break
        ckpt = newest_complete(run)
        matched, note = True, ""
        if ckpt is not None:
            diff, periodic = same_checkpoint(ckpt, reference / "checkpoints" / f"step_{step_of(ckpt):08d}")
            landed["periodic"] += periodic
            note = " (the periodic copy of an epoch-end step)" if periodic else ""
            if diff is not None:
                failures.append(f"kill {kills}: {ckpt.name} differs from the reference in {diff}")
                matched, note = False, note + " MISMATCH"
        pending = (step_of(ckpt) if ckpt is not None else -1, matched)
        print(f"kill {kills:3d} ({mode:7s}): newest checkpoint {ckpt.name if ckpt else '-'}{note}", flush=True)

    if (run / "model.safetensors").is_file():
        if not same_tree(load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))):
            failures.append("final exported weights differ from the uninterrupted run's")
        if records(run) != records(reference):
            failures.append("metrics.jsonl differs from the uninterrupted run's")
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if "." in p.name]
        if leftovers:
            failures.append(f"leftovers after the final run: {leftovers}")
    else:
        failures.append("the run did not finish")
    if kills < args.kills:
        failures.append(f"the run finished after {kills} kills (raise --steps)")
    wall = time.monotonic() - started
    print(f"kills leaving a .tmp / .old / .del on disk: {landed['tmp']} / {landed['old']} / {landed['del']}; "
          f"in start-up: {landed['startup']}; leaving the periodic copy of an epoch-end step: {landed['periodic']}")
    for failure in failures:
        print(f"MISMATCH: {failure}")
    print(f"{kills} kills, {exact} exact resumes ({wall:.0f} s)")
    if args.keep or failures:
        print(f"work directory: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures or exact != kills else 0


if __name__ == "__main__":
    sys.exit(main())
