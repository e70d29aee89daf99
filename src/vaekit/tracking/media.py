"""Pictures and media of what the model does, for every modality and any sample shape.

Grids: `recon_grid` (inputs beside their reconstructions) and `sample_grid` (prior samples) turn images, video
(one row of frames per clip, any frame count), audio (a waveform strip per clip, any length) and tables (one
horizontal strip per row, a cell per column, any width D: `table_strips`) into one ``(3, H, W)`` image in [0, 1].
`prune_samples` keeps the sample files of the last few validations of a stage (``log.keep_samples``).

Files: `write_wav` (16-bit PCM), `write_mp4` (H.264 through PyAV, MPEG-4 Part 2 when no H.264 encoder is built
in) and `spectrogram_image` (a log-magnitude STFT as a coloured ``(3, H, W)`` image) for audio and video samples.
"""

from __future__ import annotations

import math
import re
import wave as wave_module
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid


# ------------------------------------------------------------------------------------------- pruning
def prune_samples(folder: Path, prefix: str, keep: int | None) -> list[Path]:
    """Delete the files of all but the newest ``keep`` validations of one stage in ``folder``.

    Sample files are named ``{prefix}{epoch}_{step}-{what}.{ext}`` (``prefix`` = ``{stage}_{index}_``); the step
    orders them. None keeps everything. Returns the deleted files.
    """
    if keep is None or not folder.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"\d+_(\d+)-")
    by_step: dict[int, list[Path]] = {}
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m and path.is_file():
            by_step.setdefault(int(m.group(1)), []).append(path)
    old = sorted(by_step)[:-keep] if len(by_step) > keep else []
    deleted = [p for step in old for p in by_step[step]]
    for path in deleted:
        path.unlink(missing_ok=True)
    return deleted


# ---------------------------------------------------------------------------------------------- grids
def _to_image_batch(x: torch.Tensor, modality: str, max_frames: int = 8) -> tuple[torch.Tensor, int]:
    """Any batch as images (N, C, H, W) in [0, 1], and how many images make one row of the grid."""
    x = x.detach().float().cpu()
    if modality == "video":  # (B, C, T, H, W) → one row of frames per clip
        t = x.shape[2]
        idx = torch.linspace(0, t - 1, min(t, max_frames)).round().long()
        frames = x[:, :, idx].permute(0, 2, 1, 3, 4)  # (B, T', C, H, W)
        return frames.reshape(-1, *frames.shape[2:]).clamp(0, 1), len(idx)
    if modality == "audio":  # (B, C, L) → waveform as a strip image
        return _waveform_images(x), 1
    return x.clamp(0, 1), 1


def _waveform_images(x: torch.Tensor, height: int = 48, width: int = 256) -> torch.Tensor:
    """(B, C, L) in [-1, 1] → (B, 1, height, width) images with the waveform drawn as columns (any L ≥ 1)."""
    b = x.shape[0]
    wave = x.mean(1)  # (B, L)
    idx = torch.linspace(0, wave.shape[1] - 1, width).round().long()
    wave = wave[:, idx].clamp(-1, 1)
    rows = torch.linspace(1, -1, height).view(1, height, 1)
    img = (rows.abs() <= wave.abs().unsqueeze(1)) & (rows.sign() == wave.sign().unsqueeze(1))
    return img.float().view(b, 1, height, width)


MAX_TABLE_COLUMNS = 2048
"""Wider tables are drawn with neighbouring columns averaged into this many pixel columns."""


