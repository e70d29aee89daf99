"""Trainer overhead: vaekit.train vs a hand-written PyTorch loop, same MLP VAE, same in-memory MNIST.

Both sides train ``MLPVAE((1, 28, 28), 20, [400], recon_kind="bce", norm="none", activation="relu")`` (784-400-20),
built right after ``vaekit.utils.set_seed(seed)`` so the initial weights are identical (checked), on the MNIST
training set read by vaekit's IDX reader into one float32 tensor, batch 128 (468 full batches per epoch, the last
partial batch dropped on both sides), Adam lr 1e-3, the same ``torch.set_num_threads`` / ``OMP_NUM_THREADS`` and
the same allocator setting (``vaekit.utils.tune_cpu_allocator``, which the trainer applies on the CPU).

What is timed, identically on both sides: each epoch's training, from the start of the epoch to the end of its
last optimizer step, in samples/s (468 x 128 samples / seconds).

* hand-written: ``perf_counter`` around each epoch of a plain loop (randperm with a seeded generator, index the
  tensor, forward, BCE-with-logits summed over pixels / batch + KL, backward, step, zero_grad; nothing else).
* vaekit: ``vaekit.train(config, model=<the same MLPVAE object>, train_data=x_train, val_data=x_test,
  hooks=[timer])`` with its default logging (metrics.jsonl + TensorBoard every 50 steps, tqdm progress bar) and its
  default per-epoch validation / sample grids / checkpoint. The window is timed through vaekit's public hook:
  "epoch_start" (fired once the training loader selected the epoch) to "epoch_end" / "stage_end" (fired right
  after the epoch's last optimizer step). Everything the trainer does per step (batch gather, noise, objective
  with its extra logged terms, meters, non-finite watch, logging, progress bar) is inside the window; the
  epoch-end validation, sample grids and checkpoint - work the hand-written loop does not do at all - are
  outside it and reported separately.

A cross-check for vaekit comes from its own ``metrics.jsonl``: per epoch, (steps between the first and last train
records) x 128 / (their time difference).

Each trial runs in a fresh subprocess (no state shared between the two sides); trials are interleaved
(hand, vaekit, hand, vaekit, ...). The final line gives the median over trials of each side's samples/s (a trial's
figure = all its epochs' samples / all its epochs' training seconds) and their ratio vaekit / hand-written.

    python bench/trainer_overhead.py                       # 3 epochs, 2 repeats, threads = os.cpu_count()
    python bench/trainer_overhead.py --epochs 2 --repeats 3 --threads 2 --mnist /path/to/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = REPO / ".." / "shared" / "data" / "mnist"
TARGET = 0.99
BATCH = 128
LR = 1e-3
LATENT = 20
HIDDEN = [400]


# ------------------------------------------------------------------------------------------------ helpers
def _load_avg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _param_checksum(model) -> float:  # noqa: ANN001
    import torch

    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def _eval_elbo(model, x_val) -> float:  # noqa: ANN001
    """Mean negative ELBO (nats per sample) on x_val with a fixed noise seed: a sanity check that both sides
    trained equally well. Outside every timed window."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(12345)
        for i in range(0, len(x_val), 1000):
            x = x_val[i : i + 1000]
            out = model(x)
            rec = F.binary_cross_entropy_with_logits(out.recon, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + out.logvar - out.mean.pow(2) - out.logvar.exp())
            total += float(rec + kl)
    model.train()
    return total / len(x_val)


def _setup_threads(threads: int) -> None:
    import torch

    from vaekit.utils import tune_cpu_allocator

    torch.set_num_threads(threads)
    # vaekit's trainer keeps freed heap between steps on the CPU; give the hand-written loop the same allocator
    # setting so the ratio measures the trainer, not malloc.
    tune_cpu_allocator()


