"""Research objectives and priors against independent references: brute-force loops over torch.distributions,
numpy covariances, and the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, Normal

from vaekit.config.load import load_config
from vaekit.errors import ConfigError
from vaekit.models import MLPVAE
from vaekit.models.hvae import HierarchicalVAE
from vaekit.models.priors import VampPrior
from vaekit.objectives import VAEObjective
from vaekit.objectives.iwae import check_iw_memory, iwae_bound
from vaekit.objectives.variants import (
    dip_regularizer,
    factor_discriminator_loss,
    factor_tc,
    log_importance_weight_matrix,
    permute_dims,
    tc_decomposition,
)


def _posterior(b: int = 6, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.3
    z = mean + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g, dtype=torch.float64)
    return z, mean, logvar


# ------------------------------------------------------------------------------------------- β-TCVAE
def test_tc_decomposition_mws_matches_brute_force_densities() -> None:
    z, mean, logvar = _posterior()
    b, d = z.shape
    n = 1000
    mi, tc, dwkl = tc_decomposition(z, mean, logvar, n, "mws")
    std = torch.exp(0.5 * logvar)
    for i in range(b):  # Chen et al. eq. (S4): log q(z) ≈ log 1/(NM) Σ_j q(z_i | x_j)
        per_dim = torch.stack([Normal(mean[j], std[j]).log_prob(z[i]) for j in range(b)])  # (B, D)
        log_qz = torch.logsumexp(per_dim.sum(1), 0) - math.log(n * b)
        log_prod = sum(torch.logsumexp(per_dim[:, k], 0) - math.log(n * b) for k in range(d))
        log_qzx = Normal(mean[i], std[i]).log_prob(z[i]).sum()
        log_pz = Normal(0.0, 1.0).log_prob(z[i]).sum()
        assert float(mi[i]) == pytest.approx(float(log_qzx - log_qz), abs=1e-4)
        assert float(tc[i]) == pytest.approx(float(log_qz - log_prod), abs=1e-4)
        assert float(dwkl[i]) == pytest.approx(float(log_prod - log_pz), abs=1e-4)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_tc_terms_sum_to_the_sampled_kl(estimator: str) -> None:
    z, mean, logvar = _posterior(8, 4, seed=1)
    mi, tc, dwkl = tc_decomposition(z, mean, logvar, 500, estimator)
    std = torch.exp(0.5 * logvar)
    sampled_kl = Normal(mean, std).log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close((mi + tc + dwkl).double(), sampled_kl, atol=1e-4, rtol=0)


def test_stratified_weights_are_a_distribution_over_the_batch() -> None:
    # each row: 1/N for the sample itself, (N−M)/(NM) for one stratum, 1/M for the other M−1 (rows sum to 1)
    w = log_importance_weight_matrix(5, 100).exp()
    torch.testing.assert_close(w.sum(1), torch.ones(5))
    assert float(w[0, 0]) == pytest.approx(1 / 100)


def test_independent_latents_have_small_total_correlation() -> None:
    # posteriors of a factorised aggregate: TC estimate near 0 compared to a strongly correlated set
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(256, 2, generator=g)
    corr = torch.stack([mean[:, 0], mean[:, 0] + 0.01 * mean[:, 1]], 1)
    logvar = torch.full_like(mean, -6.0)
    _, tc_ind, _ = tc_decomposition(mean, mean, logvar, 256, "mws")
    _, tc_cor, _ = tc_decomposition(corr, corr, logvar, 256, "mws")
    assert float(tc_cor.mean()) > float(tc_ind.mean()) + 1.0


# ------------------------------------------------------------------------------------------- DIP-VAE
@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_regularizer_matches_numpy_covariance(kind: str) -> None:
    _, mean, logvar = _posterior(10, 3, seed=2)
    cov = np.cov(mean.numpy(), rowvar=False, bias=True)
    if kind == "ii":
        cov = cov + np.diag(np.exp(logvar.numpy()).mean(0))
    off = cov - np.diag(np.diag(cov))
    expected = 2.0 * (off**2).sum() + 5.0 * ((np.diag(cov) - 1) ** 2).sum()
    assert float(dip_regularizer(mean, logvar, kind, 2.0, 5.0)) == pytest.approx(expected, rel=1e-5)


def test_dip_regularizer_is_zero_for_whitened_means() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    white = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / 500)).T
    assert float(dip_regularizer(white, torch.zeros_like(white), "i", 1.0, 1.0)) == pytest.approx(0.0, abs=1e-8)


# ------------------------------------------------------------------------------------------ FactorVAE
def test_factor_tc_is_the_log_density_ratio_of_the_discriminator() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0])
    d = torch.sigmoid(logits)
    assert float(factor_tc(logits)) == pytest.approx(float(torch.log(d / (1 - d)).mean()), rel=1e-5)


def test_factor_discriminator_loss_matches_bernoulli_nll() -> None:
    joint, perm = torch.tensor([0.5, 2.0]), torch.tensor([-1.0, 0.1])
    expected = 0.5 * (-Bernoulli(logits=joint).log_prob(torch.ones(2)).mean()
                      - Bernoulli(logits=perm).log_prob(torch.zeros(2)).mean())
    assert float(factor_discriminator_loss(joint, perm)) == pytest.approx(float(expected), rel=1e-6)


def test_permute_dims_shuffles_each_dimension_within_the_batch() -> None:
    torch.manual_seed(0)
    z = torch.arange(40.0).view(10, 4)
    p = permute_dims(z)
    for k in range(4):
        assert sorted(p[:, k].tolist()) == z[:, k].tolist()
    assert not torch.equal(p, z)


# -------------------------------------------------------------------------------------- IWAE / MIWAE
def test_iwae_bound_is_log_mean_exp_per_group() -> None:
    log_w = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    iwae = iwae_bound(log_w, k=4, m=1)
    assert float(iwae) == pytest.approx(math.log(np.mean(np.exp([0.0, 1.0, 2.0, 3.0]))))
    miwae = iwae_bound(log_w, k=2, m=2)  # groups (s // k): [0, 1] and [2, 3]
    expected = 0.5 * (math.log((1 + math.e) / 2) + math.log((math.e**2 + math.e**3) / 2))
    assert float(miwae) == pytest.approx(expected)
    assert float(iwae_bound(log_w, k=1, m=4)) == pytest.approx(1.5)  # k=1: the ELBO (mean log-weight)


def test_iwae_objective_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    model = MLPVAE((6,), 2, [8])
    cfg = load_config({"loss": {"variant": "miwae", "iw": {"k": 3, "m": 2}}}).loss
    objective = VAEObjective(cfg)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    noise = torch.randn(4, 6, 2)
    out = model(x, noise=noise)
    loss, terms = objective(x, out, step=0)
    mean, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    log_w = torch.empty(4, 6)
    for i in range(4):
        for s in range(6):
            z = mean[i] + std[i] * noise[i, s]
            logits = model.decode(z[None])[0][0]
            log_w[i, s] = (Bernoulli(logits=logits).log_prob(x[i]).sum() + Normal(0.0, 1.0).log_prob(z).sum()
                           - Normal(mean[i], std[i]).log_prob(z).sum())
    groups = log_w.view(4, 2, 3)
    expected = -(torch.logsumexp(groups, -1) - math.log(3)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert objective.samples == 6 and set(terms) >= {"loss", "recon", "kl", "mse"}


def test_iw_memory_check_refuses_k_that_cannot_fit() -> None:
    model = MLPVAE((1, 28, 28), 10, [400])
    need = check_iw_memory(model, (10,), 5, 64, 5, 1, 100.0, torch.device("cpu"))
    assert 0 < need < 100 * 2**20
    with pytest.raises(ConfigError, match=r"loss.iw.k=5000 .* use k <= \d+"):
        check_iw_memory(model, (10,), 5000, 64, 5000, 1, 100.0, torch.device("cpu"))


# ------------------------------------------------------------------------------------------- priors
def test_vampprior_log_prob_matches_mixture_same_family() -> None:
    torch.manual_seed(0)
    model = MLPVAE((5,), 3, [8])
    prior = VampPrior(4, (5,))
    z = torch.randn(7, 3)
    mean, logvar = model.encode(prior.inputs())
    mix = MixtureSameFamily(Categorical(logits=torch.zeros(4)), Independent(Normal(mean, torch.exp(0.5 * logvar)), 1))
    torch.testing.assert_close(prior.log_prob(z, model.encode), mix.log_prob(z), atol=1e-5, rtol=1e-5)


def test_vampprior_model_reports_sampled_kl() -> None:
    from vaekit.models import build_model

    cfg = load_config({"model": {"arch": "mlp", "hidden_dims": [8], "latent_dim": 2,
                                 "prior": {"kind": "vampprior", "pseudo_inputs": 3}}})
    model = build_model(cfg.model, (4,), "bce")
    x = torch.rand(5, 4)
    out = model(x)
    log_pz = model.prior.log_prob(out.z, model.encode)
    torch.testing.assert_close(out.info["log_pz"], log_pz)
    _, terms = VAEObjective(cfg.loss)(x, out, step=0)
    log_qz = Normal(out.mean, torch.exp(0.5 * out.logvar)).log_prob(out.z).sum(1)
    assert float(terms["kl"]) == pytest.approx(float((log_qz - log_pz).mean()), rel=1e-5)
    # the prior travels with the model's config
    from vaekit.models import build_model_from_config

    rebuilt = build_model_from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())


def test_hvae_log_densities_match_torch_distributions() -> None:
    torch.manual_seed(0)
    model = HierarchicalVAE((6,), latent_dim=3, hidden_dims=[8], top_latent_dim=2, top_hidden_dims=[5])
    x = torch.rand(4, 6)
    noise = torch.randn(4, 5)
    out = model(x, noise=noise)
    h1 = model.encoder["z1"](x).chunk(2, -1)
    z1 = h1[0] + torch.exp(0.5 * h1[1]) * noise[:, :3]
    h2 = model.encoder["z2"](z1).chunk(2, -1)
    z2 = h2[0] + torch.exp(0.5 * h2[1]) * noise[:, 3:]
    p1 = model.decoder.z1_from_z2(z2).chunk(2, -1)
    log_q = Normal(h1[0], torch.exp(0.5 * h1[1])).log_prob(z1).sum(1) + Normal(h2[0], torch.exp(0.5 * h2[1])).log_prob(z2).sum(1)
    log_p = Normal(0.0, 1.0).log_prob(z2).sum(1) + Normal(p1[0], torch.exp(0.5 * p1[1])).log_prob(z1).sum(1)
    torch.testing.assert_close(out.info["log_qz"], log_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.info["log_pz"], log_p, atol=1e-5, rtol=1e-5)
    assert model.sample(3).shape == (3, 6)


# ------------------------------------------------------------------------------------------- config
def test_variant_with_kl_warmup_scales_the_regulariser() -> None:
    cfg = load_config({"loss": {"variant": "dip_vae_i", "kl": {"schedule": "linear", "warmup_steps": 10}}}).loss
    objective = VAEObjective(cfg)
    torch.manual_seed(0)
    model = MLPVAE((4,), 2, [8])
    x = torch.rand(6, 4)
    out = model(x)
    at0, t0 = objective(x, out, step=0)
    at10, t10 = objective(x, out, step=10)
    assert float(t0["kl_weight"]) == 0.0 and float(t10["kl_weight"]) == 1.0
    assert float(at0) == pytest.approx(float(t0["recon"]), rel=1e-6)
    assert float(at10) == pytest.approx(float(t10["recon"] + t10["kl"] + t10["dip"]), rel=1e-5)


@pytest.mark.parametrize(("tree", "message"), [
    ({"loss": {"variant": "factor_vae"}}, "factor_optim: required"),
    ({"loss": {"variant": "iwae", "iw": {"m": 2}}}, "loss.iw.m"),
    ({"loss": {"variant": "beta_tcvae", "kl": {"schedule": "capacity"}}}, "capacity"),
    ({"loss": {"variant": "dip_vae_i", "adversarial": {"weight": 0.1}}}, "adversarial"),
    ({"model": {"arch": "diffusers", "pretrained": "x", "prior": {"kind": "vampprior"}}}, "vampprior"),
])
def test_research_settings_that_cannot_work_fail_in_one_line(tree: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(tree)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["vampprior", "hvae"])
def test_eval_importance_weighted_nll_uses_the_models_own_densities(arch: str) -> None:
    from vaekit.eval.metrics import importance_weighted_nll
    from vaekit.models import build_model

    model_cfg = ({"arch": "mlp", "hidden_dims": [8], "latent_dim": 2, "prior": {"kind": "vampprior", "pseudo_inputs": 3}}
                 if arch == "vampprior" else {"arch": "hvae", "hidden_dims": [8], "latent_dim": 3,
                                              "top": {"latent_dim": 2, "hidden_dims": [4]}})
    cfg = load_config({"model": model_cfg, "loss": {"variant": "iwae", "iw": {"k": 4}}})
    torch.manual_seed(0)
    model = build_model(cfg.model, (6,), "bce").eval()
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    nll = importance_weighted_nll(model, x, 4, torch.Generator().manual_seed(1), "bce")
    g = torch.Generator().manual_seed(1)
    latent = model.latent_shape_for((6,))
    noise = torch.stack([torch.randn((5, *latent), generator=g) for _ in range(4)], 1)  # (B, k, latent)
    loss, _ = VAEObjective(cfg.loss)(x, model(x, noise=noise), step=0)
    assert float(nll.mean()) == pytest.approx(float(loss), rel=1e-5)
