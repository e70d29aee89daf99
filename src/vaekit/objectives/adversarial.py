"""Adversarial losses for VAE-GAN training: discriminator and generator losses (hinge, non-saturating), the R1
penalty, the adaptive generator weight of latent-diffusion, and feature matching.

Discriminator losses average their real and fake halves (``0.5 * (real + fake)``, as ``hinge_d_loss`` and
``vanilla_d_loss`` in taming-transformers / latent-diffusion), so both kinds have the same scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def d_hinge_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge discriminator loss ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def d_nonsaturating_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating (logistic) discriminator loss ``0.5 * (mean(softplus(-real)) + mean(softplus(fake)))``."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def g_hinge_loss(logits_fake: Tensor) -> Tensor:
    """Hinge generator loss ``-mean(fake)``."""
    return -logits_fake.mean()


def g_nonsaturating_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss ``mean(softplus(-fake))``."""
    return F.softplus(-logits_fake).mean()


def r1_penalty(real: Tensor, logits_real: Tensor) -> Tensor:
    """R1 gradient penalty (Mescheder et al. 2018): batch mean of ``‖∇_real Σ logits_real‖²``.

    Args:
        real: the real batch, with ``requires_grad`` set before the discriminator saw it.
        logits_real: the discriminator's output on ``real``.

    Returns:
        A 0-d tensor, differentiable w.r.t. the discriminator's parameters (``create_graph=True``).
    """
    (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def adaptive_weight(
    nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, eps: float = 1e-4, max_weight: float = 1e4
) -> Tensor:
    """Latent-diffusion's adaptive generator weight ``‖∇_last nll‖ / (‖∇_last g‖ + eps)``, clamped to [0, max].

    Args:
        nll_loss: the reconstruction part of the generator's loss (0-d).
        g_loss: the adversarial generator loss (0-d).
        last_layer: the decoder's last weight, on both graphs.

    Returns:
        A detached 0-d tensor.
    """
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = torch.linalg.vector_norm(nll_grad.float()) / (torch.linalg.vector_norm(g_grad.float()) + eps)
    return weight.clamp(0.0, max_weight).detach()


def feature_matching_loss(feats_real: list[Tensor], feats_fake: list[Tensor]) -> Tensor:
    """Mean over discriminator layers of the mean absolute difference between real (detached) and fake features."""
    if len(feats_real) != len(feats_fake) or not feats_real:
        raise ValueError(
            f"expected matching non-empty feature lists, got {len(feats_real)} and {len(feats_fake)}"
        )
    losses = [
        F.l1_loss(fake.float(), real.detach().float())
        for real, fake in zip(feats_real, feats_fake, strict=True)
    ]
    return torch.stack(losses).mean()
