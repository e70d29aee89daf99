"""Evaluation figures and media: comparisons, latent traversals, interpolations, PCA, error histograms, audio, video.

Owns drawing only; the numbers come from `vaekit.eval.run`. Image grids are written pixel-exact with PIL
(cell = the data's H×W, 2-px gaps), so their size states their layout; matplotlib figures record their number of
panels in the PNG's ``panels`` text field. Audio goes to ``.wav`` (soundfile, else the stdlib ``wave``), video to a
side-by-side ``.mp4`` (PyAV).
"""

from __future__ import annotations

import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from vaekit.objectives.reconstruction import likelihood_mean

if TYPE_CHECKING:
    from vaekit.eval.run import Artifacts

PAD = 2
BAR_METRICS = ("neg_elbo", "iwae_nll", "mse", "psnr", "ssim", "lpips", "rfid", "si_sdr", "f1_macro", "mig")
LOWER_IS_BETTER = {"neg_elbo", "iwae_nll", "mse", "lpips", "rfid"}


def clip_rate(meta: Mapping[str, Any], default: int = 8) -> int:
    """The frame rate to write a clip at: ``data_meta.json``'s ``fps`` (a number, or a ``video_folder``'s list of
    source rates: the first), rounded to a positive integer; ``default`` when unknown."""
    fps = meta.get("fps")
    if isinstance(fps, list | tuple):
        fps = fps[0] if fps else None
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not np.isfinite(fps) or fps <= 0:
        return default
    return max(1, round(fps))


def bar_layout(metric: str, values: Sequence[float | None]) -> tuple[tuple[float, float] | None, list[str]]:
    """How to draw one metric's bars so that differences show.

    Returns:
        (y limits, or None for an axis from 0; one label per bar: the value and its difference to the best model,
        "best" for the best). The axis is zoomed (limits around the values) when the values share a sign and
        differ by less than a fifth of their size, as −ELBOs of similar models do.
    """
    vals = [float(v) if v is not None and np.isfinite(v) else None for v in values]
    known = [v for v in vals if v is not None]
    if not known:
        return None, ["n/a" for _ in vals]
    best = min(known) if metric in LOWER_IS_BETTER else max(known)
    labels = [
        "n/a" if v is None else f"{v:.4g} (best)" if v == best else f"{v:.4g} ({v - best:+.3g})" for v in vals
    ]
    lo, hi = min(known), max(known)
    size = max(abs(lo), abs(hi))
    same_sign = lo > 0 or hi < 0
    if len(known) < 2 or not same_sign or hi - lo >= 0.2 * size:
        return None, labels
    span = max(hi - lo, 1e-3 * size)
    return (lo - 0.6 * span, hi + 0.4 * span), labels


