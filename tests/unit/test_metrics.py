"""Evaluation metrics against independent references: hand formulas, numpy, torch.distributions, the lpips package.

Every network here (LPIPS trunk, FID feature extractor) has random weights: the tests check the arithmetic around
the network, not the pretrained scores.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

from vaekit.eval import metrics as M


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("kind", ["bce", "gaussian", "mse", "l1"])
def test_log_likelihood_matches_torch_distributions(kind: str) -> None:
    g = _gen()
    x = torch.rand(3, 2, 4, 4, generator=g)
    recon = torch.randn(3, 2, 4, 4, generator=g)
    logvar = torch.tensor(-0.7)
    if kind == "bce":
        x = x.round()
        ref = D.Bernoulli(logits=recon).log_prob(x)
    elif kind == "gaussian":
        ref = D.Normal(recon, torch.exp(0.5 * logvar)).log_prob(x)
    elif kind == "mse":
        ref = D.Normal(recon, math.sqrt(0.5)).log_prob(x)
    else:
        ref = D.Laplace(recon, 1.0).log_prob(x)
    got = M.log_likelihood(kind, recon, x, logvar if kind == "gaussian" else None)
    torch.testing.assert_close(got, ref.flatten(1).sum(1), rtol=1e-5, atol=1e-4)


def test_elbo_terms_match_torch_distributions() -> None:
    g = _gen(1)
    x = torch.rand(4, 6, generator=g).round()
    recon = torch.randn(4, 6, generator=g)
    mean, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    terms = M.elbo_terms("bce", recon, x, mean, logvar)
    kl = D.kl_divergence(D.Normal(mean, torch.exp(0.5 * logvar)), D.Normal(0.0, 1.0)).sum(1)
    nll = -D.Bernoulli(logits=recon).log_prob(x).sum(1)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["recon_nll"], nll)
    torch.testing.assert_close(terms["neg_elbo"], nll + kl)


def test_iwae_bound_is_log_mean_exp_of_the_weights() -> None:
    g = _gen(2)
    a, b, c = (torch.randn(5, 3, generator=g, dtype=torch.float64) * 10 for _ in range(3))
    w = (a + b - c).numpy()
    ref = np.log(np.mean(np.exp(w - w.max(0)), 0)) + w.max(0)
    np.testing.assert_allclose(M.iwae_bound(a, b, c).numpy(), ref, rtol=1e-5)


class LinearGaussian(nn.Module):
    """z ~ N(0, I), x | z ~ N(Wz + b, σ²I) with orthogonal columns of W, so the true posterior is diagonal.

    ``exact=True`` encodes with that posterior; otherwise with a deliberately wrong one.
    """

    recon_kind = "gaussian"

    def __init__(self, d_x: int = 6, d_z: int = 3, exact: bool = True) -> None:
        super().__init__()
        g = _gen(3)
        q, _ = torch.linalg.qr(torch.randn(d_x, d_z, generator=g, dtype=torch.float64))
        self.s = torch.tensor([2.0, 0.5, 1.5], dtype=torch.float64)[:d_z]
        self.W = q * self.s.sqrt()  # WᵀW = diag(s)
        self.b = torch.randn(d_x, generator=g, dtype=torch.float64)
        self.sigma2 = 0.3
        self.exact = exact

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var = 1 / (1 + self.s / self.sigma2)  # (d_z,)
        mean = (x.double() - self.b) @ self.W / self.sigma2 * var
        if not self.exact:
            mean, var = mean * 0.5 + 0.3, var * 2.5
        return mean.float(), var.log().float().expand_as(mean)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (z.double() @ self.W.T + self.b).float(), torch.tensor(math.log(self.sigma2))

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma2 * torch.eye(len(self.b), dtype=torch.float64)
        return D.MultivariateNormal(self.b, cov).log_prob(x.double()).float()


def test_iwae_equals_exact_log_likelihood_with_the_true_posterior() -> None:
    model = LinearGaussian(exact=True)
    x = torch.randn(8, 6, generator=_gen(4))
    nll = M.importance_weighted_nll(model, x, k=3, generator=_gen(5))
    torch.testing.assert_close(nll, -model.log_px(x), rtol=1e-4, atol=1e-4)


def test_iwae_tightens_with_k_towards_the_exact_nll() -> None:
    model = LinearGaussian(exact=False)
    x = model.decode(torch.randn(256, 3, generator=_gen(6)))[0] + 0.5 * torch.randn(256, 6, generator=_gen(7))
    exact = -model.log_px(x).mean()
    k1 = M.importance_weighted_nll(model, x, k=1, generator=_gen(8)).mean()
    k64 = M.importance_weighted_nll(model, x, k=64, generator=_gen(8)).mean()
    assert k1 > k64 > exact
    assert (k64 - exact) < 0.2 * (k1 - exact)


def test_bits_per_dim_and_mse_hand_formulas() -> None:
    assert M.bits_per_dim(torch.tensor([784 * math.log(2)]), 784).item() == pytest.approx(1.0)
    pred, x = torch.tensor([[0.0, 1.0], [0.5, 0.5]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(M.mse(pred, x), torch.tensor([0.5, 0.25]))


# ----------------------------------------------------------------------------------------- latents


def test_active_units_kl_per_dim_and_posterior_stats_by_hand() -> None:
    g = _gen(9)
    scales = torch.tensor([1.0, 0.5, 0.01, 0.0])
    mean = torch.randn(500, 4, generator=g) * scales
    logvar = torch.randn(500, 4, generator=g) * 0.1
    variance = mean.numpy().var(0, ddof=1)
    assert M.active_units(mean) == int((variance > 0.01).sum()) == 2
    kl_ref = (0.5 * (mean**2 + logvar.exp() - 1 - logvar)).mean(0)
    torch.testing.assert_close(M.kl_per_dimension(mean, logvar), kl_ref)
    stats = M.posterior_stats(mean, logvar)
    mu, var = mean.double().numpy(), logvar.double().exp().numpy()
    assert stats["posterior_mean_abs"] == pytest.approx(np.abs(mu).mean())
    assert stats["posterior_mean_var"] == pytest.approx(mu.var(0).mean())
    assert stats["posterior_var"] == pytest.approx(var.mean())
    assert stats["aggregate_var"] == pytest.approx(mu.var(0).mean() + var.mean())


def test_mutual_information_matches_torch_distributions() -> None:
    g = _gen(10)
    mean, logvar = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g) * 0.3 - 1
    z = mean + torch.exp(0.5 * logvar) * torch.randn(40, 3, generator=g)
    q = D.Independent(D.Normal(mean.double(), torch.exp(0.5 * logvar.double())), 1)
    log_q_matrix = q.log_prob(z.double()[:, None, :])  # (N_z, N_x): log q(z_i | x_j)
    log_q_agg = torch.logsumexp(log_q_matrix, 1) - math.log(40)
    ref = (-q.entropy()).mean() - log_q_agg.mean()
    assert M.mutual_information(mean, logvar, z=z) == pytest.approx(ref.item(), rel=1e-6)
    # bounded by log N; ~0 (up to Monte Carlo error of E[log q(z)]) when every posterior is the same
    assert M.mutual_information(mean, logvar, generator=_gen(0)) <= math.log(40)
    same = M.mutual_information(torch.zeros(400, 3), torch.zeros(400, 3), generator=_gen(0))
    assert same == pytest.approx(0.0, abs=0.15)


def test_latent_scale_shift_matches_std_and_mean_over_batches() -> None:
    g = _gen(11)
    z = torch.randn(10, 3, 4, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 3
    moments = M.LatentMoments()
    moments.update(z[:4])
    moments.update(z[4:])
    out = moments.result()
    zd = z.double()
    assert out["shift_factor"] == pytest.approx(zd.mean().item())
    assert out["scaling_factor"] == pytest.approx(1 / zd.std(correction=0).item())
    per_channel = zd.transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(out["shift_factor_per_channel"], per_channel.mean(1).numpy())
    np.testing.assert_allclose(
        out["scaling_factor_per_channel"], 1 / per_channel.std(1, correction=0).numpy()
    )


# ----------------------------------------------------------------------------------------- images


def test_psnr_is_ten_log10_of_inverse_mse_per_sample() -> None:
    g = _gen(12)
    x = torch.rand(3, 1, 8, 8, generator=g)
    y = (x + 0.1 * torch.randn(3, 1, 8, 8, generator=g)).clamp(0, 1)
    ref = 10 * torch.log10(1 / (x - y).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(M.psnr(y, x), ref)
    clip = torch.rand(2, 1, 3, 8, 8, generator=g)
    ref_clip = 10 * torch.log10(1 / (clip - clip * 0.9).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(M.psnr(clip * 0.9, clip), ref_clip)


def test_ssim_of_constant_images_is_the_luminance_formula() -> None:
    a, b = 0.3, 0.7
    c1 = (0.01 * 1.0) ** 2
    ref = (2 * a * b + c1) / (a**2 + b**2 + c1)
    x, y = torch.full((2, 1, 16, 16), a), torch.full((2, 1, 16, 16), b)
    torch.testing.assert_close(M.ssim(x, y), torch.full((2,), ref))
    noisy = torch.rand(2, 3, 16, 16, generator=_gen(13))
    torch.testing.assert_close(M.ssim(noisy, noisy), torch.ones(2))
    clips = torch.rand(2, 1, 3, 16, 16, generator=_gen(14))  # video: mean over frames
    torch.testing.assert_close(M.ssim(clips, clips), torch.ones(2))


def test_ms_ssim_formula_on_large_images_and_refusal_on_small_ones() -> None:
    a, b = 0.3, 0.7
    c1 = (0.01 * 1.0) ** 2
    ref = ((2 * a * b + c1) / (a**2 + b**2 + c1)) ** 0.1333  # contrast-structure terms are 1 for flat images
    x, y = torch.full((1, 1, 176, 176), a), torch.full((1, 1, 176, 176), b)
    torch.testing.assert_close(M.ms_ssim(x, y), torch.full((1,), ref))
    with pytest.raises(ValueError, match="at least 161 px"):
        M.ms_ssim(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


def test_lpips_matches_the_lpips_package_on_the_same_random_trunk() -> None:
    torch.manual_seed(0)
    net = M.build_lpips("alex", pretrained=False)  # random trunk: tests only
    g = _gen(15)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    ref = net.distance(x * 2 - 1, y * 2 - 1).flatten()  # lpips.LPIPS expects [-1, 1]
    torch.testing.assert_close(M.lpips_distance(x, y, net), ref)
    assert M.lpips_distance(x, x, net).abs().max() < 1e-6
    gray = torch.rand(2, 1, 32, 32, generator=g)
    torch.testing.assert_close(
        M.lpips_distance(gray, x[:, :1], net),
        net.distance(gray.expand(-1, 3, -1, -1) * 2 - 1, x[:, :1].expand(-1, 3, -1, -1) * 2 - 1).flatten(),
    )
    with pytest.raises(ValueError, match="at least 32 px"):
        M.lpips_distance(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), net)


class TinyFeatures(nn.Module):
    """A small random feature extractor standing in for InceptionV3 (the score is then not a published FID)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def _frechet_numpy(f1: np.ndarray, f2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) with the trace of the root from eigenvalues (no scipy)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum()
    )


