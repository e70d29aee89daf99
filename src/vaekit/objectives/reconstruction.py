"""Reconstruction likelihoods: the negative log-likelihood of the data under the decoder's output.

Owns the four likelihoods a run can pick with ``loss.recon`` and the map from the decoder's output
(the likelihood's parameters) to its mean in data space. Every loss here is computed in fp32 and summed over
all non-batch dimensions, so the units are nats (or summed error) per sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RECON_KINDS = ("mse", "l1", "bce", "gaussian")


def reconstruction_nll(
    kind: str, recon: Tensor, target: Tensor, recon_logvar: Tensor | None = None
) -> Tensor:
    """Per-sample reconstruction loss, summed over all non-batch dimensions.

    Args:
        kind: ``mse`` (sum of squared error), ``l1`` (sum of absolute error), ``bce`` (Bernoulli on logits;
            binary, multi-hot or soft targets in [0, 1]) or ``gaussian`` (Gaussian NLL with learned variance).
        recon: the decoder's output with the shape of ``target``: logits for ``bce``, the mean otherwise.
        target: the clean data, ``(B, ...)``.
        recon_logvar: ``gaussian`` only: the log-variance, a 0-d tensor or one per element.

    Returns:
        ``(B,)`` fp32 losses.
    """
    if recon.shape != target.shape:
        raise ValueError(
            f"recon shape {tuple(recon.shape)} does not match target shape {tuple(target.shape)}"
        )
    recon, target = recon.float(), target.float()
    if kind == "mse":
        per_element = (recon - target).pow(2)
    elif kind == "l1":
        per_element = (recon - target).abs()
    elif kind == "bce":
        per_element = F.binary_cross_entropy_with_logits(recon, target, reduction="none")
    elif kind == "gaussian":
        if recon_logvar is None:
            raise ValueError("loss.recon=gaussian needs the decoder's recon_logvar (got None)")
        logvar = recon_logvar.float()
        per_element = 0.5 * (math.log(2 * math.pi) + logvar + (target - recon).pow(2) * torch.exp(-logvar))
    else:
        raise ValueError(f"unknown loss.recon {kind!r}; choose one of {RECON_KINDS}")
    return per_element.flatten(1).sum(1)


def reconstruction_loss(
    kind: str, recon: Tensor, target: Tensor, recon_logvar: Tensor | None = None
) -> Tensor:
    """``reconstruction_nll(...).mean()`` as one fused reduction (the training step's hot path): a 0-d fp32
    loss, summed over data dimensions and averaged over the batch."""
    if kind == "gaussian":
        return reconstruction_nll(kind, recon, target, recon_logvar).mean()
    if recon.shape != target.shape:
        raise ValueError(
            f"recon shape {tuple(recon.shape)} does not match target shape {tuple(target.shape)}"
        )
    recon, target = recon.float(), target.float()
    if kind == "mse":
        total = F.mse_loss(recon, target, reduction="sum")
    elif kind == "l1":
        total = F.l1_loss(recon, target, reduction="sum")
    elif kind == "bce":
        total = F.binary_cross_entropy_with_logits(recon, target, reduction="sum")
    else:
        raise ValueError(f"unknown loss.recon {kind!r}; choose one of {RECON_KINDS}")
    return total / target.shape[0]


def likelihood_mean(kind: str, recon: Tensor) -> Tensor:
    """The likelihood's mean in data space: ``sigmoid(logits)`` for ``bce``, ``recon`` itself otherwise."""
    return torch.sigmoid(recon) if kind == "bce" else recon


def mse_per_element(mean: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per element of each sample, ``(B,)`` in fp32 (comparable across likelihoods)."""
    return (mean.float() - target.float()).pow(2).flatten(1).mean(1)
