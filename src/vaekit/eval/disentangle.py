"""Disentanglement metrics on data with known factors: DCI, the FactorVAE score and the β-VAE score.

A leaf beside ``eval.metrics`` (which holds MIG and SAP): plain functions of the posterior means ``(N, D)`` and the
factors ``(N, K)`` of a held-out set, using scikit-learn for the regressors and classifiers. The FactorVAE and
β-VAE scores need samples that share one factor's value; on a fixed data set (not a simulator) they are drawn from
the samples whose discretised factor equals the chosen value, as disentanglement_lib does for dSprites. All
scores are in [0, 1]; each function takes a seed and is deterministic.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from vaekit.eval.metrics import discretize


def _arrays(latents: Any, factors: Any, bins: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    v = discretize(np.asarray(factors, dtype=np.float64).reshape(len(factors), -1), bins)
    return z, v


# ----------------------------------------------------------------------------------------------- DCI
def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """Disentanglement and completeness (Eastwood & Williams 2018) from a ``(D, K)`` importance matrix R.

    D = Σ_j ρ_j (1 − H_K(P_j·)), ρ_j = Σ_k R_jk / Σ R; C = mean_k (1 − H_D(P̃_·k)); entropies in base K and D.
    """
    r = np.abs(np.asarray(importance, dtype=np.float64)) + 1e-11
    d, k = r.shape
    p_code = r / r.sum(1, keepdims=True)
    h_code = -(p_code * np.log(p_code)).sum(1) / math.log(k) if k > 1 else np.zeros(d)
    rho = r.sum(1) / r.sum()
    p_factor = r / r.sum(0, keepdims=True)
    h_factor = -(p_factor * np.log(p_factor)).sum(0) / math.log(d) if d > 1 else np.zeros(k)
    return float((rho * (1 - h_code)).sum()), float((1 - h_factor).mean())


def dci(latents: Any, factors: Any, seed: int = 0, bins: int = 20, train_fraction: float = 0.8,
        n_estimators: int = 50) -> dict[str, Any]:
    """DCI with gradient-boosted trees per factor (disentanglement_lib's choice): importances → D and C;
    informativeness = mean test accuracy of predicting each discretised factor.

    Returns ``{"dci_disentanglement", "dci_completeness", "dci_informativeness", "importance": (D, K) list}``.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    z, v = _arrays(latents, factors, bins)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(z))
    cut = int(len(z) * train_fraction)
    tr, te = order[:cut], order[cut:]
    importance = np.zeros((z.shape[1], v.shape[1]))
    accuracy = []
    for k in range(v.shape[1]):
        if len(np.unique(v[tr, k])) < 2:  # a constant factor: nothing to explain
            continue
        with warnings.catch_warnings():  # "more classes than half the samples" on small sets: the score says so
            warnings.simplefilter("ignore", UserWarning)
            model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed).fit(z[tr], v[tr, k])
        importance[:, k] = model.feature_importances_
        accuracy.append(model.score(z[te], v[te, k]) if len(te) else float("nan"))
    kept = importance[:, importance.sum(0) > 0]
    dis, comp = dci_from_importance(kept) if kept.size else (float("nan"), float("nan"))
    return {"dci_disentanglement": dis, "dci_completeness": comp,
            "dci_informativeness": float(np.mean(accuracy)) if accuracy else float("nan"),
            "importance": importance.tolist()}


# -------------------------------------------------------------------------------- fixed-factor batches
def _fixed_factor_batch(v: np.ndarray, k: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """Indices of ``size`` samples sharing factor k's (discretised) value, drawn from a random sample's value."""
    value = v[rng.integers(len(v)), k]
    pool = np.flatnonzero(v[:, k] == value)
    if len(pool) < 2:
        return None
    return rng.choice(pool, size=size, replace=len(pool) < size)


def factor_vae_score(latents: Any, factors: Any, seed: int = 0, bins: int = 20, batch: int = 64,
                     votes: int = 800, collapsed_std: float = 0.05) -> dict[str, Any]:
    """FactorVAE score (Kim & Mnih 2018): latents scaled by their std over the data; per vote a factor k is fixed
    over a batch, the latent with the least variance votes for k; the majority-vote classifier's accuracy on
    held-out votes (half of them). Collapsed latents (std < ``collapsed_std``) take no part."""
    z, v = _arrays(latents, factors, bins)
    rng = np.random.default_rng(seed)
    std = z.std(0)
    active = std >= collapsed_std
    if not active.any():
        return {"factor_vae_score": float("nan"), "active_dims": 0}
    zn = z[:, active] / std[active]
    usable = [k for k in range(v.shape[1]) if len(np.unique(v[:, k])) > 1]
    pairs = []
    for _ in range(votes):
        k = usable[rng.integers(len(usable))]
        idx = _fixed_factor_batch(v, k, batch, rng)
        if idx is not None:
            pairs.append((int(np.argmin(zn[idx].var(0))), k))
    pairs_arr = np.array(pairs)
    half = len(pairs_arr) // 2
    train, test = pairs_arr[:half], pairs_arr[half:]
    counts = np.zeros((zn.shape[1], v.shape[1]), dtype=np.int64)
    np.add.at(counts, (train[:, 0], train[:, 1]), 1)
    vote_of = counts.argmax(1)
    accuracy = float((vote_of[test[:, 0]] == test[:, 1]).mean()) if len(test) else float("nan")
    return {"factor_vae_score": accuracy, "active_dims": int(active.sum())}


def beta_vae_score(latents: Any, factors: Any, seed: int = 0, bins: int = 20, batch: int = 64,
                   points: int = 600) -> dict[str, Any]:
    """β-VAE score (Higgins et al. 2017): per point a factor k is fixed over ``batch`` pairs of samples; the
    mean |z1 − z2| of the pairs is the feature and k the label; a logistic regression's held-out accuracy."""
    from sklearn.linear_model import LogisticRegression

    z, v = _arrays(latents, factors, bins)
    rng = np.random.default_rng(seed)
    usable = [k for k in range(v.shape[1]) if len(np.unique(v[:, k])) > 1]
    features, labels = [], []
    for _ in range(points):
        k = usable[rng.integers(len(usable))]
        value = v[rng.integers(len(v)), k]
        pool = np.flatnonzero(v[:, k] == value)
        if len(pool) < 2:
            continue
        a, b = rng.choice(pool, size=batch), rng.choice(pool, size=batch)
        features.append(np.abs(z[a] - z[b]).mean(0))
        labels.append(k)
    x, y = np.array(features), np.array(labels)
    half = len(x) // 2
    if len(np.unique(y[:half])) < 2:
        return {"beta_vae_score": float("nan")}
    clf = LogisticRegression(max_iter=2000).fit(x[:half], y[:half])
    return {"beta_vae_score": float(clf.score(x[half:], y[half:]))}
