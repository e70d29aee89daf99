"""Evaluation metrics: plain functions on tensors, each tested against an independent reference.

Owns the numbers `evaluate` reports. Likelihood terms reuse ``objectives/`` (``reconstruction_nll``, the KL);
image, audio and multi-label scores come from torchmetrics; LPIPS from the ``lpips`` package through
``objectives.perceptual`` (local weights only). Per-sample functions return ``(B,)`` tensors so a caller can
average over a whole split; set-level functions (active units, mutual information, MIG, SAP, FID, mAP, AUROC)
take everything at once.

Units: nats per sample unless a name says otherwise (``*_bpd``: bits per data dimension; PSNR, SI-SDR and LSD
in dB). Images and video frames are compared in [0, 1]; audio in [-1, 1].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from vaekit.errors import MissingWeightsError
from vaekit.objectives.kl import active_units as _active_units
from vaekit.objectives.kl import kl_per_element, kl_stats
from vaekit.objectives.reconstruction import reconstruction_nll
from vaekit.objectives.spectral import multi_resolution_stft_loss

LOG_2PI = math.log(2 * math.pi)

# ----------------------------------------------------------------------------------------- likelihood


def log_likelihood(kind: str, recon: Tensor, x: Tensor, recon_logvar: Tensor | None = None) -> Tensor:
    """log p(x | z) per sample in nats, ``(B,)``, from the decoder's likelihood parameters.

    ``bce`` and ``gaussian`` are the training NLL itself (`reconstruction_nll`). ``mse`` and ``l1`` are read as
    the densities whose NLL differs from the training loss by a constant: N(x; x̂, ½) (NLL = Σ(x−x̂)² + D·½·log π)
    and Laplace(x; x̂, 1) (NLL = Σ|x−x̂| + D·log 2), so that ELBO and IWAE bounds are proper (comparable) nats.
    """
    nll = reconstruction_nll(kind, recon, x, recon_logvar)
    dims = x[0].numel()
    if kind == "mse":
        nll = nll + dims * 0.5 * math.log(math.pi)
    elif kind == "l1":
        nll = nll + dims * math.log(2.0)
    return -nll


def elbo_terms(
    kind: str, recon: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, recon_logvar: Tensor | None = None
) -> dict[str, Tensor]:
    """The negative ELBO and its two terms per sample, ``(B,)`` each, in nats.

    Args:
        kind: the likelihood (``loss.recon``); see `log_likelihood` for ``mse``/``l1``.
        recon: the decoder's output for one posterior sample z ~ q(z|x) (logits for ``bce``).
        x: the data ``(B, ...)``.
        mean, logvar: the posterior ``(B, *latent)``.

    Returns:
        ``{"recon_nll": −log p(x|z), "kl": KL(q(z|x) ‖ N(0, I)), "neg_elbo": their sum}``.
    """
    recon_nll = -log_likelihood(kind, recon, x, recon_logvar)
    kl = kl_per_element(mean, logvar).flatten(1).sum(1)
    return {"recon_nll": recon_nll, "kl": kl, "neg_elbo": recon_nll + kl}


def iwae_bound(log_px_z: Tensor, log_pz: Tensor, log_qz_x: Tensor) -> Tensor:
    """The importance-weighted bound on log p(x) (Burda et al. 2016): ``logsumexp_k(w_k) − log k``.

    Args:
        log_px_z, log_pz, log_qz_x: ``(k, B)`` log-densities of k samples z_k ~ q(z|x).

    Returns:
        ``(B,)`` lower bounds on log p(x) in nats.
    """
    log_w = log_px_z + log_pz - log_qz_x  # (k, B)
    return torch.logsumexp(log_w.double(), 0).float() - math.log(log_w.shape[0])


@torch.no_grad()
def importance_weighted_nll(
    model: nn.Module, x: Tensor, k: int, generator: torch.Generator | None = None, kind: str | None = None
) -> Tensor:
    """−IWAE_k, an upper bound on −log p(x) that tightens as k grows, per sample ``(B,)`` in nats.

    Draws k posterior samples per input (one decode of the batch each) from ``generator``.
    """
    if k < 1:
        raise ValueError(f"importance-weighted NLL needs k >= 1 samples (got {k})")
    kind = kind or model.recon_kind
    if has_own_densities(model):
        return -iwae_bound(*sampled_log_densities(model, x, k, generator, kind))
    mean, logvar = model.encode(x)
    mean, logvar = mean.float(), logvar.float()
    std = torch.exp(0.5 * logvar)
    terms = []
    for _ in range(k):
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + std * eps
        recon, recon_logvar = model.decode(z)
        log_px_z = log_likelihood(kind, recon, x, recon_logvar)
        log_pz = (-0.5 * (z.pow(2) + LOG_2PI)).flatten(1).sum(1)
        log_qz = (-0.5 * (eps.pow(2) + LOG_2PI + logvar)).flatten(1).sum(1)
        terms.append((log_px_z, log_pz, log_qz))
    log_px_z, log_pz, log_qz = (torch.stack(t) for t in zip(*terms, strict=True))
    return -iwae_bound(log_px_z, log_pz, log_qz)


def has_own_densities(model: nn.Module) -> bool:
    """A model whose prior is not N(0, I) or whose posterior has several layers (a VampPrior, ``arch=hvae``):
    its forward reports ``info["log_pz"]`` (and ``["log_qz"]``), which the ELBO and IWAE estimates must use."""
    return getattr(model, "prior", None) is not None or getattr(model, "config", {}).get("arch") == "hvae"


def sampled_log_densities(model: nn.Module, x: Tensor, k: int, generator: torch.Generator | None,
                          kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(log p(x|z), log p(z), log q(z|x))``, each ``(k, B)``, for k draws through the model's own forward."""
    from vaekit.objectives.iwae import latent_log_densities

    latent = tuple(model.latent_shape_for(tuple(x.shape[1:])))
    terms = []
    for _ in range(k):
        eps = torch.randn((x.shape[0], *latent), generator=generator, device=x.device)
        out = model(x, noise=eps)
        log_qz, log_pz = latent_log_densities(out, multi=False)
        terms.append((log_likelihood(kind, out.recon, x, out.recon_logvar), log_pz, log_qz))
    log_px_z, log_pz, log_qz = (torch.stack(t) for t in zip(*terms, strict=True))
    return log_px_z, log_pz, log_qz


