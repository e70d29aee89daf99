"""Time to quality on MNIST: vaekit vs the plain PyTorch reference script.

The reference is the classic PyTorch VAE example (``pytorch/examples/vae/main.py``): an MLP 784-400-20 VAE,
Bernoulli likelihood (BCE summed over pixels) + KL, Adam lr 1e-3, batch 128, torchvision's ``datasets.MNIST``
through a ``DataLoader`` (``ToTensor``, shuffled, no workers on CPU), a test pass after every epoch. vaekit trains
the same architecture (``MLPVAE((1, 28, 28), 20, [400])``), the same loss, optimizer, batch and epochs, from
``vaekit.train(model=..., train_data=x_train, val_data=x_test)`` with its default logging, validation, sample
grids, checkpoints and export: the wall time of the whole call counts.

Both sides start from the same seed; each trial runs in a fresh subprocess; trials are interleaved. Quality is
one number computed the same way for both models after training: the mean negative ELBO (nats per image) on the
10,000 test images with a fixed noise seed. The figure of merit: vaekit's test loss relative to the reference's
(target within 1%) and vaekit's wall time relative to the reference's (target at most 0.5).

    python bench/time_to_quality.py                          # 10 epochs, 1 trial per side, threads = cores
    python bench/time_to_quality.py --epochs 5 --repeats 2 --threads 2 --mnist ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = REPO / ".." / "shared" / "data" / "mnist"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def test_loss(decode_logits, encode, x_test) -> float:  # noqa: ANN001
    """Mean negative ELBO on the test set, nats per image, z drawn with a fixed seed (same for both sides)."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for i in range(0, len(x_test), 1000):
            x = x_test[i : i + 1000].reshape(-1, 784)
            mu, logvar = encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            bce = F.binary_cross_entropy_with_logits(decode_logits(z), x, reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            total += float(bce + kld)
    return total / len(x_test)


def worker_reference(args: argparse.Namespace) -> dict:
    """The classic example, as written there (sigmoid output + F.binary_cross_entropy), on torchvision's MNIST."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision import datasets, transforms

    torch.manual_seed(args.seed)

    class VAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def encode(self, x):  # noqa: ANN001, ANN202
            h1 = F.relu(self.fc1(x))
            return self.fc21(h1), self.fc22(h1)

        def decode_logits(self, z):  # noqa: ANN001, ANN202
            return self.fc4(F.relu(self.fc3(z)))

        def forward(self, x):  # noqa: ANN001, ANN202
            mu, logvar = self.encode(x.view(-1, 784))
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.decode_logits(z)), mu, logvar

    t0 = time.perf_counter()
    tf = transforms.ToTensor()
    train_loader = torch.utils.data.DataLoader(datasets.MNIST(args.root, train=True, transform=tf), 128, shuffle=True)
    test_loader = torch.utils.data.DataLoader(datasets.MNIST(args.root, train=False, transform=tf), 128)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn(recon, x, mu, logvar):  # noqa: ANN001, ANN202
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    for _ in range(args.epochs):
        model.train()
        for data, _ in train_loader:
            opt.zero_grad()
            recon, mu, logvar = model(data)
            loss_fn(recon, data, mu, logvar).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            test = 0.0
            for data, _ in test_loader:
                recon, mu, logvar = model(data)
                test += float(loss_fn(recon, data, mu, logvar))
    wall = time.perf_counter() - t0
    ds = datasets.MNIST(args.root, train=False)
    x_test = ds.data.float().div(255).unsqueeze(1)
    model.eval()
    return {"side": "reference", "wall": wall, "test_loss": test_loss(model.decode_logits, model.encode, x_test)}


def worker_vaekit(args: argparse.Namespace) -> dict:
    import torch

    import vaekit
    from vaekit.data.mnist import load_mnist
    from vaekit.models import MLPVAE

    t0 = time.perf_counter()
    x_train, _ = load_mnist(args.mnist, "train")
    x_test, _ = load_mnist(args.mnist, "val")  # t10k
    torch.manual_seed(args.seed)
    model = MLPVAE((1, 28, 28), 20, [400], recon_kind="bce", norm="none", activation="relu")
    config = {
        "run": {"dir": args.run_dir, "name": "ttq", "seed": args.seed, "overwrite": True},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": args.epochs, "batch_size": 128, "drop_last": False},
        "log": {"progress": False},
    }
    result = vaekit.train(config, model=model, train_data=x_train, val_data=x_test)
    wall = time.perf_counter() - t0
    m = result.model.eval()
    loss = test_loss(lambda z: m.decode(z)[0].flatten(1), lambda x: m.encode(x.view(-1, 1, 28, 28)), x_test)
    return {"side": "vaekit", "wall": wall, "test_loss": loss, "val_loss": result.curves["val/loss"][-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--worker", choices=["reference", "vaekit"], help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.mnist = args.mnist.resolve()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps((worker_reference if args.worker == "reference" else worker_vaekit)(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"  # torchvision's layout, uncompressed: it never downloads
        raw.mkdir(parents=True)
        for name in FILES:
            src = next(p for p in (args.mnist / f"{name}.gz", args.mnist / name) if p.exists())
            with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as fi, open(raw / name, "wb") as fo:
                shutil.copyfileobj(fi, fo)
        results: dict[str, list[dict]] = {"reference": [], "vaekit": []}
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        for _ in range(args.repeats):
            for side in ("reference", "vaekit"):
                cmd = [sys.executable, __file__, "--worker", side, "--epochs", str(args.epochs), "--threads",
                       str(args.threads), "--mnist", str(args.mnist), "--seed", str(args.seed), "--root", tmp,
                       "--run-dir", str(Path(tmp) / "runs")]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.stderr.write(out.stderr[-4000:])
                    raise SystemExit(f"{side} failed")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[side].append(res)
                print(f"  {side}: wall {res['wall']:.1f} s, test -ELBO {res['test_loss']:.2f} nats", flush=True)
    ref_wall = statistics.median(r["wall"] for r in results["reference"])
    vk_wall = statistics.median(r["wall"] for r in results["vaekit"])
    ref_loss = statistics.median(r["test_loss"] for r in results["reference"])
    vk_loss = statistics.median(r["test_loss"] for r in results["vaekit"])
    ok = vk_loss <= ref_loss * 1.01 and vk_wall <= 0.5 * ref_wall
    print(
        f"time to quality ({args.epochs} epochs, {args.threads} threads): reference {ref_wall:.1f} s -> "
        f"{ref_loss:.2f} nats; vaekit {vk_wall:.1f} s -> {vk_loss:.2f} nats; loss ratio {vk_loss / ref_loss:.4f} "
        f"(target <= 1.01), time ratio {vk_wall / ref_wall:.3f} (target <= 0.5) {'OK' if ok else 'BELOW TARGET'}"
    )


if __name__ == "__main__":
    main()
