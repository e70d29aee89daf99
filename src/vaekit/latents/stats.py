"""Per-channel latent statistics in one streaming pass, and the scale/shift a diffusion model should use.

Each block of latents (one chunk of the encoded data set) is reduced to per-channel ``(count, mean, M2)`` in
float64 (``M2 = sum((z - mean)^2)``); blocks merge with Chan et al.'s parallel update (Welford's update when a
block is one value), always in chunk order, so the figures do not depend on the number of processes or on a resume.

The channel of a latent is its dim 1 in a batch: ``(N, C)`` vectors (each entry a channel), ``(N, C, H, W)``
images, ``(N, C, T, H, W)`` video, ``(N, C, L)`` audio.

Diffusers convention (``AutoencoderKL.config.scaling_factor`` / ``shift_factor``): a diffusion model is trained on
``(z - shift_factor) * scaling_factor`` and its samples are decoded as ``vae.decode(latents / scaling_factor +
shift_factor)``. vaekit reports ``shift_factor = mean(z)`` and ``scaling_factor = 1 / std(z)`` over all latent
elements (zero mean, unit variance: the SD3/Flux convention), and ``scaling_factor_no_shift = 1 / sqrt(mean(z^2))``
for pipelines that apply no shift (the SD 1.x/2.x convention, shift_factor None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Moments:
    """Per-channel count, mean and M2 (float64)."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, z: Tensor) -> Moments:
        """The moments of a batch ``z (N, C, ...)`` per channel C."""
        flat = z.detach().to(torch.float64).transpose(0, 1).reshape(z.shape[1], -1)  # (C, N * rest)
        mean = flat.mean(1)
        m2 = ((flat - mean[:, None]) ** 2).sum(1)
        return cls(float(flat.shape[1]), mean.cpu().numpy(), m2.cpu().numpy())

    def merge(self, other: Moments) -> Moments:
        """Chan et al.'s parallel combination of two sets of moments."""
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def to_json(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Moments:
        return cls(float(d["count"]), np.asarray(d["mean"], dtype=np.float64), np.asarray(d["m2"], dtype=np.float64))


def merge_all(parts: list[Moments]) -> Moments:
    """The moments of the union of ``parts`` (merged in the given order)."""
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def latent_stats(m: Moments) -> dict:
    """The figures of ``stats.json``: per-channel mean/std (population), global mean/std/rms and the factors."""
    var = m.m2 / m.count
    mean_all = float(m.mean.mean())  # every channel has the same count
    var_all = float((var + (m.mean - mean_all) ** 2).mean())
    std_all = math.sqrt(var_all)
    rms = math.sqrt(var_all + mean_all**2)
    return {
        "channels": len(m.mean),
        "count_per_channel": m.count,
        "mean": m.mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "global_mean": mean_all,
        "global_std": std_all,
        "global_rms": rms,
        "shift_factor": mean_all,
        "scaling_factor": 1.0 / std_all if std_all > 0 else 1.0,
        "scaling_factor_no_shift": 1.0 / rms if rms > 0 else 1.0,
        "convention": "diffusers: latents = (z - shift_factor) * scaling_factor; decode(latents / scaling_factor + "
                      "shift_factor). Without a shift (SD 1.x/2.x): latents = z * scaling_factor_no_shift.",
    }


def stats_of_batches(encode, batches) -> dict | None:  # noqa: ANN001 - encode(x) -> (mean, logvar); batch dicts
    """`latent_stats` of the posterior means of ``batches`` in one pass (None when there is no batch)."""
    parts = []
    with torch.no_grad():
        for batch in batches:
            if len(batch["x"]):
                parts.append(Moments.of(encode(batch["x"])[0]))
    return latent_stats(merge_all(parts)) if parts else None


def write_diffusers_factors(folder, stats: dict) -> None:  # noqa: ANN001 - a path
    """Set ``scaling_factor`` and ``shift_factor`` in a diffusers folder's ``config.json`` (the keys the pipelines
    read: ``latents = (z - shift_factor) * scaling_factor``)."""
    import json
    from pathlib import Path

    path = Path(folder) / "config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    config["scaling_factor"] = stats["scaling_factor"]
    config["shift_factor"] = stats["shift_factor"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
