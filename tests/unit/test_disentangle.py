"""Disentanglement metrics on constructed cases whose answer is known: a latent per factor (perfect), latents
that mix every factor, latents that are noise."""

from __future__ import annotations

import numpy as np
import pytest

from vaekit.eval.disentangle import beta_vae_score, dci, dci_from_importance, factor_vae_score


def _factors(n: int = 1500, seed: int = 0) -> np.ndarray:
    """Three independent discrete factors on a grid (like dSprites' scale / position)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 4, n), rng.integers(0, 6, n), rng.integers(0, 5, n)], 1).astype(float)


def test_dci_from_importance_known_matrices() -> None:
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0), abs=1e-6)
    one_code = np.zeros((3, 3))
    one_code[0] = 1.0  # one latent explains every factor: not disentangled, but complete
    assert dci_from_importance(one_code) == pytest.approx((0.0, 1.0), abs=1e-6)
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-6)


def test_dci_of_one_latent_per_factor_is_perfect() -> None:
    v = _factors()
    z = v[:, [2, 0, 1]] + np.random.default_rng(1).normal(0, 0.01, v.shape)  # permuted: order must not matter
    result = dci(z, v, seed=0)
    assert result["dci_disentanglement"] > 0.9
    assert result["dci_completeness"] > 0.9
    assert result["dci_informativeness"] > 0.95


def test_dci_of_mixed_latents_is_lower_and_of_noise_uninformative() -> None:
    v = _factors()
    rng = np.random.default_rng(2)
    mixed = (v - v.mean(0)) / v.std(0) @ rng.normal(size=(3, 3))
    assert dci(mixed, v)["dci_disentanglement"] < 0.6
    noise = rng.normal(size=(len(v), 3))
    assert dci(noise, v)["dci_informativeness"] < 0.4


def test_factor_vae_score_known_answers() -> None:
    v = _factors()
    rng = np.random.default_rng(3)
    assert factor_vae_score(v + rng.normal(0, 0.01, v.shape), v)["factor_vae_score"] == 1.0
    noise = factor_vae_score(rng.normal(size=(len(v), 3)), v)["factor_vae_score"]
    assert noise < 0.6
    collapsed = np.concatenate([v, np.zeros((len(v), 2))], 1)  # two dead latents are ignored
    result = factor_vae_score(collapsed, v)
    assert result["active_dims"] == 3 and result["factor_vae_score"] == 1.0


def test_beta_vae_score_known_answers() -> None:
    v = _factors()
    rng = np.random.default_rng(4)
    assert beta_vae_score(v + rng.normal(0, 0.01, v.shape), v)["beta_vae_score"] > 0.95
    assert beta_vae_score(rng.normal(size=(len(v), 3)), v)["beta_vae_score"] < 0.6