def bits_per_dim(nll: Tensor, dims: int) -> Tensor:
    """Nats per sample → bits per data dimension (of a density for continuous data: it can be negative)."""
    return nll / (dims * math.log(2.0))


def mse(mean: Tensor, x: Tensor) -> Tensor:
    """Mean squared error per element of each sample, ``(B,)``, between the likelihood mean and the data."""
    return (mean.float() - x.float()).pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------- latents


def active_units(means: Tensor, threshold: float = 0.01) -> int:
    """Active latent dimensions (Burda et al. 2016): Cov_x(E_q[z|x]) > ``threshold``, over a data set.

    A dimension is a vector entry or a spatial latent's channel (its variance averaged over positions).
    """
    return _active_units(means, threshold)


def kl_per_dimension(mean: Tensor, logvar: Tensor) -> Tensor:
    """Mean KL per latent dimension over the samples, ``(D,)`` nats (per position for spatial latents)."""
    return kl_stats(mean, logvar)["kl_per_dim"]


def posterior_stats(mean: Tensor, logvar: Tensor) -> dict[str, float]:
    """Summary statistics of q(z|x) over a data set, averaged over latent elements.

    Returns:
        ``posterior_mean_abs`` E|μ|; ``posterior_mean_var`` Var_x(μ); ``posterior_var`` E_x[σ²];
        ``aggregate_var`` Var_x(μ) + E_x[σ²], the aggregate posterior's variance (1 matches the prior).
    """
    mu, var = mean.detach().double().flatten(1), logvar.detach().double().exp().flatten(1)
    mu_var = mu.var(0, correction=0).mean().item() if len(mu) > 1 else 0.0
    return {
        "posterior_mean_abs": mu.abs().mean().item(),
        "posterior_mean_var": mu_var,
        "posterior_var": var.mean().item(),
        "aggregate_var": mu_var + var.mean().item(),
    }


