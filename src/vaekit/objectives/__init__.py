"""Objectives: reconstruction likelihoods, KL (+ schedules, free bits), denoising corruption, perceptual,
spectral and adversarial losses as plain tested functions, combined by ``VAEObjective`` and
``DiscriminatorObjective``."""

from vaekit.objectives.adversarial import (
    adaptive_weight,
    d_hinge_loss,
    d_nonsaturating_loss,
    feature_matching_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
    r1_penalty,
)
from vaekit.objectives.denoise import corrupt
from vaekit.objectives.kl import active_units, kl_loss, kl_per_element, kl_stats
from vaekit.objectives.objective import DiscriminatorObjective, VAEObjective
from vaekit.objectives.perceptual import MissingWeightsError, PerceptualLoss, check_perceptual_weights
from vaekit.objectives.reconstruction import likelihood_mean, mse_per_element, reconstruction_nll
from vaekit.objectives.schedules import capacity, kl_weight
from vaekit.objectives.spectral import multi_resolution_stft_loss

__all__ = [
    "DiscriminatorObjective",
    "MissingWeightsError",
    "PerceptualLoss",
    "VAEObjective",
    "active_units",
    "adaptive_weight",
    "capacity",
    "check_perceptual_weights",
    "corrupt",
    "d_hinge_loss",
    "d_nonsaturating_loss",
    "feature_matching_loss",
    "g_hinge_loss",
    "g_nonsaturating_loss",
    "kl_loss",
    "kl_per_element",
    "kl_stats",
    "kl_weight",
    "likelihood_mean",
    "mse_per_element",
    "multi_resolution_stft_loss",
    "r1_penalty",
    "reconstruction_nll",
]