def test_fid_with_a_custom_feature_extractor_matches_the_numpy_frechet_distance() -> None:
    feature = TinyFeatures()
    g = _gen(16)
    real = torch.rand(40, 1, 16, 16, generator=g)
    fake = torch.rand(40, 1, 16, 16, generator=g) * 0.7 + 0.2
    got = M.fid(real, fake, feature=feature, batch_size=16)
    with torch.no_grad():
        f_real = feature(real.expand(-1, 3, -1, -1)).double().numpy()
        f_fake = feature(fake.expand(-1, 3, -1, -1)).double().numpy()
    assert got == pytest.approx(_frechet_numpy(f_real, f_fake), rel=1e-3, abs=1e-6)
    assert M.fid(real, real, feature=feature) == pytest.approx(0.0, abs=1e-4)


def test_fid_without_inception_weights_is_one_line_naming_the_file(tmp_path) -> None:
    from vaekit.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="InceptionV3 weights at .*missing.pth") as info:
        M.build_fid(weights_path=tmp_path / "missing.pth")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- audio


def test_si_sdr_matches_the_zero_mean_projection_formula() -> None:
    g = _gen(17)
    s = torch.randn(3, 2, 400, generator=g, dtype=torch.float64)
    est = 0.5 * s + 0.3 * torch.randn(3, 2, 400, generator=g, dtype=torch.float64) + 0.2
    sn, en = s.numpy() - s.numpy().mean(-1, keepdims=True), est.numpy() - est.numpy().mean(-1, keepdims=True)
    alpha = (en * sn).sum(-1, keepdims=True) / (sn**2).sum(-1, keepdims=True)
    ref = 10 * np.log10(((alpha * sn) ** 2).sum(-1) / ((alpha * sn - en) ** 2).sum(-1))
    np.testing.assert_allclose(M.si_sdr(est.float(), s.float()).numpy(), ref.mean(1), rtol=1e-4)


