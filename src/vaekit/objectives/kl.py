"""The KL term of the ELBO against a standard-normal prior, free bits, and latent-usage statistics.

A latent *dimension* is one entry of a vector latent ``(B, D)``, or one channel of a spatial latent
``(B, C, *spatial)`` (its KL averaged over positions). Free bits and the per-dimension statistics use that unit.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl_per_element(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element, in fp32 and nats, with the shape of ``mean``."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + torch.exp(logvar) - 1.0 - logvar)


def _kl_per_dim(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL per sample and latent dimension, ``(B, D, P)`` with P spatial positions (1 for vector latents)."""
    kl = kl_per_element(mean, logvar)
    return kl.reshape(kl.shape[0], kl.shape[1], -1)


def kl_loss(mean: Tensor, logvar: Tensor, free_bits: float = 0.0) -> Tensor:
    """Per-sample KL in nats, summed over latent elements, optionally with free bits.

    Free bits (Kingma et al. 2016): a dimension whose batch-mean KL (per position, for spatial latents) is under
    ``free_bits`` contributes the constant floor instead of its KL, so it gets no gradient; dimensions above the
    floor contribute their ordinary KL. The batch mean of the result equals
    ``P * sum_d max(free_bits, mean_b KL[b, d])`` (P positions per channel, 1 for vector latents), i.e. the
    clamped total, and its gradient is that of ``torch.clamp(min=free_bits)``.

    Args:
        mean, logvar: the posterior, ``(B, D)`` or ``(B, C, *spatial)``.
        free_bits: the floor per dimension in nats; 0 disables it.

    Returns:
        ``(B,)`` fp32 KL per sample.
    """
    kl = _kl_per_dim(mean, logvar)  # (B, D, P)
    if free_bits <= 0.0:
        return kl.sum((1, 2))
    positions = kl.shape[2]
    per_dim = kl.mean(2)  # (B, D)
    above = per_dim.detach().mean(0) >= free_bits  # (D,)
    floored = torch.where(above, per_dim, torch.full_like(per_dim, free_bits))
    return positions * floored.sum(1)


def kl_stats(mean: Tensor, logvar: Tensor) -> dict[str, Tensor]:
    """Detached per-dimension KL statistics (nats per position): its mean and max over latent dimensions.

    Returns:
        ``{"kl_per_dim": (D,), "kl_dim_mean": 0-d, "kl_dim_max": 0-d}``.
    """
    per_dim = _kl_per_dim(mean.detach(), logvar.detach()).mean((0, 2))  # (D,)
    return {"kl_per_dim": per_dim, "kl_dim_mean": per_dim.mean(), "kl_dim_max": per_dim.max()}


def active_units(means: Tensor, threshold: float = 0.01) -> int:
    """Number of active latent dimensions (Burda et al. 2016): Var_x(E_q[z | x]) > threshold.

    Args:
        means: posterior means over a data set, ``(N, D)`` or ``(N, C, *spatial)`` (for spatial latents a
            channel's variance over samples is averaged over its positions).
        threshold: the variance above which a dimension counts as active.

    Returns:
        The count (a host sync: call at evaluation time, not every step).
    """
    flat = means.detach().float().reshape(means.shape[0], means.shape[1], -1)  # (N, D, P)
    variance = flat.var(0).mean(1)  # (D,)
    return int((variance > threshold).sum().item())