def mutual_information(
    mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None, z: Tensor | None = None
) -> float:
    """The minibatch estimate of I(x; z) under q (Hoffman & Johnson 2016; He et al. 2019, ``calc_mi``).

    ``I = E_x E_q[log q(z|x)] − E_z[log q(z)]`` with the aggregate posterior q(z) ≈ (1/N) Σ_j q(z | x_j) over the
    N samples given and one draw z_i ~ q(z | x_i) each. Latents are flattened. Nats.
    """
    mu, logvar = mean.detach().double().flatten(1), logvar.detach().double().flatten(1)  # (N, d)
    n, d = mu.shape
    if z is None:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32).double()
        z = mu + torch.exp(0.5 * logvar) * eps
    z = z.double().flatten(1)
    neg_entropy = (-0.5 * d * LOG_2PI - 0.5 * (1 + logvar).sum(1)).mean()
    dev = z[:, None, :] - mu[None, :, :]  # (N_z, N_x, d)
    log_density = -0.5 * (dev.pow(2) / logvar.exp()[None]).sum(2) - 0.5 * (d * LOG_2PI + logvar.sum(1))[None]
    log_qz = torch.logsumexp(log_density, 1) - math.log(n)
    return (neg_entropy - log_qz.mean()).item()


class LatentMoments:
    """Running per-channel and global moments of latents (fp64) → diffusers-style scale/shift factors.

    Channel = dim 1 (a vector latent's entries, or a spatial latent's channels). ``scaling_factor = 1/std``
    and ``shift_factor = mean`` so that ``(z − shift) · scale`` has zero mean and unit variance.
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def update(self, z: Tensor) -> None:
        """Add a batch of latents ``(B, C, ...)``."""
        flat = z.detach().double().transpose(0, 1).reshape(z.shape[1], -1)  # (C, B·P)
        if self.sum is None:
            self.sum, self.sumsq = flat.sum(1), flat.pow(2).sum(1)
        else:
            self.sum, self.sumsq = self.sum + flat.sum(1), self.sumsq + flat.pow(2).sum(1)
        self.count += flat.shape[1]

    def result(self) -> dict[str, float | list[float]]:
        if self.sum is None or self.sumsq is None:
            raise ValueError("LatentMoments: no latents were added")
        mean_c = self.sum / self.count
        std_c = (self.sumsq / self.count - mean_c.pow(2)).clamp_min(0).sqrt()
        total = self.count * len(self.sum)
        mean = self.sum.sum() / total
        std = (self.sumsq.sum() / total - mean.pow(2)).clamp_min(0).sqrt()
        return {
            "shift_factor": mean.item(),
            "scaling_factor": (1 / std).item(),
            "shift_factor_per_channel": mean_c.tolist(),
            "scaling_factor_per_channel": (1 / std_c).tolist(),
        }


def latent_scale_shift(z: Tensor) -> dict[str, float | list[float]]:
    """`LatentMoments` of one tensor of latents ``(N, C, ...)``."""
    moments = LatentMoments()
    moments.update(z)
    return moments.result()


# ----------------------------------------------------------------------------------------- images

MS_SSIM_MIN_SIZE = 161  # 5 scales of an 11-px window: the coarsest scale must be larger than the window
SSIM_MIN_SIZE = 11
LPIPS_MIN_SIZE = 32  # AlexNet's pooling stack (and squeeze); VGG works from 16


def frames_as_images(x: Tensor) -> Tensor:
    """Images ``(B, C, H, W)`` unchanged; clips ``(B, C, T, H, W)`` → their frames ``(B·T, C, H, W)``."""
    if x.dim() == 5:
        return x.transpose(1, 2).reshape(-1, x.shape[1], *x.shape[3:])
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W) or video (B, C, T, H, W), got {tuple(x.shape)}")
    return x


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per sample (over all its elements), ``(B,)`` dB (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    dims = tuple(range(1, pred.dim()))
    return peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=data_range, reduction="none", dim=dims
    )


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM (11-px Gaussian window, σ 1.5) per image or per clip (mean over frames), ``(B,)`` (torchmetrics).

    Computed in fp64: fp32 windowed variances (E[x²] − μ²) of flat regions are off by ~1e-4 in SSIM.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    return _per_sample(structural_similarity_index_measure, pred, target, data_range)


def ms_ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Multi-scale SSIM (5 scales) per image or clip, ``(B,)`` (torchmetrics). Needs sides ≥ 161 px."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    size = min(pred.shape[-2:])
    if size < MS_SSIM_MIN_SIZE:
        raise ValueError(f"ms_ssim needs images of at least {MS_SSIM_MIN_SIZE} px a side (got {size})")
    return _per_sample(multiscale_structural_similarity_index_measure, pred, target, data_range)


def _per_sample(measure: Callable[..., Tensor], pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    """A torchmetrics image measure in fp64 on every frame, averaged per image or clip: ``(B,)``."""
    value = measure(frames_as_images(pred).double(), frames_as_images(target).double(), data_range=data_range,
                    reduction="none")
    return value.float().reshape(pred.shape[0], -1).mean(1)


def build_lpips(net: str = "alex", pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """LPIPS as a frozen `PerceptualLoss` (the ``lpips`` package's linear layers, a torchvision trunk).

    ``pretrained=False`` uses a random trunk (tests only). The trunk's torchvision weights are read from the
    torch hub cache or ``weights_path``; missing → a one-line `MissingWeightsError` saying what to fetch.
    """
    from vaekit.config.schema import PerceptualConfig
    from vaekit.objectives.perceptual import PerceptualLoss

    cfg = PerceptualConfig(
        kind="lpips", net=net, pretrained=pretrained, weights_path=weights_path, frames=1_000
    )
    return PerceptualLoss(cfg)


def lpips_distance(pred: Tensor, target: Tensor, net: nn.Module) -> Tensor:
    """LPIPS per image or clip (mean over all frames), ``(B,)``; inputs in [0, 1], 1 or 3 channels."""
    size = min(pred.shape[-2:])
    if size < LPIPS_MIN_SIZE:
        raise ValueError(f"lpips needs images of at least {LPIPS_MIN_SIZE} px a side (got {size})")
    return net(pred.clamp(0, 1), target.clamp(0, 1))


# torch-fidelity's InceptionV3 (the TF-ported FID network), in the torch hub cache under this name.
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path(weights_path: str | Path | None = None) -> Path:
    """Where FID's InceptionV3 weights are read from: ``weights_path``, else the torch hub cache."""
    if weights_path:
        return Path(weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def build_fid(
    feature: nn.Module | None = None, weights_path: str | Path | None = None, reset_real_features: bool = True
) -> nn.Module:
    """A torchmetrics ``FrechetInceptionDistance`` taking float images in [0, 1], any of 1 or 3 channels.

    Args:
        feature: a feature extractor ``(N, 3, H, W) float [0, 1] -> (N, F)`` replacing InceptionV3 (tests use a
            small random one: the score is then not comparable with published FIDs).
        weights_path: InceptionV3 weights (default: the torch hub cache); never downloaded.
        reset_real_features: False keeps the real images' statistics across ``reset()`` (one real set, two fakes).
    """
    import importlib.util

    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is not None:
        metric = FrechetInceptionDistance(
            feature=feature, normalize=True, reset_real_features=reset_real_features
        )
    else:
        if importlib.util.find_spec("torch_fidelity") is None:
            raise MissingWeightsError("fid needs torch-fidelity for InceptionV3: pip install 'vaekit[fid]'")
        path = inception_weights_path(weights_path)
        if not path.is_file():
            raise MissingWeightsError(
                f"fid needs torch-fidelity's InceptionV3 weights at {path} (not found); vaekit does not download "
                f"them. Fetch {INCEPTION_URL} into {path.parent} (the torch hub cache) or pass fid_weights=<file>"
            )
        metric = FrechetInceptionDistance(
            feature=2048,
            normalize=True,
            feature_extractor_weights_path=str(path),
            reset_real_features=reset_real_features,
        )
    return metric


def fid_update(metric: nn.Module, images: Tensor, real: bool) -> None:
    """Add images or clips in [0, 1] (frames folded into the batch, gray repeated to RGB) to a FID metric."""
    frames = frames_as_images(images).float().clamp(0, 1)
    metric.update(frames.expand(-1, 3, -1, -1).contiguous(), real=real)


def fid(real: Tensor, fake: Tensor, feature: nn.Module | None = None, batch_size: int = 64) -> float:
    """Fréchet distance between the feature statistics of two image sets (Heusel et al. 2017)."""
    metric = build_fid(feature)
    for start in range(0, len(real), batch_size):
        fid_update(metric, real[start : start + batch_size], real=True)
    for start in range(0, len(fake), batch_size):
        fid_update(metric, fake[start : start + batch_size], real=False)
    return float(metric.compute())


# ----------------------------------------------------------------------------------------- audio


def si_sdr(pred: Tensor, target: Tensor) -> Tensor:
    """Scale-invariant SDR (Le Roux et al. 2019, zero-mean) per clip, mean over channels, ``(B,)`` dB."""
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    return scale_invariant_signal_distortion_ratio(pred.float(), target.float(), zero_mean=True).mean(1)


def _fit_resolutions(length: int, sizes: tuple[list[int], list[int], list[int]]) -> tuple[list[int], ...]:
    """Halve every FFT/hop/window size until the longest FFT fits the clip (fft/2 < length)."""
    fft, hop, win = (list(s) for s in sizes)
    while max(fft) // 2 >= length and min(fft) > 8:
        fft, hop, win = [f // 2 for f in fft], [max(1, h // 2) for h in hop], [w // 2 for w in win]
    return fft, hop, win


def mrstft_distance(
    pred: Tensor,
    target: Tensor,
    fft_sizes: list[int] | None = None,
    hop_sizes: list[int] | None = None,
    win_lengths: list[int] | None = None,
) -> Tensor:
    """Multi-resolution STFT distance per clip, ``(B,)`` (``objectives.spectral``: spectral convergence + log-mag
    L1, averaged over resolutions). Defaults are ``loss.spectral``'s sizes, halved until they fit short clips."""
    sizes = (fft_sizes or [1024, 2048, 512], hop_sizes or [120, 240, 50], win_lengths or [600, 1200, 240])
    fft, hop, win = _fit_resolutions(pred.shape[-1], sizes)
    return multi_resolution_stft_loss(pred, target, fft, hop, win)


def log_spectral_distance(
    pred: Tensor, target: Tensor, fft_size: int = 512, hop_size: int = 128, eps: float = 1e-10
) -> Tensor:
    """Log-spectral distance per clip, ``(B,)`` dB: per frame √(mean_f (10·log10 P − 10·log10 P̂)²), averaged
    over frames and channels. Power spectra of Hann-windowed frames (no padding); ``fft_size`` shrinks to the
    largest power of two that fits a short clip."""
    length = pred.shape[-1]
    while fft_size > length and fft_size > 8:
        fft_size, hop_size = fft_size // 2, max(1, hop_size // 2)
    batch = pred.shape[0]
    window = torch.hann_window(fft_size, device=pred.device, dtype=torch.float32)

    def power(x: Tensor) -> Tensor:
        spec = torch.stft(
            x.float().reshape(-1, length),
            fft_size,
            hop_size,
            window=window,
            center=False,
            return_complex=True,
        )
        return spec.abs().pow(2)  # (B·C, F, frames)

    diff = 10 * torch.log10(power(target) + eps) - 10 * torch.log10(power(pred) + eps)
    per_frame = diff.pow(2).mean(1).sqrt()  # (B·C, frames)
    return per_frame.mean(1).reshape(batch, -1).mean(1)


# ----------------------------------------------------------------------------------------- tags


def multilabel_scores(
    probs: Tensor, target: Tensor, threshold: float = 0.5
) -> dict[str, float | list[float]]:
    """F1 at ``threshold`` (per label, micro, macro), mean average precision and macro AUROC (torchmetrics).

    Args:
        probs: predicted probabilities ``(N, L)``; target: ``{0, 1}`` ``(N, L)``.

    Returns:
        ``f1_per_label`` (labels never present nor predicted score 0), ``f1_micro``, ``f1_macro``; ``map`` averages
        AP over labels with at least one positive, ``auroc`` over labels with both classes (NaN when none).
    """
    from torchmetrics.functional.classification import (
        multilabel_auroc,
        multilabel_average_precision,
        multilabel_f1_score,
    )

    probs, target = probs.float().flatten(1), target.flatten(1).round().long()
    labels = probs.shape[1]
    f1 = {
        avg: multilabel_f1_score(probs, target, labels, threshold=threshold, average=avg)
        for avg in ("none", "micro", "macro")
    }
    positives = target.sum(0)
    has_pos = positives > 0
    has_both = has_pos & (positives < target.shape[0])
    nan = float("nan")
    with warnings.catch_warnings():  # labels without positives/negatives are masked out below
        warnings.filterwarnings("ignore", category=UserWarning, module="torchmetrics")
        ap = multilabel_average_precision(probs, target, labels, average="none")
        auc = multilabel_auroc(probs, target, labels, average="none")
    return {
        "f1_per_label": f1["none"].tolist(),
        "f1_micro": f1["micro"].item(),
        "f1_macro": f1["macro"].item(),
        "map": ap[has_pos].mean().item() if has_pos.any() else nan,
        "auroc": auc[has_both].mean().item() if has_both.any() else nan,
    }


# ----------------------------------------------------------------------------------------- factors


def discretize(values: np.ndarray, bins: int = 20) -> np.ndarray:
    """Integer codes per column of ``(N, K)``: a column with ≤ ``bins`` distinct values keeps them (as indices),
    others are cut into ``bins`` equal-width bins (disentanglement_lib's histogram discretisation)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    codes = np.zeros(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        column = values[:, j]
        distinct = np.unique(column)
        if len(distinct) <= bins:
            codes[:, j] = np.searchsorted(distinct, column)
        else:
            edges = np.histogram_bin_edges(column, bins)
            codes[:, j] = np.digitize(column, edges[1:-1])
    return codes


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats between two integer code vectors, from their contingency table."""
    _, a_idx = np.unique(a, return_inverse=True)
    _, b_idx = np.unique(b, return_inverse=True)
    joint = np.zeros((a_idx.max() + 1, b_idx.max() + 1))
    np.add.at(joint, (a_idx, b_idx), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())


def entropy(codes: np.ndarray) -> float:
    """H(codes) in nats."""
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mig(
    latents: Tensor | np.ndarray, factors: Tensor | np.ndarray, bins: int = 20
) -> dict[str, float | list]:
    """Mutual information gap (Chen et al. 2018), the disentanglement_lib estimator.

    Latent means and factors are discretised (`discretize`); per factor v_k the gap between the two latents with
    the largest I(z_j; v_k), divided by H(v_k); averaged over factors with H > 0.

    Args:
        latents: posterior means ``(N, D)`` (flattened); factors: ``(N, K)`` ground-truth factors or labels.

    Returns:
        ``{"mig": score in [0, 1], "mig_per_factor": [...]}`` (NaN for a constant factor).
    """
    z = discretize(np.asarray(latents, dtype=np.float64).reshape(len(latents), -1), bins)
    v = discretize(np.asarray(factors, dtype=np.float64).reshape(len(factors), -1), bins)
    per_factor = []
    for k in range(v.shape[1]):
        h = entropy(v[:, k])
        if h <= 0:
            per_factor.append(float("nan"))
            continue
        mi = np.sort([discrete_mutual_info(z[:, j], v[:, k]) for j in range(z.shape[1])])[::-1]
        second = mi[1] if len(mi) > 1 else 0.0
        per_factor.append(float((mi[0] - second) / h))
    valid = [p for p in per_factor if not math.isnan(p)]
    return {"mig": float(np.mean(valid)) if valid else float("nan"), "mig_per_factor": per_factor}


def sap(latents: Tensor | np.ndarray, factors: Tensor | np.ndarray) -> dict[str, float | list]:
    """Separated attribute predictability (Kumar et al. 2018), the continuous-factor form.

    Score matrix S[j, k] = R² of a linear fit of factor k from latent j = Cov(z_j, v_k)² / (Var z_j · Var v_k);
    per factor the gap between its two best latents, averaged over non-constant factors. Every factor is treated
    as ordinal (shapes' ``shape`` index included).
    """
    z = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    v = np.asarray(factors, dtype=np.float64).reshape(len(factors), -1)
    zc, vc = z - z.mean(0), v - v.mean(0)
    cov = zc.T @ vc / len(z)  # (D, K)
    var_z, var_v = (zc**2).mean(0), (vc**2).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(var_z[:, None] > 0, cov**2 / (var_z[:, None] * var_v[None, :]), 0.0)
    per_factor = []
    for k in range(v.shape[1]):
        if var_v[k] <= 0:
            per_factor.append(float("nan"))
            continue
        top = np.sort(score[:, k])[::-1]
        per_factor.append(float(top[0] - (top[1] if len(top) > 1 else 0.0)))
    valid = [p for p in per_factor if not math.isnan(p)]
    return {"sap": float(np.mean(valid)) if valid else float("nan"), "sap_per_factor": per_factor}
