"""``vaekit eval --tiled``: what tiling costs. Each batch is reconstructed untiled and tiled (`latents.tiling`),
and the squared error is split into elements near the window borders and inside the windows (`seam_mask`).

Reported: the reconstruction MSE untiled and tiled; for the tiled one the MSE near the seams and inside; the
tiled-vs-untiled difference (near / inside) and the largest latent difference. Inputs larger than the trained size
come from data overrides (``data.image_size=512``) on a fully convolutional (``model.latent=spatial``) model.
"""

from __future__ import annotations

from typing import Any

import torch

from vaekit.errors import ConfigError
from vaekit.eval.data import resolve_data
from vaekit.latents.tiling import seam_mask, tiled_decode, tiled_encode
from vaekit.objectives.reconstruction import likelihood_mean


class _Sums:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, name: str, err: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        sel = err if mask is None else err[mask]
        s, n = self.sums.get(name, (0.0, 0))
        self.sums[name] = (s + float(sel.double().sum()), n + sel.numel())

    def mean(self, name: str) -> float:
        s, n = self.sums.get(name, (0.0, 0))
        return s / n if n else float("nan")


def evaluate_tiled(loaded: Any, data: Any, *, split: str = "val", tile: int, overlap: int | None = None,
                   frames: int | None = None, frame_overlap: int = 0, batches: int | None = None,
                   batch_size: int = 16, device: str = "cpu") -> dict[str, Any]:
    """Tiled vs untiled reconstruction of ``loaded``'s model on ``data`` (see `vaekit.eval.data.resolve_data`)."""
    model = loaded.model.to(device).eval()
    ev = resolve_data(data, loaded, split)
    if ev.modality not in ("image", "video"):
        raise ConfigError(f"--tiled: images or video only (the data is {ev.modality})")
    overlap = tile // 4 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap: must be in [0, {tile}) (got {overlap})")
    sums, latent_diff = _Sums(), 0.0
    kind = getattr(model, "recon_kind", "mse")
    with torch.no_grad():
        for batch in ev.batches(batch_size, batches):
            x = batch["x"].to(device)
            mean, _ = model.encode(x)
            plain = likelihood_mean(kind, model.decode(mean)[0])
            tm, _ = tiled_encode(model, x, tile, overlap, frames, frame_overlap)
            tiled = likelihood_mean(kind, tiled_decode(model, tm, tuple(x.shape), tile, overlap, frames, frame_overlap))
            axes = [(x.ndim - 2, tile, overlap), (x.ndim - 1, tile, overlap)]
            if x.ndim == 5 and frames:
                axes.append((2, frames, frame_overlap))
            near = seam_mask(tuple(x.shape), axes).to(x.device)
            err_t, diff = (tiled - x) ** 2, (tiled - plain) ** 2
            sums.add("mse_untiled", (plain - x) ** 2)
            sums.add("mse_tiled", err_t)
            sums.add("mse_tiled_near_seams", err_t, near)
            sums.add("mse_tiled_inside", err_t, ~near)
            sums.add("diff_near_seams", diff, near)
            sums.add("diff_inside", diff, ~near)
            sums.add("seam_fraction", near.float())
            latent_diff = max(latent_diff, float((tm - mean).abs().max()))
    out = {k: sums.mean(k) for k in sums.sums}
    out["seam_ratio"] = out["mse_tiled_near_seams"] / out["mse_tiled_inside"] if out["mse_tiled_inside"] else float("nan")
    out.update(latent_max_abs_diff=latent_diff, tile=tile, overlap=overlap, frames=frames, frame_overlap=frame_overlap,
               shape=list(ev.shape), split=ev.split or split, samples=min(len(ev), (batches or 10**12) * batch_size))
    return out
