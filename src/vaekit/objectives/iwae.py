"""Importance-weighted bounds: IWAE (Burda et al. 2016) and MIWAE (Rainforth et al. 2018), and their memory cost.

With S = k·m posterior samples per input, the model's output holds ``z`` as ``(B, S, *latent)`` and ``recon`` as
``(B, S, *shape)`` (the k×M layout: sample s belongs to group s // k). Each sample's log-weight is
``log w = log p(x|z) + log p(z) − log q(z|x)``; a group's bound is ``log (1/k) Σ_k w``; MIWAE averages the m groups'
bounds (IWAE: m = 1; k = 1 is the ELBO). Units: nats per sample (data dimensions summed).

Memory: the decoder runs on B·S latents, so its activations (and their gradients) grow S-fold over a plain VAE:
about ``B·S·A·4·2`` bytes for A activation elements per decoded sample (forward values kept for backward + their
gradients, fp32). ``decoder_activation_elements`` measures A; ``check_iw_memory`` refuses a run that cannot fit.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


def standard_normal_logpdf(z: Tensor, latent_dims: int) -> Tensor:
    """log N(z; 0, I) summed over the last ``latent_dims`` dimensions, fp32."""
    z = z.float()
    return (-0.5 * (z * z + LOG_2PI)).flatten(-latent_dims).sum(-1)


def diag_normal_logpdf(z: Tensor, mean: Tensor, logvar: Tensor, latent_dims: int) -> Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last ``latent_dims`` dimensions, fp32 (broadcasts)."""
    z, mean, logvar = z.float(), mean.float(), logvar.float()
    per = -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar))
    return per.flatten(-latent_dims).sum(-1)


def iwae_bound(log_w: Tensor, k: int, m: int = 1) -> Tensor:
    """The (M)IWAE bound per input from log-weights ``(B, k·m)``: mean over the m groups of
    ``logsumexp_k(log w) − log k``. Returns ``(B,)`` (nats; a lower bound of log p(x))."""
    b, s = log_w.shape
    if s != k * m:
        raise ValueError(f"log_w has {s} samples per input, expected k·m = {k}·{m}")
    groups = log_w.view(b, m, k)
    return (torch.logsumexp(groups, dim=-1) - math.log(k)).mean(-1)


def latent_log_densities(out: Any, multi: bool) -> tuple[Tensor, Tensor]:
    """``(log q(z|x), log p(z))`` for each drawn z: ``(B,)``, or ``(B, S)`` with ``multi`` samples. The model's
    own values (``out.info["log_qz"]`` / ``["log_pz"]``: a VampPrior, a hierarchical model) win; otherwise the
    diagonal Gaussian posterior and the N(0, I) prior."""
    info = getattr(out, "info", None) or {}
    dims = out.mean.dim() - 1
    if "log_qz" in info:
        log_qz = info["log_qz"]
    else:
        mean, logvar = (out.mean.unsqueeze(1), out.logvar.unsqueeze(1)) if multi else (out.mean, out.logvar)
        log_qz = diag_normal_logpdf(out.z, mean, logvar, dims)
    log_pz = info["log_pz"] if "log_pz" in info else standard_normal_logpdf(out.z, dims)
    return log_qz.float(), log_pz.float()


def decoder_activation_elements(model: nn.Module, latent_shape: tuple[int, ...]) -> int:
    """Output elements of every decoder submodule for one decoded latent (one forward, no grad, RNG untouched)."""
    total = 0

    def count(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel()

    decoder = getattr(model, "decoder", model)
    hooks = [m.register_forward_hook(count) for m in decoder.modules()]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []):
            model.decode(torch.zeros((1, *latent_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def available_memory_bytes(device: torch.device) -> int:
    """Free GPU memory on CUDA; the available RAM otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**40


def check_iw_memory(model: nn.Module, latent_shape: tuple[int, ...], samples: int, batch: int, k: int, m: int,
                    limit_mb: float | None, device: torch.device) -> int:
    """Estimate the decoder's activation memory for ``batch``·``samples`` decoded latents (fp32 values + grads)
    and raise a one-line ``ConfigError`` when it exceeds ``limit_mb`` (None: the free memory). Returns bytes."""
    per_sample = decoder_activation_elements(model, latent_shape)
    need = per_sample * batch * samples * 4 * 2
    limit = int(limit_mb * 2**20) if limit_mb is not None else available_memory_bytes(device)
    if need > limit:
        fit = max(limit // max(per_sample * batch * 4 * 2 * m, 1), 0)
        raise ConfigError(
            f"loss.iw.k={k} (m={m}): the decoder's activations for {batch}×{samples} samples need about "
            f"{need / 2**20:,.0f} MiB, over the {limit / 2**20:,.0f} MiB available; use k <= {fit} or a smaller "
            "train.batch_size (or set loss.iw.memory_limit_mb)"
        )
    return need
