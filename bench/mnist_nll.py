"""Test NLL on dynamically binarized MNIST: vaekit's VAE, IWAE (k=5, k=50), VampPrior and two-layer model beside
pythae 0.1.2's implementation of the same models, at one fixed budget, and the published converged figures.

Budget: every model trains for the same number of Adam steps (lr 1e-3, batch 100) over the same array: ``--steps``
× 100 images, each a fresh Bernoulli draw of a training image (dynamic binarization materialised ahead: epoch e
draws every image again). The MLP is 784-200-200-50 (ReLU) for the one-layer models on both sides; the two-layer
model is the IWAE paper's second architecture (784-200-200-100 | 100-100-100-50). pythae has no two-layer model.

Test NLL: −log (1/k) Σ_i p(x, z_i)/q(z_i|x), z_i ~ q(z|x), on the first ``--test`` test images binarized once
(seed 0), with ``--k`` importance samples; the same estimator on both sides (pythae's own ``get_nll`` is not used).
pythae runs in a separate virtual environment (``--venv``, created with ``pip install pythae==0.1.2`` on first
use; system site packages visible, so torch is not downloaded again). If it cannot install or run, the table
says so.

    python bench/mnist_nll.py                            # defaults: 1000 steps, k=1000 on 1000 test images
    python bench/mnist_nll.py --steps 300 --k 200 --test 500 --models vae,iwae5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

PUBLISHED = {"vae": 86.76, "iwae5": 85.54, "iwae50": 84.78, "hvae2-iwae50": 82.90}
"""Burda et al. 2016, Table 1 (MNIST, after 3,280 passes): the figures quoted for comparison."""

MLP = {"arch": "mlp", "hidden_dims": [200, 200], "latent_dim": 50, "norm": "none", "activation": "relu"}
HVAE = {"arch": "hvae", "hidden_dims": [200, 200], "latent_dim": 100, "activation": "relu",
        "top": {"latent_dim": 50, "hidden_dims": [100, 100]}}
MODELS = {  # name → (vaekit config sections, pythae model, pythae k)
    "vae": ({"model": MLP}, "vae", 1),
    "iwae5": ({"model": MLP, "loss": {"variant": "iwae", "iw": {"k": 5}}}, "iwae", 5),
    "iwae50": ({"model": MLP, "loss": {"variant": "iwae", "iw": {"k": 50}}}, "iwae", 50),
    "vampprior": ({"model": {**MLP, "prior": {"kind": "vampprior", "pseudo_inputs": 500}}}, "vamp", 1),
    "hvae2-iwae5": ({"model": HVAE, "loss": {"variant": "iwae", "iw": {"k": 5}}}, None, 5),
}


def load_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from vaekit.data.mnist import read_idx

    train = read_idx(folder / "train-images-idx3-ubyte.gz", 3).reshape(-1, 784) / 255.0
    test = read_idx(folder / "t10k-images-idx3-ubyte.gz", 3).reshape(-1, 784) / 255.0
    return train.astype(np.float32), test.astype(np.float32)


def binarized(train: np.ndarray, test: np.ndarray, steps: int, n_test: int) -> dict[str, np.ndarray]:
    """``steps·100`` training draws (epoch after epoch, each a fresh Bernoulli sample, shuffled per epoch), 1000
    validation draws, and the first ``n_test`` test images binarized once."""
    rng = np.random.default_rng(0)
    need, parts = steps * 100, []
    while sum(len(p) for p in parts) < need:
        order = rng.permutation(len(train))
        parts.append((rng.random(train.shape, dtype=np.float32) < train[order]).astype(np.uint8))
    draws = np.concatenate(parts)[:need]
    val = (rng.random((1000, 784), dtype=np.float32) < train[:1000]).astype(np.uint8)
    test_b = (np.random.default_rng(0).random((n_test, 784), dtype=np.float32) < test[:n_test]).astype(np.uint8)
    return {"train": draws, "val": val, "test": test_b}


@torch.no_grad()
def vaekit_nll(model: torch.nn.Module, x: torch.Tensor, k: int, batch: int = 20, seed: int = 123) -> float:
    """The importance-sampled NLL through the model's own forward with ``(B, k, latent)`` noise (its
    ``info`` densities for the VampPrior and the two-layer model)."""
    from vaekit.objectives.iwae import latent_log_densities

    g = torch.Generator().manual_seed(seed)
    model.eval()
    latent = model.latent_shape_for((1, 28, 28))
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        b = xb.shape[0]
        out = model(xb, noise=torch.randn((b, k, *latent), generator=g))
        log_q, log_p = latent_log_densities(out, multi=True)
        log_px = -F.binary_cross_entropy_with_logits(out.recon.flatten(2), xb.view(b, 1, 784).expand(b, k, 784),
                                                     reduction="none").sum(-1)
        total += float(-(torch.logsumexp(log_px + log_p - log_q, 1) - math.log(k)).sum())
    return total / len(x)


def run_vaekit(name: str, data: dict[str, np.ndarray], k_eval: int, work: Path) -> dict[str, float]:
    import vaekit

    sections = MODELS[name][0]
    tree = {"run": {"dir": str(work), "name": name, "seed": 0}, "data": {"source": "tensor"},
            "loss": {"recon": "bce", **sections.get("loss", {})}, "model": sections["model"],
            "optim": {"lr": 1e-3}, "train": {"batch_size": 100, "epochs": 1, "val_batches": 5},
            "log": {"progress": False, "samples": False, "plots": False, "every": 100, "tensorboard": False}}
    x = torch.from_numpy(data["train"]).float().view(-1, 1, 28, 28)
    val = torch.from_numpy(data["val"]).float().view(-1, 1, 28, 28)
    start = time.perf_counter()
    result = vaekit.train(tree, x=x, val_x=val)
    seconds = time.perf_counter() - start
    model = vaekit.load_model(result.run_dir)
    start = time.perf_counter()
    nll = vaekit_nll(model, torch.from_numpy(data["test"]).float().view(-1, 1, 28, 28), k_eval)
    return {"nll": nll, "train_s": seconds, "eval_s": time.perf_counter() - start}


def ensure_pythae(venv: Path) -> tuple[Path | None, str]:
    python = venv / "bin" / "python"
    if not python.is_file():
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            return None, f"venv failed: {made.stderr.strip()[-200:]}"
    check = subprocess.run([str(python), "-c", "import pythae"], capture_output=True, text=True)
    if check.returncode != 0:
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "pythae==0.1.2"], capture_output=True,
                             text=True)
        if pip.returncode != 0:
            return None, f"pip install pythae==0.1.2 failed: {pip.stderr.strip()[-200:]}"
    return python, ""


def run_pythae(python: Path, name: str, path: Path, k_eval: int) -> dict[str, float] | str:
    kind, k_train = MODELS[name][1], MODELS[name][2]
    if kind is None:
        return "no pythae model"
    proc = subprocess.run([str(python), str(REPO / "bench" / "pythae_mnist.py"), str(path), kind, str(k_train),
                           str(k_eval)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        return f"pythae failed: {proc.stderr.strip().splitlines()[-1][:160]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", default=str(REPO.parent.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--steps", type=int, default=1000, help="Adam steps per model (batch 100)")
    ap.add_argument("--k", type=int, default=1000, help="importance samples for the test NLL")
    ap.add_argument("--test", type=int, default=1000, help="test images evaluated")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--venv", default="/tmp/vaekit-pythae")
    ap.add_argument("--no-pythae", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    train, test = load_mnist(Path(args.mnist))
    data = binarized(train, test, args.steps, args.test)
    python, why = (None, "skipped (--no-pythae)") if args.no_pythae else ensure_pythae(Path(args.venv))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        np.savez(npz, **data)
        for name in args.models.split(","):
            ours = run_vaekit(name, data, args.k, Path(tmp) / "runs")
            theirs = run_pythae(python, name, npz, args.k) if python is not None else why
            rows.append({"model": name, "vaekit": ours, "pythae": theirs, "published": PUBLISHED.get(name)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nMNIST (dynamically binarized), {args.steps} Adam steps × batch 100 per model, test NLL (nats) by "
          f"importance sampling with k={args.k} on the first {args.test} test images\n")
    print("| model | vaekit NLL | vaekit train s | pythae 0.1.2 NLL | pythae train s | published (converged) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p = r["pythae"]
        pn, ps = (f"{p['nll']:.2f}", f"{p['train_s']:.0f}") if isinstance(p, dict) else (p, "-")
        pub = f"{r['published']:.2f}" if r["published"] else "-"
        print(f"| {r['model']} | {r['vaekit']['nll']:.2f} | {r['vaekit']['train_s']:.0f} | {pn} | {ps} | {pub} |")


if __name__ == "__main__":
    main()
