"""The loss terms each objective produces: one declaration, torch-free, read by the objectives themselves, by
stage transitions (which metric names exist) and by the ``vaekit validate`` summary."""

from __future__ import annotations

from vaekit.config.schema import BottleneckConfig, LossConfig

VAL_EXTRA = ("active_units", "kl_dim_mean", "kl_dim_max")
"""Computed by validation from the posterior (not loss terms)."""


def vae_terms(loss: LossConfig, bottleneck: BottleneckConfig | None = None) -> set[str]:
    """The terms ``VAEObjective`` logs (train and val) for this loss config (and the model's bottleneck)."""
    if bottleneck is not None and bottleneck.quantized:
        terms = {"loss", "recon", "mse", *quantizer_terms(bottleneck)}
    else:
        terms = {"loss", "recon", "kl", "mse", "kl_weight"}
    if loss.perceptual.kind != "none":
        terms.add("perceptual")
    if loss.spectral.weight > 0:
        terms.add("spectral")
    if loss.kl.schedule == "capacity" and "kl" in terms:
        terms.add("capacity")
    terms |= VARIANT_TERMS.get(loss.variant, set())
    return terms


VARIANT_TERMS: dict[str, set[str]] = {
    "beta_tcvae": {"mi", "tc", "dwkl"},
    "dip_vae_i": {"dip"},
    "dip_vae_ii": {"dip"},
}
"""The terms a research variant adds (``objectives.variants``)."""


def factor_terms(loss: LossConfig) -> set[str]:
    """Train-only terms of FactorVAE: the TC estimate (validation has no discriminator) and the latent
    discriminator's update."""
    return {"tc", "d_loss", "d_acc"} if loss.variant == "factor_vae" else set()


# ------------------------------------------------------------------------------------------ bottleneck
QUANTIZER_VAL_EXTRA = ("code_usage", "perplexity", "dead_codes", "bits_per_position", "bits_per_element")
"""Computed by validation from a quantised latent's codes (code health and rate)."""


GAUSSIAN_RATE = ("bits_per_element",)
"""Validation's rate of a Gaussian latent: the KL in bits per input element."""
POSTERIOR_METRICS = ("elbo", "iwae", "mi", "latent")
"""``eval.metrics`` groups that need a Gaussian posterior (undefined for a quantised latent)."""


def quantizer_terms(bottleneck: BottleneckConfig) -> set[str]:
    """The quantiser terms a bottleneck reports (``entropy`` is a training-only term: see ``train_only_terms``)."""
    if bottleneck.kind == "fsq":
        return set()
    terms = {"commit"}
    if bottleneck.kind in ("vq", "rvq") and bottleneck.codebook == "learned":
        terms.add("codebook")
    if bottleneck.kind == "lfq":
        terms.add("entropy")
    return terms


def train_only_terms(bottleneck: BottleneckConfig | None) -> set[str]:
    """Terms logged in training only (lfq's entropy: the library computes it in training mode)."""
    return {"entropy"} if bottleneck is not None and bottleneck.kind == "lfq" else set()


def adversarial_terms(loss: LossConfig) -> set[str]:
    """Train-only terms of the adversarial game: the generator's and ``DiscriminatorObjective``'s."""
    if loss.adversarial.weight <= 0:
        return set()
    terms = {"g_adv", "adv_weight", "d_loss", "d_real", "d_fake", "d_acc"}
    if loss.adversarial.r1_weight > 0:
        terms.add("r1")
    if loss.adversarial.feature_matching > 0:
        terms.add("feature_matching")
    return terms


EVAL_REPORTS: dict[str, tuple[str, ...]] = {
    "elbo": ("neg_elbo", "recon_nll", "neg_elbo_bpd"),
    "iwae": ("iwae_nll", "iwae_bpd"),
    "mse": (),
    "latent": ("active_fraction", "posterior_mean_abs", "posterior_mean_var", "posterior_var", "aggregate_var"),
    "mi": ("mi",),
    "scale_shift": ("scaling_factor", "shift_factor"),
    "psnr": ("psnr",),
    "ssim": ("ssim",),
    "ms_ssim": ("ms_ssim",),
    "lpips": ("lpips",),
    "rfid": ("rfid",),
    "fid": ("fid",),
    "si_sdr": ("si_sdr",),
    "mrstft": ("mrstft",),
    "lsd": ("lsd",),
    "tags": ("f1_micro", "f1_macro", "map", "auroc"),
    "mig": ("mig",),
    "sap": ("sap",),
    "rate": ("bits_per_position", "bits_per_element"),
    "codebook": ("code_usage", "perplexity", "dead_codes"),
    "dci": ("dci_disentanglement", "dci_completeness", "dci_informativeness"),
    "factor_vae_score": ("factor_vae_score",),
    "beta_vae_score": ("beta_vae_score",),
}
"""``eval.metrics`` names (the groups of ``vaekit.eval``) → the validation terms they add (names the objective
already logs, such as ``kl`` and ``mse``, keep the objective's value)."""


def produced_metrics(loss: LossConfig, eval_metrics: list[str] | tuple[str, ...] = (),
                     bottleneck: BottleneckConfig | None = None) -> set[str]:
    """Every metric name (``train/…``, ``val/…``) a stage with this loss config (and ``eval.metrics``, and the
    model's bottleneck) logs."""
    terms = vae_terms(loss, bottleneck)
    train = {f"train/{t}" for t in terms | adversarial_terms(loss) | factor_terms(loss)}
    extra = {name for group in eval_metrics for name in EVAL_REPORTS.get(group, ())}
    quantized = bottleneck is not None and bottleneck.quantized
    val_extra = QUANTIZER_VAL_EXTRA if quantized else (*VAL_EXTRA, *GAUSSIAN_RATE)
    val_terms = terms - train_only_terms(bottleneck)
    return train | {f"val/{t}" for t in val_terms | extra} | {f"val/{t}" for t in val_extra}