def test_mrstft_distance_reuses_the_spectral_objective_and_fits_short_clips() -> None:
    from vaekit.objectives.spectral import multi_resolution_stft_loss

    g = _gen(18)
    x, y = torch.randn(2, 1, 3000, generator=g), torch.randn(2, 1, 3000, generator=g)
    ref = multi_resolution_stft_loss(x, y, [1024, 2048, 512], [120, 240, 50], [600, 1200, 240])
    torch.testing.assert_close(M.mrstft_distance(x, y), ref)
    short = torch.randn(2, 1, 600, generator=g)  # 2048/2 ≥ 600: sizes halve to 256/512/128
    ref_short = multi_resolution_stft_loss(short, short * 0.5, [256, 512, 128], [30, 60, 12], [150, 300, 60])
    torch.testing.assert_close(M.mrstft_distance(short, short * 0.5), ref_short)
    assert M.mrstft_distance(x, x).abs().max() < 1e-6


def test_log_spectral_distance_matches_a_numpy_stft() -> None:
    g = _gen(19)
    x, y = torch.randn(2, 2, 1000, generator=g), torch.randn(2, 2, 1000, generator=g)
    n, hop = 256, 64
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann, like torch.hann_window

    def power(sig: np.ndarray) -> np.ndarray:
        frames = np.stack([sig[..., i : i + n] * window for i in range(0, sig.shape[-1] - n + 1, hop)], -2)
        return np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (B, C, frames, F)

    diff = 10 * np.log10(power(y.double().numpy()) + 1e-10) - 10 * np.log10(power(x.double().numpy()) + 1e-10)
    ref = np.sqrt((diff**2).mean(-1)).mean(-1).mean(-1)
    np.testing.assert_allclose(
        M.log_spectral_distance(x, y, fft_size=n, hop_size=hop).numpy(), ref, rtol=1e-4
    )
    assert M.log_spectral_distance(x, x).abs().max() < 1e-4


