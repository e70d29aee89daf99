"""pythae's side of ``bench/mnist_nll.py``: runs inside a separate virtual environment with pythae 0.1.2 (never a
vaekit dependency). Trains pythae's VAE / IWAE / VAMP with the same MLP (784-200-200-50, ReLU), the same data
array (one pass over the dynamically binarized copies the driver wrote), batch and Adam learning rate, then
estimates the test NLL with the same importance-sampling estimator as vaekit's side (written out again here: this
environment does not import vaekit). Prints one JSON line.

    /tmp/vaekit-pythae/bin/python bench/pythae_mnist.py DATA.npz MODEL K_TRAIN K_EVAL
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig
from torch import nn

LATENT, HIDDEN = 50, 200


class Encoder(BaseEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.mu, self.logvar = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.net(x)
        return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))


class Decoder(BaseDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, 784))

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(-1, 1, 28, 28))


@torch.no_grad()
def is_nll(model: nn.Module, x: torch.Tensor, k: int, vamp: bool, batch: int = 20, seed: int = 123) -> float:
    """Mean −log p(x) estimate (nats): −log (1/k) Σ p(x|z)p(z)/q(z|x), z ~ q(z|x), full Gaussian constants."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    log2pi = math.log(2 * math.pi)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        enc = model.encoder(xb)
        mu, lv = enc.embedding, enc.log_covariance
        b = xb.shape[0]
        eps = torch.randn((b, k, LATENT), generator=g)
        z = mu[:, None] + torch.exp(0.5 * lv)[:, None] * eps
        log_q = (-0.5 * (log2pi + lv[:, None] + eps**2)).sum(-1)
        flat = z.reshape(b * k, LATENT)
        if vamp:  # pythae's _log_p_z leaves out the −D/2·log 2π of every component: added back
            log_p = (model._log_p_z(flat) - 0.5 * LATENT * log2pi).view(b, k)
        else:
            log_p = (-0.5 * (log2pi + z**2)).sum(-1)
        logits = model.decoder.net(flat).view(b, k, 784)
        log_px = -F.binary_cross_entropy_with_logits(logits, xb.view(b, 1, 784).expand(b, k, 784),
                                                     reduction="none").sum(-1)
        total += float(-(torch.logsumexp(log_px + log_p - log_q, 1) - math.log(k)).sum())
    return total / len(x)


def main() -> None:
    path, name, k_train, k_eval = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = np.load(path)
    train = torch.from_numpy(data["train"]).float().view(-1, 1, 28, 28)
    val = torch.from_numpy(data["val"]).float().view(-1, 1, 28, 28)
    test = torch.from_numpy(data["test"]).float().view(-1, 1, 28, 28)
    torch.manual_seed(0)
    common = {"input_dim": (1, 28, 28), "latent_dim": LATENT, "reconstruction_loss": "bce"}
    if name == "vae":
        model = VAE(VAEConfig(**common), encoder=Encoder(), decoder=Decoder())
    elif name == "iwae":
        model = IWAE(IWAEConfig(**common, number_samples=k_train), encoder=Encoder(), decoder=Decoder())
    else:
        model = VAMP(VAMPConfig(**common, number_components=500), encoder=Encoder(), decoder=Decoder())
    with tempfile.TemporaryDirectory() as out:
        cfg = BaseTrainerConfig(output_dir=out, num_epochs=1, learning_rate=1e-3, per_device_train_batch_size=100,
                                per_device_eval_batch_size=100, no_cuda=True, seed=0)
        start = time.perf_counter()
        TrainingPipeline(training_config=cfg, model=model)(train_data=train, eval_data=val)
        seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    nll = is_nll(model, test.view(-1, 784), k_eval, vamp=name == "vamp")
    print(json.dumps({"model": name, "nll": nll, "train_s": seconds, "eval_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
