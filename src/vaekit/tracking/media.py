"""Pictures of what the model does: input-vs-reconstruction grids and prior samples, for every modality."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid


def _to_image_batch(x: torch.Tensor, modality: str, max_frames: int = 8) -> tuple[torch.Tensor, int]:
    """Any batch as images (N, C, H, W) in [0, 1], and how many images make one row of the grid."""
    x = x.detach().float().cpu()
    if modality == "video":  # (B, C, T, H, W) → one row of frames per clip
        t = x.shape[2]
        idx = torch.linspace(0, t - 1, min(t, max_frames)).round().long()
        frames = x[:, :, idx].permute(0, 2, 1, 3, 4)  # (B, T', C, H, W)
        return frames.reshape(-1, *frames.shape[2:]).clamp(0, 1), len(idx)
    if modality == "audio":  # (B, C, L) → waveform as a 2-row strip image
        return _waveform_images(x), 1
    if modality == "tabular":  # (B, D) → each row a strip of cells
        d = x.shape[1]
        side = int(d**0.5) or 1
        pad = side * side - d if side * side >= d else (side + 1) * side - d
        flat = torch.nn.functional.pad(x, (0, max(pad, 0)))
        h = flat.shape[1] // side
        lo, hi = flat.min(), flat.max()
        return ((flat - lo) / (hi - lo + 1e-8)).reshape(-1, 1, h, side), 1
    return x.clamp(0, 1), 1


def _waveform_images(x: torch.Tensor, height: int = 48, width: int = 256) -> torch.Tensor:
    """(B, C, L) in [-1, 1] → (B, 1, height, width) images with the waveform drawn as columns."""
    b = x.shape[0]
    wave = x.mean(1)  # (B, L)
    idx = torch.linspace(0, wave.shape[1] - 1, width).long()
    wave = wave[:, idx].clamp(-1, 1)
    rows = torch.linspace(1, -1, height).view(1, height, 1)
    img = (rows.abs() <= wave.abs().unsqueeze(1)) & (rows.sign() == wave.sign().unsqueeze(1))
    return img.float().view(b, 1, height, width)


def recon_grid(x: torch.Tensor, recon: torch.Tensor, modality: str) -> torch.Tensor:
    """A grid (3, H, W): inputs and their reconstructions side by side (pairs of columns, or row pairs)."""
    xi, per_row = _to_image_batch(x, modality)
    ri, _ = _to_image_batch(recon, modality)
    if per_row > 1:  # video: clip row, then its reconstruction row
        n = xi.shape[0] // per_row
        rows = torch.stack([xi.view(n, per_row, *xi.shape[1:]), ri.view(n, per_row, *ri.shape[1:])], 1)
        return make_grid(rows.reshape(-1, *xi.shape[1:]), nrow=per_row, pad_value=0.5)
    pairs = torch.stack([xi, ri], 1).reshape(-1, *xi.shape[1:])  # x0, r0, x1, r1, …
    ncol = 2 * max(1, min(8, int((xi.shape[0]) ** 0.5)))
    return make_grid(pairs, nrow=ncol, pad_value=0.5)


def sample_grid(samples: torch.Tensor, modality: str) -> torch.Tensor:
    imgs, per_row = _to_image_batch(samples, modality)
    nrow = per_row if per_row > 1 else max(1, int(imgs.shape[0] ** 0.5))
    return make_grid(imgs, nrow=nrow, pad_value=0.5)