# ----------------------------------------------------------------------------------------- tags


def test_multilabel_scores_match_numpy_counts_ranks_and_mann_whitney() -> None:
    g = _gen(20)
    target = (torch.rand(60, 4, generator=g) < torch.tensor([0.3, 0.5, 0.1, 0.0])).float()
    probs = (0.4 * target + 0.6 * torch.rand(60, 4, generator=g)).clamp(0, 1)
    out = M.multilabel_scores(probs, target)
    p, t = probs.numpy().astype(np.float64), target.numpy().astype(bool)
    pred = p >= 0.5
    tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    np.testing.assert_allclose(out["f1_per_label"], f1, rtol=1e-5)
    assert out["f1_macro"] == pytest.approx(f1.mean(), rel=1e-5)
    assert out["f1_micro"] == pytest.approx(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()), rel=1e-5)
    aps, aucs = [], []
    for j in range(4):
        if not t[:, j].any():
            continue  # label 3 never occurs: left out of mAP and AUROC
        order = np.argsort(-p[:, j])
        hits = t[order, j]
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        aps.append(precision_at_hit.mean())
        pos, neg = p[t[:, j], j], p[~t[:, j], j]
        aucs.append((pos[:, None] > neg[None, :]).mean())
    assert out["map"] == pytest.approx(np.mean(aps), rel=1e-5)
    assert out["auroc"] == pytest.approx(np.mean(aucs), rel=1e-5)


# ----------------------------------------------------------------------------------------- factors


def _full_grid() -> np.ndarray:
    return np.array(list(itertools.product(range(3), range(5), [0.1, 0.4, 0.9, 1.3])), dtype=np.float64)


def test_discrete_mutual_info_equals_the_entropy_identity() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 300)
    b = (a + rng.integers(0, 2, 300)) % 5

    def h(*cols: np.ndarray) -> float:
        _, counts = np.unique(np.stack(cols, 1), axis=0, return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log(p)).sum())

    assert M.discrete_mutual_info(a, b) == pytest.approx(h(a) + h(b) - h(a, b))
    assert M.entropy(a) == pytest.approx(h(a))


def test_mig_and_sap_are_one_for_a_perfect_code_and_zero_for_a_duplicated_latent() -> None:
    factors = np.repeat(_full_grid(), 2, axis=0)  # every combination twice: factors exactly independent
    perfect = factors[:, [2, 0, 1]] * np.array([3.0, -1.0, 0.5])  # permuted, rescaled, one per factor
    assert M.mig(perfect, factors)["mig"] == pytest.approx(1.0)
    assert M.sap(perfect, factors)["sap"] == pytest.approx(1.0)
    # factor 0 coded by two latents: no gap
    duplicated = np.concatenate([factors[:, :1], factors[:, :1], factors[:, 1:]], 1)
    assert M.mig(duplicated, factors)["mig_per_factor"][0] == pytest.approx(0.0)
    assert M.sap(duplicated, factors)["sap_per_factor"][0] == pytest.approx(0.0)


def test_sap_score_is_the_squared_correlation() -> None:
    rng = np.random.default_rng(1)
    factors = rng.normal(size=(200, 1))
    latents = np.concatenate([factors + rng.normal(size=(200, 1)), rng.normal(size=(200, 1))], 1)
    r2 = [np.corrcoef(latents[:, j], factors[:, 0])[0, 1] ** 2 for j in range(2)]
    assert M.sap(latents, factors)["sap"] == pytest.approx(max(r2) - min(r2))


def test_discretize_keeps_few_values_and_bins_many() -> None:
    values = np.stack([np.tile([0.5, 2.0, 7.0], 20), np.linspace(0, 1, 60)], 1)
    codes = M.discretize(values, bins=20)
    assert set(codes[:, 0]) == {0, 1, 2}
    assert codes[:, 1].min() == 0 and codes[:, 1].max() == 19
    assert np.bincount(codes[:, 1]).tolist() == [3] * 20
