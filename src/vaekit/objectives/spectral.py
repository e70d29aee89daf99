"""Multi-resolution STFT loss for audio (``loss.spectral``), after Yamamoto et al. 2019 / auraloss.

Definitions follow ``auraloss.freq.MultiResolutionSTFTLoss`` (hann window, ``torch.stft`` with ``center=True``
and reflect padding, magnitudes ``sqrt(clamp(re² + im², eps))``, per resolution
``w_sc·SC + w_log_mag·L1(log|Y|, log|Ŷ|) + w_lin_mag·L1(|Y|, |Ŷ|)``, averaged over resolutions), computed per
sample instead of over the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _magnitude(x: Tensor, fft_size: int, hop_size: int, win_length: int, eps: float) -> Tensor:
    """|STFT| of ``(N, L)`` signals, ``(N, fft_size // 2 + 1, frames)``."""
    window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, fft_size, hop_size, win_length, window, return_complex=True)
    return torch.sqrt(torch.clamp(spec.real.pow(2) + spec.imag.pow(2), min=eps))


def _check_resolution(length: int, fft_size: int, win_length: int) -> None:
    if win_length > fft_size:
        raise ValueError(f"loss.spectral.win_lengths: {win_length} is longer than its fft size {fft_size}")
    if fft_size // 2 >= length:
        raise ValueError(
            f"loss.spectral.fft_sizes: {fft_size} needs clips longer than {fft_size // 2} samples (got {length}); "
            "use smaller fft_sizes/hop_sizes/win_lengths"
        )


def multi_resolution_stft_loss(
    pred: Tensor,
    target: Tensor,
    fft_sizes: list[int],
    hop_sizes: list[int],
    win_lengths: list[int],
    w_sc: float = 1.0,
    w_log_mag: float = 1.0,
    w_lin_mag: float = 0.0,
    eps: float = 1e-7,
) -> Tensor:
    """Per-sample multi-resolution STFT loss, computed in fp32.

    Per resolution: spectral convergence ``‖|Y| − |Ŷ|‖_F / ‖|Y|‖_F`` over the sample's channels and frames, the
    mean absolute difference of log magnitudes and of magnitudes; weighted, summed, averaged over resolutions.

    Differs from auraloss in one convention only: auraloss takes the Frobenius norms of spectral convergence
    over the whole batch, here they are per sample. So ``result[i]`` equals auraloss on sample ``i`` alone, and
    the batch mean equals auraloss on the batch when ``w_sc == 0`` or B == 1 (auraloss's ``eps`` defaults to 1e-8;
    pass the same value to compare).

    Args:
        pred, target: audio, ``(B, C, L)``.
        fft_sizes, hop_sizes, win_lengths: one entry per resolution.
        w_sc, w_log_mag, w_lin_mag: weights of the three terms (a term with weight 0 is not computed).
        eps: floor of the squared magnitude.

    Returns:
        ``(B,)`` losses.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"expected pred and target of the same (B, C, L) shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    batch, channels, length = pred.shape
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred_flat = pred.float().reshape(batch * channels, length)
        target_flat = target.float().reshape(batch * channels, length)
        total = pred.new_zeros(batch, dtype=torch.float32)
        for fft_size, hop_size, win_length in zip(fft_sizes, hop_sizes, win_lengths, strict=True):
            _check_resolution(length, fft_size, win_length)
            x_mag = _magnitude(pred_flat, fft_size, hop_size, win_length, eps).reshape(batch, -1)
            y_mag = _magnitude(target_flat, fft_size, hop_size, win_length, eps).reshape(batch, -1)
            if w_sc:
                total = total + w_sc * torch.linalg.vector_norm(
                    y_mag - x_mag, dim=1
                ) / torch.linalg.vector_norm(y_mag, dim=1)
            if w_log_mag:
                total = total + w_log_mag * (torch.log(x_mag) - torch.log(y_mag)).abs().mean(1)
            if w_lin_mag:
                total = total + w_lin_mag * (x_mag - y_mag).abs().mean(1)
    return total / len(fft_sizes)
