"""The training objectives: ``VAEObjective`` (the autoencoder's loss) and ``DiscriminatorObjective``.

Both are built from ``LossConfig`` and combine the plain functions of this package; neither calls ``.item()``,
so a training step stays asynchronous on GPU. ``terms`` hold detached 0-d tensors in per-sample units (sums over
data dimensions, means over the batch).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from vaekit.config.schema import LossConfig
from vaekit.objectives.adversarial import (
    adaptive_weight,
    d_hinge_loss,
    d_nonsaturating_loss,
    feature_matching_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
    r1_penalty,
)
from vaekit.objectives.iwae import iwae_bound, latent_log_densities
from vaekit.objectives.kl import kl_loss, kl_per_element
from vaekit.objectives.perceptual import PerceptualLoss
from vaekit.objectives.reconstruction import (
    likelihood_mean,
    mse_per_element,
    reconstruction_loss,
    reconstruction_nll,
)
from vaekit.objectives.schedules import capacity, kl_weight
from vaekit.objectives.spectral import multi_resolution_stft_loss
from vaekit.objectives.terms import vae_terms
from vaekit.objectives.variants import variant_kl_term


class VAEOutputLike(Protocol):
    recon: Tensor
    mean: Tensor
    logvar: Tensor | None
    z: Tensor
    recon_logvar: Tensor | None


QUANTIZER_TERMS = ("commit", "codebook", "entropy")
"""Terms a quantised bottleneck reports in ``out.info`` (nats-free squared distances / entropies in the units of
the summed reconstruction NLL; see ``vaekit.models.bottleneck``); their weighted sum is ``info["bottleneck_loss"]``."""


def _scalar(value: float, like: Tensor) -> Tensor:
    """A 0-d fp32 tensor on ``like``'s device, made by a fill kernel (no host-to-device copy)."""
    return torch.full((), value, dtype=torch.float32, device=like.device)


