"""The metric table: every metric name `evaluate` accepts, the modality each needs, and the unit of each number.

A leaf (imports nothing of vaekit), so validation during training and the config checks can read it.
"""

from __future__ import annotations

# Every metric name `evaluate` accepts, grouped by the modality it needs ("all": any data).
METRICS: dict[str, tuple[str, ...]] = {
    "all": ("elbo", "iwae", "mse", "latent", "mi", "scale_shift", "rate", "codebook"),
    "image": ("psnr", "ssim", "ms_ssim", "lpips", "rfid", "fid"),
    "audio": ("si_sdr", "mrstft", "lsd"),
    "tags": ("tags",),  # binary tables / multi-hot tags
    "factors": ("mig", "sap"),  # data with labels or generative factors in batch["y"]
    # the same data, asked for by name (scikit-learn models: seconds to minutes on large sets)
    "disentangle": ("dci", "factor_vae_score", "beta_vae_score"),
}
ALL_METRICS = tuple(name for group in METRICS.values() for name in group)
NEEDS_WEIGHTS = ("lpips", "rfid", "fid")
POSTERIOR_ONLY = ("elbo", "iwae", "latent", "mi")
"""Metrics of a Gaussian posterior (skipped for a quantised latent)."""
QUANTIZED_ONLY = ("codebook",)
"""Code usage, perplexity and dead codes (quantised latents only)."""

UNITS = {
    "neg_elbo": "nats/sample",
    "recon_nll": "nats/sample",
    "kl": "nats/sample",
    "neg_elbo_bpd": "bits/dim",
    "iwae_nll": "nats/sample",
    "iwae_bpd": "bits/dim",
    "mse": "per element",
    "active_units": "count",
    "active_fraction": "fraction",
    "mi": "nats",
    "kl_dim_max": "nats/dim",
    "posterior_mean_abs": "",
    "posterior_mean_var": "",
    "posterior_var": "",
    "aggregate_var": "",
    "scaling_factor": "1/std",
    "shift_factor": "mean",
    "psnr": "dB",
    "ssim": "[-1, 1]",
    "ms_ssim": "[0, 1]",
    "lpips": "distance",
    "rfid": "FID",
    "fid": "FID",
    "si_sdr": "dB",
    "mrstft": "distance",
    "lsd": "dB",
    "f1_micro": "[0, 1]",
    "f1_macro": "[0, 1]",
    "map": "[0, 1]",
    "auroc": "[0, 1]",
    "mig": "[0, 1]",
    "sap": "[0, 1]",
    "bits_per_position": "bits/latent position",
    "bits_per_element": "bits/input element",
    "code_usage": "fraction of codes",
    "perplexity": "codes",
    "dead_codes": "count",
    "dci_disentanglement": "[0, 1]",
    "dci_completeness": "[0, 1]",
    "dci_informativeness": "accuracy",
    "factor_vae_score": "accuracy",
    "beta_vae_score": "accuracy",
}


def default_metrics(modality: str, has_y: bool, binary: bool, vector_latent: bool) -> list[str]:
    """The metrics that fit the data: the general ones plus the modality's (and tags / factors when they apply)."""
    names = list(METRICS["all"])
    if modality in ("image", "video"):
        names += METRICS["image"]
    elif modality == "audio":
        names += METRICS["audio"]
    elif modality == "tabular" and binary:
        names += METRICS["tags"]
    if has_y and vector_latent:
        names += METRICS["factors"]
    return names
