"""Objectives: reconstruction likelihoods, KL (+ schedules, free bits), denoising corruption, perceptual,
spectral and adversarial losses as plain tested functions, combined by ``VAEObjective`` and
``DiscriminatorObjective``. ``terms`` declares which terms each produces (torch-free).

Names are imported on first use, so ``vaekit.objectives.terms`` stays importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "adaptive_weight": "adversarial",
    "d_hinge_loss": "adversarial",
    "d_nonsaturating_loss": "adversarial",
    "feature_matching_loss": "adversarial",
    "g_hinge_loss": "adversarial",
    "g_nonsaturating_loss": "adversarial",
    "r1_penalty": "adversarial",
    "corrupt": "denoise",
    "active_units": "kl",
    "kl_loss": "kl",
    "kl_per_element": "kl",
    "kl_stats": "kl",
    "DiscriminatorObjective": "objective",
    "VAEObjective": "objective",
    "MissingWeightsError": "perceptual",
    "PerceptualLoss": "perceptual",
    "check_perceptual_weights": "perceptual",
    "likelihood_mean": "reconstruction",
    "mse_per_element": "reconstruction",
    "reconstruction_nll": "reconstruction",
    "capacity": "schedules",
    "kl_weight": "schedules",
    "multi_resolution_stft_loss": "spectral",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vaekit.objectives.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vaekit.objectives' has no attribute {name!r}")