# ------------------------------------------------------------------------------------------ pixel grids
def to_display(x: Tensor) -> Tensor:
    """One sample ``(C, H, W)`` or clip ``(C, T, H, W)`` (its middle frame) → ``(3, H, W)`` in [0, 1]."""
    if x.dim() == 4:
        x = x[:, x.shape[1] // 2]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] != 3:
        x = x[:1].expand(3, -1, -1)
    return x.float().clamp(0, 1)


def image_grid(rows: Sequence[Sequence[Tensor]], pad: int = PAD) -> np.ndarray:
    """A uint8 ``(rows·(H+pad)+pad, cols·(W+pad)+pad, 3)`` grid of display images (white gaps)."""
    height, width = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (height + pad) + pad, cols * (width + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (height + pad), pad + j * (width + pad)
            pixels = (to_display(image).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            grid[top : top + height, left : left + width] = pixels
    return grid


def save_grid(rows: Sequence[Sequence[Tensor]], path: Path) -> Path:
    """Write `image_grid` as a PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(rows)).save(path)
    return path


def _decode(model: torch.nn.Module, z: Tensor) -> Tensor:
    param = next(model.parameters())
    recon, _ = model.decode(z.to(param.device, param.dtype))
    return likelihood_mean(model.recon_kind, recon).float().cpu()


@torch.no_grad()
def latent_traversal(
    model: torch.nn.Module,
    mean: Tensor,
    path: Path,
    order: Sequence[int] | None = None,
    steps: int = 7,
    span: float = 3.0,
    max_rows: int = 16,
) -> Path:
    """One row per latent dimension (a vector entry, or a spatial latent's channel), swept over
    ``linspace(−span, span, steps)`` with the other dimensions held at ``mean`` (one sample's posterior mean).

    ``order`` lists the dimensions to show (e.g. by decreasing KL); at most ``max_rows``.
    """
    dims = list(order if order is not None else range(mean.shape[0]))[:max_rows]
    values = torch.linspace(-span, span, steps)
    rows = []
    for dim in dims:
        z = mean.unsqueeze(0).repeat(steps, *([1] * mean.dim()))  # (steps, *latent)
        z[:, dim] = values.view(-1, *([1] * (mean.dim() - 1)))
        rows.append(list(_decode(model, z)))
    return save_grid(rows, path)


@torch.no_grad()
def interpolation(
    model: torch.nn.Module, inputs: Tensor, means: Tensor, path: Path, steps: int = 8, pairs: int = 3
) -> Path:
    """Rows of linear interpolations between the posterior means of pairs of inputs (0↔1, 2↔3, …):
    each row is input a, ``steps`` decoded points from a to b, input b."""
    rows = []
    for p in range(min(pairs, len(inputs) // 2)):
        a, b = means[2 * p], means[2 * p + 1]
        t = torch.linspace(0, 1, steps).view(-1, *([1] * a.dim()))
        decoded = _decode(model, (1 - t) * a + t * b)
        rows.append([inputs[2 * p], *decoded, inputs[2 * p + 1]])
    return save_grid(rows, path)


# ------------------------------------------------------------------------------------------ matplotlib
def _figure(panels: int, cols: int = 3, size: float = 3.2) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = min(cols, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * 0.8 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.remove()
    return fig, flat[:panels]


def _save(fig: Any, path: Path, panels: int) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"panels": str(panels)})
    plt.close(fig)
    return path


def latent_pca(means: Tensor, labels: Tensor | None, path: Path, label_name: str | None = None) -> Path:
    """Scatter of the first two principal components of the posterior means, coloured by the first label column."""
    flat = means.flatten(1).double()
    centered = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    coords = (
        (centered @ v[:2].T).numpy() if flat.shape[1] >= 2 else np.c_[centered.numpy(), np.zeros(len(flat))]
    )
    fig, (ax,) = _figure(1, size=4.5)
    colour = None if labels is None else labels.reshape(len(labels), -1)[:, 0].float().numpy()
    if colour is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=6)
    else:
        points = ax.scatter(coords[:, 0], coords[:, 1], c=colour, s=6, cmap="viridis")
        fig.colorbar(points, ax=ax, label=label_name or "label")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="posterior means (PCA)")
    return _save(fig, path, 1)


def error_histogram(errors: Mapping[str, Tensor], path: Path) -> Path:
    """Histograms of the per-sample reconstruction MSE, one per model, overlaid."""
    fig, (ax,) = _figure(1, size=4.5)
    values = torch.cat([e.flatten() for e in errors.values()])
    bins = np.linspace(values.min().item(), values.max().item() + 1e-12, 30)
    for name, err in errors.items():
        ax.hist(err.numpy(), bins=bins, alpha=0.5, label=name)
    ax.set(xlabel="MSE per element", ylabel="samples", title="reconstruction error")
    ax.legend(fontsize=7)
    return _save(fig, path, 1)


def comparison_figure(
    artifacts: Mapping[str, Artifacts], results: Mapping[str, Mapping[str, Any]], path: Path
) -> Path:
    """Inputs next to each model's reconstructions, per-model KL per latent dimension, and one bar chart per
    metric that every model has (up to six of `BAR_METRICS`). Panels: 2 + number of metric charts."""
    names = list(artifacts)
    first = artifacts[names[0]]
    shared = [m for m in BAR_METRICS if all(m in results[n]["metrics"] for n in names)][:6]
    panels = 2 + len(shared)
    fig, axes = _figure(panels)
    ax = axes[0]
    if first.modality in ("image", "video"):
        rows = [list(first.inputs)] + [list(artifacts[n].recons) for n in names]
        ax.imshow(image_grid(rows))
        ax.set_yticks([PAD + (i + 0.5) * (first.inputs.shape[-2] + PAD) for i in range(len(rows))])
        ax.set_yticklabels(["input", *names], fontsize=7)
        ax.set_xticks([])
    elif first.modality == "audio":
        ax.plot(first.inputs[0, 0].numpy(), lw=0.8, label="input")
        for n in names:
            ax.plot(artifacts[n].recons[0, 0].numpy(), lw=0.8, alpha=0.7, label=n)
        ax.legend(fontsize=7)
    else:
        rows = torch.cat([first.inputs[:4].flatten(1)] + [artifacts[n].recons[:4].flatten(1) for n in names])
        ax.imshow(rows.numpy(), aspect="auto", cmap="gray_r", interpolation="nearest")
        ax.set_yticks([])
    ax.set_title("inputs / reconstructions", fontsize=9)
    ax = axes[1]
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        kl = artifacts[n].kl_per_dim.numpy()
        ax.bar(np.arange(len(kl)) + i * width, kl, width=width, label=n)
    ax.set(xlabel="latent dimension", ylabel="KL (nats)", title="KL per dimension")
    ax.legend(fontsize=7)
    for ax, metric in zip(axes[2:], shared, strict=True):
        values = [results[n]["metrics"][metric] for n in names]
        limits, labels = bar_layout(metric, values)
        bars = ax.bar(range(len(names)), [v if v is not None else 0.0 for v in values], color="C0")
        ax.bar_label(bars, labels=labels, fontsize=6, padding=1)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7, rotation=20)
        unit = results[names[0]]["units"].get(metric, "")
        title = f"{metric} ({unit})" if unit else metric
        if limits is not None:  # similar values: an axis from 0 would hide their differences
            ax.set_ylim(*limits)
            title += ", axis zoomed"
        ax.set_title(title + (", lower is better" if metric in LOWER_IS_BETTER else ""), fontsize=8)
    return _save(fig, path, panels)


# ------------------------------------------------------------------------------------------ audio / video
def write_wav(path: Path, audio: Tensor, sample_rate: int) -> Path:
    """``(C, L)`` in [-1, 1] → a wav (soundfile when installed, else 16-bit PCM with the stdlib ``wave``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = audio.float().clamp(-1, 1).numpy().T  # (L, C)
    try:
        import soundfile

        soundfile.write(str(path), samples, sample_rate)
    except ImportError:
        with wave.open(str(path), "wb") as fh:
            fh.setnchannels(samples.shape[1])
            fh.setsampwidth(2)
            fh.setframerate(sample_rate)
            fh.writeframes((samples * 32767).round().astype("<i2").tobytes())
    return path


def write_video(path: Path, inputs: Tensor, recons: Tensor, fps: int = 8, clips: int = 4) -> Path:
    """Side-by-side ``.mp4``: one row per clip, input | reconstruction, frames upscaled to ≥ 128 px high."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    count = min(clips, len(inputs))
    _, _, frames, height, _ = inputs.shape
    scale = max(1, 128 // height)
    grids = []
    for t in range(frames):
        rows = [[inputs[i][:, t], recons[i][:, t]] for i in range(count)]
        grid = image_grid(rows).repeat(scale, 0).repeat(scale, 1)
        grids.append(
            np.pad(grid, ((0, grid.shape[0] % 2), (0, grid.shape[1] % 2), (0, 0)), constant_values=255)
        )
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = grids[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for grid in grids:
            for packet in stream.encode(av.VideoFrame.from_ndarray(grid, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ------------------------------------------------------------------------------------------ one evaluation
def write_figures(art: Artifacts, out_dir: Path, seed: int = 0) -> list[Path]:
    """The figures of one evaluation: ``recon.png``, ``latent_pca.png``, ``error_hist.png``; for images also
    ``traversal.png`` and ``interpolation.png``; audio ``audio/{i}-input.wav`` + ``-recon.wav``; video
    ``recon.mp4``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if art.modality in ("image", "video"):
        files.append(save_grid([list(art.inputs), list(art.recons)], out_dir / "recon.png"))
    if art.modality == "image":
        order = torch.argsort(art.kl_per_dim, descending=True).tolist()
        files.append(latent_traversal(art.model, art.means[0], out_dir / "traversal.png", order))
        files.append(
            interpolation(art.model, art.inputs, art.means[: len(art.inputs)], out_dir / "interpolation.png")
        )
    if art.modality == "audio":
        rate = int(art.meta.get("sample_rate", 16000))
        for i in range(min(4, len(art.inputs))):
            files.append(write_wav(out_dir / "audio" / f"{i}-input.wav", art.inputs[i], rate))
            files.append(write_wav(out_dir / "audio" / f"{i}-recon.wav", art.recons[i], rate))
    if art.modality == "video":
        files.append(
            write_video(out_dir / "recon.mp4", art.inputs, art.recons, fps=clip_rate(art.meta))
        )
    name = art.factor_names[0] if art.factor_names else None
    files.append(latent_pca(art.means, art.labels, out_dir / "latent_pca.png", name))
    files.append(error_histogram({"model": art.errors}, out_dir / "error_hist.png"))
    return files
