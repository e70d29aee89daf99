"""Input corruption for denoising training (``loss.denoise``): the encoder sees the corrupted input, the
reconstruction target stays clean."""

from __future__ import annotations

import torch
from torch import Tensor


def corrupt(
    x: Tensor,
    noise_std: float = 0.0,
    mask_rate: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
    keep: Tensor | None = None,
    rescale: bool = False,
) -> Tensor:
    """Add Gaussian noise and zero a random fraction of elements; with ``rescale`` the kept ones are scaled by
    ``1 / (1 - mask_rate)`` as ``nn.Dropout`` does (the input's expected value is unchanged).

    Args:
        x: the clean batch, ``(B, ...)``; left unchanged.
        noise_std: standard deviation of the additive noise.
        mask_rate: probability that each element is zeroed.
        rescale: divide the kept elements by ``1 - mask_rate`` (``nn.Dropout`` on the input).
        generator: optional RNG on ``x``'s device, for reproducible corruption.
        noise, keep: pre-drawn standard-normal noise and keep-mask (the trainer draws them for the global batch
            so that data-parallel runs corrupt exactly as one process would); drawn here when None.

    Returns:
        A new corrupted tensor, or ``x`` itself when both settings are 0.
    """
    if noise_std == 0.0 and mask_rate == 0.0:
        return x
    out = x
    if noise_std > 0.0:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = out + noise_std * noise
    if mask_rate > 0.0:
        if keep is None:
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= mask_rate
        out = out * keep
        if rescale:
            out = out / (1.0 - mask_rate)
    return out