# ------------------------------------------------------------------------------------------- hand-written
def worker_hand(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from vaekit.data.mnist import load_mnist
    from vaekit.models import MLPVAE
    from vaekit.utils import set_seed

    _setup_threads(args.threads)
    x_train, _ = load_mnist(args.mnist, "train")  # (60000, 1, 28, 28) float32 in [0, 1]
    x_train = x_train.contiguous()
    x_val, _ = load_mnist(args.mnist, "val")

    set_seed(args.seed)
    model = MLPVAE((1, 28, 28), LATENT, HIDDEN, recon_kind="bce", norm="none", activation="relu")
    init_sum = _param_checksum(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(args.seed)
    n, b = len(x_train), args.batch_size
    steps = n // b  # drop the last partial batch, as vaekit does by default (train.drop_last=true)
    model.train()

    epoch_secs, epoch_cpu = [], []
    for _ in range(args.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(n, generator=gen)
        for i in range(steps):
            x = x_train[perm[i * b : (i + 1) * b]]
            out = model(x)
            recon = F.binary_cross_entropy_with_logits(out.recon, x, reduction="sum") / b
            kl = -0.5 * torch.sum(1 + out.logvar - out.mean.pow(2) - out.logvar.exp()) / b
            loss = recon + kl
            loss.backward()
            opt.step()
            opt.zero_grad()
        epoch_secs.append(time.perf_counter() - t0)
        epoch_cpu.append(time.process_time() - c0)

    return {
        "side": "hand",
        "epoch_seconds": epoch_secs,
        "epoch_cpu_seconds": epoch_cpu,
        "steps_per_epoch": steps,
        "init_checksum": init_sum,
        "val_neg_elbo": _eval_elbo(model, x_val),
        "threads_end": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------- vaekit
def worker_vaekit(args: argparse.Namespace) -> dict:
    import torch

    import vaekit
    from vaekit.data.mnist import load_mnist
    from vaekit.models import MLPVAE
    from vaekit.utils import set_seed

    _setup_threads(args.threads)
    marks: dict[str, list] = {"start": [], "end": [], "cpu_start": [], "cpu_end": [], "steps": []}
    info: dict = {}

    # Timing through vaekit's public hook (``vaekit.train(hooks=[...])``): "epoch_start" fires right after the
    # training loader selects the epoch, "epoch_end" / "stage_end" right after the epoch's last optimizer step.
    def hook(event: str, state) -> None:  # noqa: ANN001
        if event == "epoch_start":
            marks["start"].append(time.perf_counter())
            marks["cpu_start"].append(time.process_time())
            marks["steps"].append(state.step)
        elif event in ("epoch_end", "stage_end"):
            marks["end"].append(time.perf_counter())
            marks["cpu_end"].append(time.process_time())
            marks["steps"][-1] = state.step - marks["steps"][-1]

    # the same model object as the hand-written side builds, and the same in-memory tensors
    x_train, _ = load_mnist(args.mnist, "train")
    x_val, _ = load_mnist(args.mnist, "val")
    set_seed(args.seed)
    model = MLPVAE((1, 28, 28), LATENT, HIDDEN, recon_kind="bce", norm="none", activation="relu")
    info["init_checksum"] = _param_checksum(model)
    info["n_train"] = len(x_train)

    config = {
        "run": {"dir": args.run_dir, "name": "vaekit", "seed": args.seed, "overwrite": True},
        "loss": {"recon": "bce"},
        "optim": {"name": "adam", "lr": LR},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size},
        # log: defaults kept on purpose (every 50 steps, jsonl + tensorboard + progress bar, samples, plots)
    }
    t_call = time.perf_counter()
    result = vaekit.train(config, model=model, train_data=x_train, val_data=x_val, hooks=[hook])
    t_done = time.perf_counter()

    starts, ends = marks["start"], marks["end"]
    if len(starts) != args.epochs or len(ends) != args.epochs:
        raise RuntimeError(f"expected {args.epochs} epoch windows, got starts={len(starts)} ends={len(ends)}")
    epoch_secs = [e - s for s, e in zip(starts, ends, strict=True)]

    # Cross-check from vaekit's own metrics.jsonl: per epoch, the span between its first and last train record.
    records = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line
    ]
    train_recs = [r for r in records if r.get("split") == "train" and "samples_per_sec" in r]
    jsonl_spans = []
    for ep in sorted({r["epoch"] for r in train_recs}):
        recs = [r for r in train_recs if r["epoch"] == ep]
        if len(recs) >= 2:
            jsonl_spans.append(
                {
                    "epoch": ep,
                    "steps": recs[-1]["step"] - recs[0]["step"],
                    "seconds": recs[-1]["time"] - recs[0]["time"],
                }
            )
    steps = info["n_train"] // args.batch_size  # train.drop_last=true (the default)
    if any(n != steps for n in marks["steps"]):
        raise RuntimeError(f"expected {steps} steps per epoch window, got {marks['steps']}")
    return {
        "side": "vaekit",
        "epoch_seconds": epoch_secs,
        "epoch_cpu_seconds": [e - s for s, e in zip(marks["cpu_start"], marks["cpu_end"], strict=True)],
        "steps_per_epoch": steps,
        "init_checksum": info.get("init_checksum"),
        "val_neg_elbo": _eval_elbo(result.model, x_val),
        "threads_end": torch.get_num_threads(),
        "setup_seconds": starts[0] - t_call,
        "epoch_end_seconds": [s - e for e, s in zip(ends, starts[1:], strict=False)],  # val + samples + ckpt
        "after_last_epoch_seconds": t_done - ends[-1],  # final val, checkpoint, export, plots
        "call_seconds": t_done - t_call,
        "jsonl_spans": jsonl_spans,
        "jsonl_samples_per_sec_field": [r["samples_per_sec"] for r in train_recs],
    }


# ------------------------------------------------------------------------------------------------- driver
def samples_per_sec(res: dict, batch: int, key: str = "epoch_seconds") -> float:
    """All the trial's epochs' samples over their summed training time (wall, or process CPU time)."""
    return len(res[key]) * res["steps_per_epoch"] * batch / sum(res[key])


def run_trial(side: str, args: argparse.Namespace, run_dir: str) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", side,
        "--epochs", str(args.epochs), "--threads", str(args.threads), "--mnist", str(args.mnist),
        "--seed", str(args.seed), "--batch-size", str(args.batch_size), "--run-dir", run_dir,
    ]  # fmt: skip
    load_before = _load_avg()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    load_after = _load_avg()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"{side} trial failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load_before"], res["load_after"] = load_before, load_after
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="trials per side, interleaved hand/vaekit")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="directory with the MNIST IDX .gz files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--json", type=Path, default=None, help="also write every trial's raw results here")
    p.add_argument("--worker", choices=["hand", "vaekit"], help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.mnist = args.mnist.resolve()

    if args.worker == "hand":
        print(json.dumps(worker_hand(args)))
        return
    if args.worker == "vaekit":
        print(json.dumps(worker_vaekit(args)))
        return

    if (
        not (args.mnist / "train-images-idx3-ubyte.gz").is_file()
        and not (args.mnist / "train-images-idx3-ubyte").is_file()
    ):
        raise SystemExit(f"--mnist {args.mnist}: no MNIST IDX files there")
    print(
        f"trainer overhead benchmark: MLP VAE 784-400-{LATENT} BCE, MNIST 60000 in memory, batch {args.batch_size}, "
        f"Adam lr {LR}, {args.epochs} epochs x {args.repeats} repeats, {args.threads} threads "
        f"(cpu_count {os.cpu_count()}), load avg {_load_avg()}",
        flush=True,
    )
    results: dict[str, list[dict]] = {"hand": [], "vaekit": []}
    with tempfile.TemporaryDirectory(prefix="vaekit-bench-") as tmp:
        for r in range(args.repeats):
            for side in ("hand", "vaekit"):
                res = run_trial(side, args, str(Path(tmp) / f"{side}-{r}"))
                results[side].append(res)
                sps = samples_per_sec(res, args.batch_size)
                per_epoch = ", ".join(
                    f"{res['steps_per_epoch'] * args.batch_size / s:.0f}" for s in res["epoch_seconds"]
                )
                cpu = samples_per_sec(res, args.batch_size, "epoch_cpu_seconds")
                line = (
                    f"  trial {r + 1} {side:>6}: {sps:8.0f} samples/s  (per epoch: {per_epoch}; "
                    f"{cpu:.0f} samples per CPU-second; -ELBO(val) {res['val_neg_elbo']:.2f}; "
                    f"load {res['load_before']} -> {res['load_after']})"
                )
                if side == "vaekit":
                    spans = res["jsonl_spans"]
                    j = (
                        sum(s["steps"] for s in spans)
                        * args.batch_size
                        / max(sum(s["seconds"] for s in spans), 1e-9)
                    )
                    line += (
                        f"\n                  metrics.jsonl cross-check {j:.0f} samples/s; setup {res['setup_seconds']:.2f}s, "
                        f"epoch-end val+samples+ckpt {sum(res['epoch_end_seconds']):.2f}s, "
                        f"after last epoch {res['after_last_epoch_seconds']:.2f}s"
                    )
                print(line, flush=True)

    hand = [samples_per_sec(r, args.batch_size) for r in results["hand"]]
    vk = [samples_per_sec(r, args.batch_size) for r in results["vaekit"]]
    init_same = len({round(r["init_checksum"], 6) for rs in results.values() for r in rs}) == 1
    threads_same = {r["threads_end"] for rs in results.values() for r in rs} == {args.threads}
    print(
        f"  same initial weights on both sides: {init_same}; thread count kept at {args.threads}: {threads_same}"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1)
        )
    h, v = statistics.median(hand), statistics.median(vk)
    ratio = v / h
    hc = statistics.median(samples_per_sec(r, args.batch_size, "epoch_cpu_seconds") for r in results["hand"])
    vc = statistics.median(
        samples_per_sec(r, args.batch_size, "epoch_cpu_seconds") for r in results["vaekit"]
    )

    def best_epoch(side: str) -> float:
        return max(
            r["steps_per_epoch"] * args.batch_size / t for r in results[side] for t in r["epoch_seconds"]
        )

    hb, vb = best_epoch("hand"), best_epoch("vaekit")
    print(
        f"  wall samples/s per trial: hand {[round(x) for x in hand]}, vaekit {[round(x) for x in vk]}\n"
        f"  less load-sensitive estimates: best single epoch hand {hb:.0f}, vaekit {vb:.0f}, ratio {vb / hb:.3f}; "
        f"per CPU-second (process CPU time) hand {hc:.0f}, vaekit {vc:.0f}, ratio {vc / hc:.3f}"
    )
    verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
    print(
        f"trainer overhead: vaekit {v:.0f} samples/s, hand-written {h:.0f} samples/s, "
        f"ratio {ratio:.3f} (target >= {TARGET}) {verdict}"
    )


if __name__ == "__main__":
    main()
