"""CUDA paths: precision no/bf16/fp16, torch.compile, activation checkpointing, VAE-GAN; samples/s and peak memory.

Run on a GPU machine:  python bench/gpu_paths.py [--steps 60]
Each configuration trains through ``vaekit.train`` (the real loop, Accelerate included) and prints one line:
samples/s over the training steps after the first log window (compile warm-up excluded), peak GPU memory,
and whether every logged loss stayed finite.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

import vaekit


def run(name: str, steps: int, *parts: dict) -> None:
    """Train one configuration; ``parts`` are section dicts merged in order."""
    from vaekit.config.load import deep_merge

    sections: dict = {}
    for part in parts:
        sections = deep_merge(sections, part)
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        tree = {
            "run": {"dir": tmp, "name": name},
            "train": {"max_steps": steps, "val_batches": 2, "ckpt_every": None},
            "log": {"progress": False, "samples": False, "plots": False, "every": 10, "tensorboard": False},
        }
        tree = deep_merge(tree, sections)
        t0 = time.time()
        result = vaekit.train(tree)
        wall = time.time() - t0
        recs = [json.loads(x) for x in open(result.run_dir / "metrics.jsonl")]
    train = [r for r in recs if r["split"] == "train"]
    rate = sorted(r["samples_per_sec"] for r in train[1:])[len(train[1:]) // 2] if len(train) > 1 else float("nan")
    finite = all(math.isfinite(r["loss"]) for r in recs)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"{name:34s} median {rate:9.0f} samples/s  peak {peak:6.2f} GiB  wall {wall:6.1f} s  "
        f"final loss {train[-1]['loss']:.4g}  finite {finite}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--only", choices=["vanilla"], help="run only the vanilla-VAE configurations")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    shapes = {"data": {"source": "shapes", "num_samples": 20000}}
    only = args.only
    for precision in ("no", "bf16", "fp16") if not only else ():
        run(f"shapes conv precision={precision}", args.steps, shapes, {"train": {"batch_size": 256, "precision": precision}})
    if not only:
        run("shapes conv bf16 compile", args.steps, shapes, {"train": {"batch_size": 256, "precision": "bf16", "compile": True}})
    # the classic vanilla VAE (~63M parameters) at 256×256 on procedural shapes resized to 256
    big = {
        "data": {"source": "shapes", "num_samples": 2000, "image_size": 256},
        "model": {"hidden_dims": [64, 128, 256, 512, 1024], "latent_dim": 256},
        "loss": {"recon": "mse"},
    }
    for precision, ckpt in (("no", False), ("bf16", False), ("bf16", True)):
        run(
            f"vanilla-VAE 256² b32 {precision} gc={ckpt}",
            args.steps,
            big,
            {"model": {"grad_checkpointing": ckpt}, "train": {"batch_size": 32, "precision": precision}},
        )
    gan = {
        "data": {"source": "shapes", "num_samples": 20000},
        "model": {"latent": "spatial", "latent_dim": 4, "hidden_dims": [64, 128], "norm": "group"},
        "loss": {"recon": "l1", "beta": 1e-3, "adversarial": {"weight": 0.5, "start_step": 10, "r1_weight": 1.0, "r1_every": 4}},
    }
    for precision in ("bf16", "fp16") if not only else ():
        run(f"VAE-GAN (R1, adaptive) {precision}", args.steps, gan, {"train": {"batch_size": 128, "precision": precision}})


if __name__ == "__main__":
    main()