def table_strips(rows: list[torch.Tensor], gap_every: int = 1) -> torch.Tensor:
    """Table rows as horizontal strips, one per sample, one cell per column: a (3, H, W) image in [0, 1].

    Args:
        rows: (B, D) tensors drawn interleaved (input 0, reconstruction 0, input 1, ...), all scaled by the first
            one's range (black = its minimum, white = its maximum).
        gap_every: a grey line after every this many strips (2: between input/reconstruction pairs).

    Each column is at least 1 px wide (up to 32 px for narrow tables) and each strip 6-24 px high, so wide
    tables (hundreds of species or labels) stay readable column by column.
    """
    ref = rows[0].detach().float().cpu().reshape(rows[0].shape[0], -1)
    d = ref.shape[1]
    lo, hi = (float(ref.min()), float(ref.max())) if ref.numel() else (0.0, 1.0)
    cell_w = max(1, min(32, 1024 // max(d, 1)))
    row_h = min(24, max(6, cell_w))
    strips = []
    for i in range(ref.shape[0]):
        for k, r in enumerate(rows):
            v = r[i].detach().float().cpu().reshape(1, 1, -1)
            if d > MAX_TABLE_COLUMNS:
                v = torch.nn.functional.adaptive_avg_pool1d(v, MAX_TABLE_COLUMNS)
            v = ((v.reshape(-1) - lo) / (hi - lo + 1e-8)).clamp(0, 1)
            strips.append(v.repeat_interleave(cell_w).expand(row_h, -1))
            if (i * len(rows) + k + 1) % gap_every == 0:
                strips.append(torch.full((2, strips[-1].shape[1]), 0.5))
    image = torch.cat(strips[:-1] if len(strips) > 1 else strips)  # (H, W)
    return image.expand(3, -1, -1).contiguous()


def recon_grid(x: torch.Tensor, recon: torch.Tensor, modality: str) -> torch.Tensor:
    """A grid (3, H, W): inputs and their reconstructions side by side (pairs of columns, or row pairs); tables
    as strips, each input above its reconstruction (`table_strips`)."""
    if modality == "tabular":
        return table_strips([x, recon], gap_every=2)
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
    """A grid (3, H, W) of prior samples (one row of frames per clip for video; one strip per sample for tables)."""
    if modality == "tabular":
        return table_strips([samples], gap_every=1)
    imgs, per_row = _to_image_batch(samples, modality)
    nrow = per_row if per_row > 1 else max(1, int(imgs.shape[0] ** 0.5))
    return make_grid(imgs, nrow=nrow, pad_value=0.5)


# ---------------------------------------------------------------------------------------------- files
def write_wav(path: str | Path, wave: torch.Tensor, sample_rate: int) -> Path:
    """Write ``wave (C, L)`` (or ``(L,)``) in [-1, 1] as a 16-bit PCM WAV file; values outside are clipped.

    Returns:
        The path written.
    """
    w = wave.detach().float().cpu()
    w = w.unsqueeze(0) if w.ndim == 1 else w  # (C, L)
    pcm = (w.clamp(-1, 1).numpy().T * 32767.0).round().astype("<i2")  # (L, C) interleaved
    path = Path(path)
    with wave_module.open(str(path), "wb") as f:
        f.setnchannels(w.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(np.ascontiguousarray(pcm).tobytes())
    return path


def write_mp4(path: str | Path, clip: torch.Tensor, fps: float = 8.0) -> Path:
    """Write ``clip (C, T, H, W)`` in [0, 1] (C = 1 or 3) as an MP4 video with PyAV.

    H.264 (yuv420p) when the encoder is available, else MPEG-4 Part 2. Odd heights/widths are padded by one
    edge row/column (4:2:0 needs even sizes).

    Returns:
        The path written.
    """
    import av

    c = clip.detach().float().cpu().clamp(0, 1)
    if c.shape[0] == 1:
        c = c.expand(3, *c.shape[1:])
    frames = (c.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()  # (T, H, W, 3)
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    rate = max(1, round(fps))
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        try:
            stream = container.add_stream("libx264", rate=rate)
            stream.options = {"crf": "18"}
        except (av.FFmpegError, ValueError):  # no H.264 encoder in this FFmpeg build
            stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w + pw, h + ph, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    return path


def spectrogram_image(wave: torch.Tensor, sample_rate: int, height: int | None = None) -> torch.Tensor:
    """A log-magnitude spectrogram of ``wave (C, L)`` or ``(L,)`` (channels averaged) as an image.

    The FFT size is 1/32 of a second of samples rounded to a power of two (at least 16), the hop a quarter of
    it; clips shorter than one FFT are zero-padded. Low frequencies at the bottom; 80 dB of dynamic range mapped
    through the magma colour map.

    Returns:
        (3, n_fft/2 + 1, frames) float32 in [0, 1] (resized to ``height`` rows when given).
    """
    from matplotlib import colormaps

    w = wave.detach().float().cpu()
    w = w.mean(0) if w.ndim == 2 else w  # (L,)
    n_fft = max(16, 2 ** round(math.log2(max(sample_rate / 32, 1))))
    hop = n_fft // 4
    if w.numel() < n_fft:
        w = torch.nn.functional.pad(w, (0, n_fft - w.numel()))
    spec = torch.stft(w, n_fft, hop, window=torch.hann_window(n_fft), center=False, return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-8)  # (F, frames)
    db = (db - db.max() + 80.0).clamp(min=0) / 80.0
    img = db.flip(0)
    if height is not None and height != img.shape[0]:
        img = torch.nn.functional.interpolate(img[None, None], size=(height, img.shape[1]), mode="bilinear")[0, 0]
    rgb = colormaps["magma"](img.clamp(0, 1).numpy())[..., :3]  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().contiguous()