class VAEObjective(nn.Module):
    """The autoencoder's loss: weighted reconstruction NLL + KL term + perceptual + spectral + adversarial.

    ``total = recon_weight·nll + kl_term + N·perceptual.weight·perc + spectral.weight·spec + adversarial``, each
    a batch mean of per-sample values. The perceptual and spectral distances are per-element quantities added to
    every one of the N elements of a sample (as latent-diffusion adds LPIPS to each pixel's L1), so that weight 1
    balances them against a reconstruction NLL summed over those N elements; ``terms`` logs the raw distances.
    With ``loss.reduction: mean`` the reconstruction is divided by N instead and the distances are not multiplied
    (a mean-reduced script's units). The KL term is ``kl_weight(step)·KL`` (KL with free bits), or
    ``gamma·|KL − C(step)|`` for the capacity schedule. The adversarial term (when ``adversarial.weight > 0``,
    a discriminator is given and ``step >= start_step``) is ``adversarial.weight·w·g_loss`` with ``w`` the adaptive
    weight (training mode with grad enabled and a reconstruction term present, else 1), plus
    ``feature_matching·FM``.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.terms = vae_terms(cfg)
        """The terms this objective reports (with the adversarial ones when a discriminator is active)."""
        use_perceptual = cfg.perceptual.kind != "none" and cfg.perceptual.weight > 0
        self.perceptual = PerceptualLoss(cfg.perceptual) if use_perceptual else None
        self._has_rec = cfg.recon_weight > 0 or use_perceptual
        """Whether a reconstruction term exists for the adaptive adversarial weight to balance against."""
        # research variants (objectives.variants, objectives.iwae)
        self.samples = cfg.iw.k * cfg.iw.m if cfg.variant in ("iwae", "miwae") else 1
        """Posterior samples the forward must draw per input (the trainer shapes its noise ``(B, S, *latent)``)."""
        self.dataset_size: int | None = None
        """The training set size (β-TCVAE's estimators), set by the trainer at a stage's start."""

    def forward(
        self,
        target: Tensor,
        out: VAEOutputLike,
        step: int,
        discriminator: nn.Module | None = None,
        last_layer: Tensor | None = None,
        detailed: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            target: the clean batch ``(B, ...)``.
            out: the model's output (``recon``, ``mean``, ``logvar``, ``recon_logvar``).
            step: the optimizer step (schedules, adversarial start).
            discriminator: called on the likelihood mean; ``return_features=True`` with feature matching.
            last_layer: the decoder's last weight, needed for the adaptive adversarial weight.
            detailed: also report the diagnostics ``mse`` and ``kl_weight`` (the trainer asks on logging steps
                only: they are not part of the loss and cost a pass over the batch).

        Returns:
            ``(total, terms)``: a 0-d loss and detached 0-d terms (``loss``, ``recon``, ``mse``, ``kl``,
            ``kl_weight`` (Gaussian latents) or ``commit``/``codebook``/``entropy`` (quantised: ``out.logvar`` is
            None, the terms come from ``out.info``) and, where active, ``capacity``, ``perceptual``, ``spectral``, ``g_adv``,
            ``adv_weight``, ``feature_matching``).
        """
        cfg = self.cfg
        if cfg.variant in ("iwae", "miwae"):
            return self._iw_forward(target, out, step, detailed)
        terms: dict[str, Tensor] = {}
        adv = cfg.adversarial
        adv_on = adv.weight > 0 and discriminator is not None and step >= adv.start_step
        needs_fake = self.perceptual is not None or cfg.spectral.weight > 0 or adv_on
        fake = likelihood_mean(cfg.recon, out.recon) if needs_fake else None

        nll = reconstruction_loss(cfg.recon, out.recon, target, out.recon_logvar)
        terms["recon"] = nll
        if detailed:
            with torch.no_grad():
                mean = fake if fake is not None else likelihood_mean(cfg.recon, out.recon)
                terms["mse"] = mse_per_element(mean, target).mean()
        numel = target[0].numel()  # elements per sample
        # reduction=mean: the reconstruction averaged over a sample's elements, per-element distances unscaled
        per_elem = numel if cfg.reduction == "sum" else 1
        weight = cfg.recon_weight if cfg.reduction == "sum" else cfg.recon_weight / numel
        rec_loss = nll if weight == 1.0 else weight * nll

        if self.perceptual is not None:
            perceptual = self.perceptual(fake, target).mean()
            terms["perceptual"] = perceptual
            rec_loss = rec_loss + cfg.perceptual.weight * per_elem * perceptual
        if out.logvar is None:  # a quantised latent: no KL; the bottleneck's own terms instead
            total = rec_loss + self._bottleneck_term(out, terms)
        else:
            total = rec_loss + self._kl_term(out, step, terms, detailed, discriminator)

        if cfg.spectral.weight > 0:
            spec = cfg.spectral
            spectral = multi_resolution_stft_loss(
                fake,
                target,
                spec.fft_sizes,
                spec.hop_sizes,
                spec.win_lengths,
                spec.w_sc,
                spec.w_log_mag,
                spec.w_lin_mag,
            ).mean()
            terms["spectral"] = spectral
            # not ×N: a clip's spectral distance is one number per clip (λ = 1 balances a summed waveform NLL on
            # speech; ×N made λ = 1 thousands of times too strong), in either reduction
            total = total + spec.weight * spectral

        if adv_on:
            total = total + self._adversarial_term(fake, target, rec_loss, discriminator, last_layer, terms)

        terms["loss"] = total
        return total, {name: value.detach() for name, value in terms.items()}

    @staticmethod
    def _bottleneck_term(out: VAEOutputLike, terms: dict[str, Tensor]) -> Tensor:
        """The quantiser's weighted loss from ``out.info``; records ``commit``/``codebook``/``entropy``."""
        info = getattr(out, "info", None) or {}
        for name in QUANTIZER_TERMS:
            if name in info:
                terms[name] = info[name]
        loss = info.get("bottleneck_loss")
        return loss if loss is not None else out.recon.new_zeros(())

    def _kl_term(self, out: VAEOutputLike, step: int, terms: dict[str, Tensor], detailed: bool,
                 discriminator: nn.Module | None = None) -> Tensor:
        """The KL part of the loss; records ``kl`` (raw, nats per sample), ``kl_weight`` and ``capacity``.

        A model that reports its own densities (``out.info["log_pz"]``: a VampPrior, a hierarchical model) gets
        the one-sample Monte-Carlo estimate E[log q(z|x) − log p(z)] instead of the closed form."""
        kl_cfg = self.cfg.kl
        if self.cfg.variant != "elbo":
            return variant_kl_term(self.cfg, out, step, discriminator, self.dataset_size, terms)
        if "log_pz" in (getattr(out, "info", None) or {}):
            log_qz, log_pz = latent_log_densities(out, multi=False)
            kl_raw = kl = (log_qz - log_pz).mean()
        else:
            kl_raw = kl_per_element(out.mean, out.logvar).sum() / out.mean.shape[0]
            kl = kl_loss(out.mean, out.logvar, kl_cfg.free_bits).mean() if kl_cfg.free_bits > 0 else kl_raw
        terms["kl"] = kl_raw
        if kl_cfg.schedule == "capacity":
            target_kl = capacity(step, kl_cfg)
            terms["capacity"] = _scalar(target_kl, kl)
            terms["kl_weight"] = _scalar(kl_cfg.gamma, kl)
            return kl_cfg.gamma * (kl - target_kl).abs()
        weight = kl_weight(step, kl_cfg, self.cfg.beta)
        if detailed:
            terms["kl_weight"] = _scalar(weight, kl)
        return kl if weight == 1.0 else weight * kl

    def _iw_forward(self, target: Tensor, out: VAEOutputLike, step: int, detailed: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """IWAE / MIWAE: ``loss = −bound`` (nats per sample) from the k·m samples of ``out`` (one sample, the
        ELBO, when the forward drew one). The KL schedule's weight scales log p(z) − log q(z|x) in each weight.
        Terms: ``loss``, ``recon`` and ``kl`` (sample means, nats), ``mse``, ``kl_weight``."""
        cfg = self.cfg
        multi = out.z.dim() == out.mean.dim() + 1
        b = target.shape[0]
        s = out.z.shape[1] if multi else 1
        recon = out.recon.flatten(0, 1) if multi else out.recon
        rlv = out.recon_logvar
        if rlv is not None and rlv.dim() > 0 and multi:
            rlv = rlv.flatten(0, 1)
        tgt = target.unsqueeze(1).expand(b, s, *target.shape[1:]).flatten(0, 1) if multi else target
        nll = reconstruction_nll(cfg.recon, recon, tgt, rlv).view(b, s)
        log_qz, log_pz = latent_log_densities(out, multi)
        log_qz, log_pz = log_qz.view(b, s), log_pz.view(b, s)
        weight = kl_weight(step, cfg.kl, cfg.beta)
        log_w = -nll + weight * (log_pz - log_qz)
        k, m = (cfg.iw.k, cfg.iw.m) if s == cfg.iw.k * cfg.iw.m else (s, 1)
        total = -iwae_bound(log_w, k, m).mean()
        terms = {"loss": total, "recon": nll.mean(), "kl": (log_qz - log_pz).mean(), "kl_weight": _scalar(weight, total)}
        if detailed:
            with torch.no_grad():
                terms["mse"] = mse_per_element(likelihood_mean(cfg.recon, recon), tgt).mean()
        return total, {name: value.detach() for name, value in terms.items()}

    def _adversarial_term(
        self,
        fake: Tensor,
        target: Tensor,
        rec_loss: Tensor,
        discriminator: nn.Module,
        last_layer: Tensor | None,
        terms: dict[str, Tensor],
    ) -> Tensor:
        """Generator loss on the discriminator's logits (adaptively weighted) plus feature matching."""
        adv = self.cfg.adversarial
        fm_loss = None
        if adv.feature_matching > 0:
            logits_fake, feats_fake = discriminator(fake, return_features=True)
            with torch.no_grad():
                _, feats_real = discriminator(target, return_features=True)
            fm_loss = feature_matching_loss(feats_real, feats_fake)
        else:
            logits_fake = discriminator(fake)
        g_loss = g_hinge_loss(logits_fake) if adv.loss == "hinge" else g_nonsaturating_loss(logits_fake)

        if adv.adaptive and self.training and torch.is_grad_enabled() and last_layer is not None and self._has_rec:
            # last_layer is None when the decoder is frozen, and a GAN-only stage (no reconstruction term) has
            # no ‖∇rec‖ to balance against (the ratio would be 0): the plain weight applies then
            weight = adv.weight * adaptive_weight(
                rec_loss, g_loss, last_layer, adv.adaptive_eps, adv.adaptive_max
            )
        else:
            weight = _scalar(adv.weight, g_loss)
        terms["g_adv"] = g_loss
        terms["adv_weight"] = weight
        term = weight * g_loss
        if fm_loss is not None:
            terms["feature_matching"] = fm_loss
            term = term + adv.feature_matching * fm_loss
        return term


class DiscriminatorObjective(nn.Module):
    """The discriminator's loss: hinge or non-saturating, plus a lazy R1 penalty on real data, × ``disc_weight``.

    ``fake`` is the autoencoder's raw output ``out.recon`` (logits for ``bce``), the same tensor ``VAEObjective``
    receives; it is detached and mapped to data space with ``likelihood_mean`` here, so both players see the
    same images. R1 is computed every ``r1_every`` steps and scaled by ``r1_every`` (StyleGAN2's lazy
    regularization keeps the same average strength).
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def active(self, step: int) -> bool:
        """Whether the discriminator trains at ``step`` (``adversarial.weight > 0`` and past ``start_step``)."""
        adv = self.cfg.adversarial
        return adv.weight > 0 and step >= adv.start_step

    def forward(
        self, real: Tensor, fake: Tensor, step: int, discriminator: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the discriminator's loss.

        Args:
            real: the clean batch ``(B, ...)``.
            fake: the autoencoder's raw reconstruction ``out.recon`` (detached here).
            step: the optimizer step (R1 schedule).
            discriminator: returns logits for a batch.

        Returns:
            ``(total, terms)`` with detached 0-d ``d_loss``, ``d_real``, ``d_fake``, ``d_acc`` and ``r1`` when computed.
        """
        adv = self.cfg.adversarial
        fake = likelihood_mean(self.cfg.recon, fake.detach())
        use_r1 = adv.r1_weight > 0 and step % adv.r1_every == 0
        if use_r1:
            real = real.detach().requires_grad_(True)
        logits_real = discriminator(real)
        logits_fake = discriminator(fake)
        d_loss = (d_hinge_loss if adv.loss == "hinge" else d_nonsaturating_loss)(logits_real, logits_fake)
        terms = {
            "d_loss": d_loss,
            "d_real": logits_real.mean(),
            "d_fake": logits_fake.mean(),
            "d_acc": 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean()),
        }
        total = d_loss
        if use_r1:
            r1 = r1_penalty(real, logits_real)
            terms["r1"] = r1
            total = total + adv.r1_weight * adv.r1_every * r1
        return adv.disc_weight * total, {name: value.detach() for name, value in terms.items()}
