"""Research objectives that replace the ELBO's KL term: β-TCVAE, DIP-VAE I/II, FactorVAE's TC estimate.

Each is a plain function of the posterior (``mean``, ``logvar``) and the drawn ``z`` of a batch; the objective
(``VAEObjective``) picks one from ``loss.variant``. Units: nats per sample (KL-like terms), the covariance
penalties are unitless. The FactorVAE discriminator's own loss is ``factor_discriminator_loss``; its update runs
as the PatchGAN's does (``FactorDiscriminatorObjective``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.objectives.iwae import LOG_2PI


# ------------------------------------------------------------------------------------------- β-TCVAE
def log_importance_weight_matrix(batch: int, dataset_size: int) -> Tensor:
    """Minibatch-stratified sampling weights (Chen et al. 2018, appendix C.2): ``(B, B)`` log weights; row i gives
    1/N to x_i itself, (N − M)/(N·M) to one other sample (the stratum's remainder, here x_{i+1}) and 1/M to the
    remaining M − 1, with M = B − 1, so each row sums to 1. (The authors' code writes these by flat-index strides
    that fill columns rather than the diagonal; this follows the paper.)"""
    n, m = dataset_size, batch - 1
    if m < 1:  # a batch of one: the sample itself
        return torch.full((batch, batch), -math.log(n))
    w = torch.full((batch, batch), 1.0 / m, dtype=torch.float64)
    idx = torch.arange(batch)
    w[idx, (idx + 1) % batch] = (n - m) / (n * m)
    w[idx, idx] = 1.0 / n
    return w.log().float()


def tc_decomposition(z: Tensor, mean: Tensor, logvar: Tensor, dataset_size: int,
                     estimator: str = "mss") -> tuple[Tensor, Tensor, Tensor]:
    """The decomposed KL of β-TCVAE, estimated on one minibatch.

    Args:
        z, mean, logvar: ``(B, D)`` drawn latents and the posterior of each input.
        dataset_size: N, the training set size.
        estimator: ``mws`` (minibatch-weighted) or ``mss`` (minibatch-stratified sampling).

    Returns:
        ``(mi, tc, dwkl)``, each ``(B,)`` in nats: log q(z|x) − log q(z), log q(z) − Σ_d log q(z_d),
        Σ_d log q(z_d) − log p(z). They sum to log q(z|x) − log p(z), the sampled KL.
    """
    z, mean, logvar = z.float().flatten(1), mean.float().flatten(1), logvar.float().flatten(1)
    b = z.shape[0]
    # log q(z_i,d | x_j): (B, B, D)
    mat = -0.5 * (LOG_2PI + logvar[None] + (z[:, None] - mean[None]).pow(2) * torch.exp(-logvar[None]))
    if estimator == "mws":
        log_qz = torch.logsumexp(mat.sum(2), dim=1) - math.log(b * dataset_size)
        log_prod = (torch.logsumexp(mat, dim=1) - math.log(b * dataset_size)).sum(1)
    elif estimator == "mss":
        w = log_importance_weight_matrix(b, dataset_size).to(z.device)
        log_qz = torch.logsumexp(w + mat.sum(2), dim=1)
        log_prod = torch.logsumexp(w[:, :, None] + mat, dim=1).sum(1)
    else:
        raise ValueError(f"unknown loss.tc.estimator {estimator!r} (mws | mss)")
    log_qzx = mat.diagonal(dim1=0, dim2=1).sum(0)  # log q(z_i | x_i)
    log_pz = (-0.5 * (z * z + LOG_2PI)).sum(1)
    return log_qzx - log_qz, log_qz - log_prod, log_prod - log_pz


# ------------------------------------------------------------------------------------------- DIP-VAE
def dip_regularizer(mean: Tensor, logvar: Tensor, kind: str, lambda_od: float, lambda_d: float) -> Tensor:
    """DIP-VAE's moment penalty (Kumar et al. 2018, eqs. 6-7), a 0-d tensor.

    ``i``: C = Cov_batch[μ(x)]; ``ii``: C = Cov_batch[μ(x)] + E_batch[diag σ²(x)].
    Returns ``lambda_od·Σ_{i≠j} C_ij² + lambda_d·Σ_i (C_ii − 1)²``.
    """
    mu = mean.float().flatten(1)
    centered = mu - mu.mean(0, keepdim=True)
    cov = centered.T @ centered / mu.shape[0]  # (D, D), the biased batch covariance
    if kind == "ii":
        cov = cov + torch.diag(torch.exp(logvar.float().flatten(1)).mean(0))
    elif kind != "i":
        raise ValueError(f"unknown DIP-VAE kind {kind!r} (i | ii)")
    diag = torch.diagonal(cov)
    off = cov - torch.diag(diag)
    return lambda_od * off.pow(2).sum() + lambda_d * (diag - 1).pow(2).sum()


# ------------------------------------------------------------------------------------------ FactorVAE
def permute_dims(z: Tensor) -> Tensor:
    """Each latent dimension shuffled independently across the batch: samples of Π_d q(z_d) (Kim & Mnih, alg. 1).
    Draws from the global RNG (checkpointed), so a resumed run draws the same permutations."""
    z = z.flatten(1)
    b, d = z.shape
    idx = torch.argsort(torch.rand(b, d, device=z.device), dim=0)
    return torch.gather(z, 0, idx)


def factor_tc(logits: Tensor) -> Tensor:
    """The density-ratio TC estimate ``E[log D(z) / (1 − D(z))]`` from the discriminator's logit for "drawn from
    q(z)" (with D = sigmoid(logit), log D/(1−D) = logit): a 0-d tensor in nats."""
    return logits.float().mean()


def factor_discriminator_loss(logits_joint: Tensor, logits_permuted: Tensor) -> Tensor:
    """Binary cross-entropy of the latent discriminator: q(z) samples labelled 1, permuted ones 0 (0-d)."""
    real = F.binary_cross_entropy_with_logits(logits_joint.float(), torch.ones_like(logits_joint, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(logits_permuted.float(), torch.zeros_like(logits_permuted, dtype=torch.float32))
    return 0.5 * (real + fake)


class FactorDiscriminatorObjective(nn.Module):
    """The latent discriminator's update: the detached z of the generator's forward against its dimension-wise
    permutation. Reads ``z`` (not the reconstruction) from the generator's output."""

    reads = "z"

    def __init__(self, cfg: object) -> None:
        super().__init__()
        self.cfg = cfg

    def active(self, step: int) -> bool:
        return True

    def forward(self, real: Tensor, z: Tensor, step: int, discriminator: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        """``real`` is unused (the batch); ``z`` the detached latents ``(B, D)``. Returns ``(loss, terms)``."""
        z = z.detach().flatten(1)
        logits_joint = discriminator(z)
        logits_perm = discriminator(permute_dims(z))
        loss = factor_discriminator_loss(logits_joint, logits_perm)
        acc = 0.5 * ((logits_joint > 0).float().mean() + (logits_perm < 0).float().mean())
        return loss, {"d_loss": loss.detach(), "d_acc": acc.detach()}


# ------------------------------------------------------------------------------------ the KL replacement
def variant_kl_term(cfg: object, out: object, step: int, discriminator: nn.Module | None, dataset_size: int | None,
                    terms: dict[str, Tensor]) -> Tensor:
    """The regulariser of ``loss.variant`` (β-TCVAE, FactorVAE, DIP-VAE) in place of the ELBO's β·KL: a 0-d
    loss, scaled by the KL schedule's ramp (``kl_weight(step, kl, 1)``: 1 with the constant schedule). Records
    ``kl`` (the closed-form KL, nats per sample) and the variant's own terms in ``terms``."""
    from vaekit.objectives.kl import kl_per_element
    from vaekit.objectives.schedules import kl_weight

    loss_cfg = cfg  # LossConfig
    mean, logvar, z = out.mean, out.logvar, out.z  # type: ignore[attr-defined]
    kl = kl_per_element(mean, logvar).sum() / mean.shape[0]
    terms["kl"] = kl
    ramp = kl_weight(step, loss_cfg.kl, 1.0)
    terms["kl_weight"] = torch.full((), ramp, device=kl.device)
    variant = loss_cfg.variant
    if variant == "beta_tcvae":
        tc_cfg = loss_cfg.tc
        mi, tc, dwkl = tc_decomposition(z, mean, logvar, dataset_size or z.shape[0], tc_cfg.estimator)
        terms.update(mi=mi.mean(), tc=tc.mean(), dwkl=dwkl.mean())
        reg = tc_cfg.alpha * mi.mean() + tc_cfg.beta * tc.mean() + tc_cfg.gamma * dwkl.mean()
    elif variant in ("dip_vae_i", "dip_vae_ii"):
        kind = variant.rsplit("_", 1)[1]
        dip = loss_cfg.dip
        lambda_d = dip.lambda_d if dip.lambda_d is not None else (10 * dip.lambda_od if kind == "i" else dip.lambda_od)
        pen = dip_regularizer(mean, logvar, kind, dip.lambda_od, lambda_d)
        terms["dip"] = pen
        reg = loss_cfg.beta * kl + pen
    elif variant == "factor_vae":
        reg = loss_cfg.beta * kl
        if discriminator is not None:
            tc = factor_tc(discriminator(z.flatten(1)))
            terms["tc"] = tc
            reg = reg + loss_cfg.factor.gamma * tc
    else:
        raise ValueError(f"loss.variant={variant}: not a KL replacement")
    return reg if ramp == 1.0 else ramp * reg
