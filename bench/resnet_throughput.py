"""``model.arch=resnet``: training throughput of vaekit's trainer vs a hand-written loop over the same module, vs
diffusers' ``AutoencoderKL`` of the same config in the same hand-written loop, and peak memory with and without
gradient checkpointing for the SD config at 256².

Throughput (one process, trials interleaved: hand, vaekit, diffusers, hand, vaekit, diffusers, ...):

* the module: ``ResNetVAE((3, S, S), 4, WIDTHS, layers_per_block=L)`` (Gaussian latent, mid attention), built after
  ``vaekit.utils.set_seed(0)`` so both of its sides start from the same weights; the data: one in-memory float32
  tensor of N random images in [0, 1] (the content does not change the arithmetic), batch B, Adam lr 1e-4;
  loss: MSE summed over pixels / batch + KL / batch (vaekit: ``loss.recon=mse``, β=1: the same loss).
* hand-written: ``perf_counter`` around each epoch of a plain loop (seeded randperm, index, forward, loss,
  backward, step, zero_grad). vaekit: ``vaekit.train(config, model=<the same module>, train_data=x, hooks=[...])``,
  timed from its "epoch_start" to its "epoch_end" hook (validation/checkpoints between epochs are outside, as the
  hand loop does not do them). diffusers: ``AutoencoderKL`` with ``block_out_channels=WIDTHS``,
  ``layers_per_block=L``, ``latent_channels=4``, in the same hand-written loop (``encode().latent_dist.sample()``,
  ``decode().sample``).
* reported: the median over trials of samples/s per side (each trial's epochs after its first: the first pays the
  warm-up of allocator and caches, which vaekit's setup forward partly pays before its timed window), vaekit/hand
  and ours/diffusers (hand loops).

Memory (each in a fresh subprocess, so one peak does not hide another): the SD config (``[128, 256, 512, 512]``,
2 layers per block, 4 latent channels) at 256², batch 1, a few training steps in a hand loop; peak RSS of the
process (``ru_maxrss``) after the steps, and the RSS after building the model (weights + Adam state included in the
peak, not in the baseline). With ``--cuda`` on a GPU machine, also bf16 samples/s and CUDA peak memory.

    python bench/resnet_throughput.py                     # ~10 minutes on 2 loaded CPU cores
    python bench/resnet_throughput.py --threads 1 --repeats 3 --epochs 3 --size 32 --batch 16 --memory-steps 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _setup(threads: int) -> None:
    import torch

    from vaekit.utils import tune_cpu_allocator

    torch.set_num_threads(threads)
    tune_cpu_allocator()


def _data(n: int, size: int):  # noqa: ANN202
    import torch

    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _ours(args: argparse.Namespace):  # noqa: ANN202
    from vaekit.models import ResNetVAE
    from vaekit.utils import set_seed

    set_seed(0)
    return ResNetVAE((3, args.size, args.size), 4, args.widths, layers_per_block=args.layers, recon_kind="mse")


def hand_epochs(model, x, args: argparse.Namespace, diffusers: bool = False) -> list[float]:  # noqa: ANN001
    """A plain loop; returns each epoch's seconds."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    b, steps = args.batch, len(x) // args.batch
    model.train()
    secs = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            xb = x[perm[i * b : (i + 1) * b]]
            if diffusers:
                post = model.encode(xb * 2 - 1).latent_dist
                mean, logvar = post.mean, post.logvar
                recon = (model.decode(post.sample()).sample + 1) / 2
            else:
                out = model(xb)
                mean, logvar, recon = out.mean, out.logvar, out.recon
            rec = (recon - xb).pow(2).sum() / b
            kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / b
            (rec + kl).backward()
            opt.step()
            opt.zero_grad()
        secs.append(time.perf_counter() - t0)
    return secs


def vaekit_epochs(model, x, args: argparse.Namespace) -> list[float]:  # noqa: ANN001
    import vaekit

    marks: dict[str, list[float]] = {"start": [], "end": []}

    def hook(event: str, state) -> None:  # noqa: ANN001
        if event == "epoch_start":
            marks["start"].append(time.perf_counter())
        elif event in ("epoch_end", "stage_end"):
            marks["end"].append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "run": {"dir": tmp, "name": "bench", "overwrite": True},
            "loss": {"recon": "mse"},
            "optim": {"name": "adam", "lr": 1e-4},
            "train": {"epochs": args.epochs, "batch_size": args.batch, "val_batches": 1},
            "log": {"progress": False, "samples": False, "plots": False, "tensorboard": False},
        }
        vaekit.train(config, model=model, train_data=x, val_data=x[: args.batch], hooks=[hook])
    return [e - s for s, e in zip(marks["start"], marks["end"], strict=True)]


def throughput(args: argparse.Namespace) -> None:
    import diffusers
    import torch

    from vaekit.models import count_parameters

    _setup(args.threads)
    x = _data(args.n, args.size)
    n_widths = len(args.widths)
    rates: dict[str, list[float]] = {"hand": [], "vaekit": [], "diffusers": []}
    steps = len(x) // args.batch
    for trial in range(args.repeats):
        for side in ("hand", "vaekit", "diffusers"):
            if side == "diffusers":
                torch.manual_seed(0)
                model = diffusers.AutoencoderKL(
                    in_channels=3, out_channels=3, block_out_channels=args.widths, layers_per_block=args.layers,
                    latent_channels=4, down_block_types=["DownEncoderBlock2D"] * n_widths,
                    up_block_types=["UpDecoderBlock2D"] * n_widths, norm_num_groups=min(32, min(args.widths)))
                secs = hand_epochs(model, x, args, diffusers=True)
            else:
                model = _ours(args)
                secs = hand_epochs(model, x, args) if side == "hand" else vaekit_epochs(model, x, args)
            timed = secs[1:] if len(secs) > 1 else secs  # the first epoch pays the allocator's and caches' warm-up
            rate = len(timed) * steps * args.batch / sum(timed)
            rates[side].append(rate)
            print(f"trial {trial} {side:9s} {count_parameters(model):>10,} params  {rate:8.2f} samples/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median samples/s: hand {med['hand']:.2f}  vaekit {med['vaekit']:.2f}  diffusers {med['diffusers']:.2f}")
    print(f"vaekit / hand-written (same module): {med['vaekit'] / med['hand']:.3f}")
    print(f"vaekit ResNetVAE / diffusers AutoencoderKL (both hand loops): {med['hand'] / med['diffusers']:.3f}")


def memory_child(args: argparse.Namespace) -> None:
    """One process: build the SD config, train ``--memory-steps`` steps at 256², print RSS figures."""
    import torch

    from vaekit.models import ResNetVAE

    _setup(args.threads)
    model = ResNetVAE((3, 256, 256), 4, [128, 256, 512, 512], layers_per_block=2, recon_kind="mse",
                      grad_checkpointing=args.checkpointing)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = torch.rand(args.memory_batch, 3, 256, 256)
    t0 = time.perf_counter()
    for _ in range(args.memory_steps):
        out = model(x)
        ((out.recon - x).pow(2).sum() + 0.5 * (out.mean.pow(2) + out.logvar.exp() - 1 - out.logvar).sum()).backward()
        opt.step()
        opt.zero_grad()
    secs = (time.perf_counter() - t0) / args.memory_steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"SD config 256² batch {args.memory_batch} grad_checkpointing={args.checkpointing}: peak RSS {peak:.0f} MiB "
          f"(after build {base:.0f} MiB; training adds {peak - base:.0f} MiB), {secs:.1f} s/step", flush=True)


def cuda(args: argparse.Namespace) -> None:
    """GPU only: bf16 samples/s and CUDA peak memory for the SD config at 256², vaekit vs hand, and causal 3D."""
    import torch

    from vaekit.models import ResNetVAE

    def run(model, x, steps: int = 20) -> tuple[float, float]:  # noqa: ANN001
        model = model.cuda()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        torch.cuda.reset_peak_memory_stats()
        for i in range(steps + 3):
            if i == 3:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast("cuda", torch.bfloat16):
                out = model(x)
                loss = (out.recon.float() - x).pow(2).sum() / len(x)
            loss.backward()
            opt.step()
            opt.zero_grad()
        torch.cuda.synchronize()
        return steps * len(x) / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30

    for ckpt in (False, True):
        model = ResNetVAE((3, 256, 256), 4, [128, 256, 512, 512], 2, recon_kind="mse", grad_checkpointing=ckpt)
        rate, peak = run(model, torch.rand(8, 3, 256, 256, device="cuda"))
        print(f"cuda SD 256² b8 bf16 gc={ckpt}: {rate:.1f} samples/s, peak {peak:.2f} GiB", flush=True)
    model = ResNetVAE((3, 17, 256, 256), 4, [128, 256, 512, 512], 2, causal=True, temporal_downsample=2,
                      recon_kind="mse", grad_checkpointing=True)
    rate, peak = run(model, torch.rand(1, 3, 17, 256, 256, device="cuda"), steps=5)
    print(f"cuda causal 3D 17x256² b1 bf16 gc=True: {rate:.2f} clips/s, peak {peak:.2f} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="per trial; the first is not timed")
    parser.add_argument("--n", type=int, default=256, help="training images (in memory)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-batch", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--cuda", action="store_true", help="also the GPU figures (needs CUDA)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)
    print(f"threads {args.threads}, load average {[round(v, 2) for v in os.getloadavg()]}", flush=True)
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_memory:
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--memory-child", "--threads", str(args.threads), "--memory-steps",
                   str(args.memory_steps), "--memory-batch", str(args.memory_batch)] + (["--checkpointing"] if ckpt else [])
            subprocess.run(cmd, check=True)
    if args.cuda:
        cuda(args)
    return None


if __name__ == "__main__":
    main()
