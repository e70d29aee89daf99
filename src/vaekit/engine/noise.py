"""Training noise drawn for the *global* batch: latent ε and the denoising corruption.

One generator shared by all processes (same seed, same draws), each process taking its slice of the global batch:
N processes then train exactly like one with the same batch. Its state is checkpointed (``GeneratorState``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaekit.config.schema import DenoiseConfig
from vaekit.objectives import corrupt


class GlobalNoise:
    def __init__(self, seed: int, device: torch.device, rank: int, world: int) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device, self.rank, self.world = device, rank, world

    def draw(self, x: Tensor, latent: tuple[int, ...], den: DenoiseConfig) -> tuple[Tensor, Tensor]:
        """(corrupted input, latent noise) for this rank's slice ``x`` (B, ...) of the global batch."""
        b, lo = x.shape[0], self.rank * x.shape[0]
        global_b = b * self.world  # drop_last is required with several processes: equal slices
        g, dev = self.generator, self.device
        x_in = x
        if den.noise_std > 0 or den.mask_rate > 0:
            full = (global_b, *x.shape[1:])
            gauss = torch.randn(full, generator=g, device=dev)[lo : lo + b] if den.noise_std > 0 else None
            keep = torch.rand(full, generator=g, device=dev)[lo : lo + b] >= den.mask_rate if den.mask_rate > 0 else None
            x_in = corrupt(x, den.noise_std, den.mask_rate, noise=gauss, keep=keep, rescale=den.rescale)
        noise = torch.randn((global_b, *latent), generator=g, device=dev)
        return x_in, noise if self.world == 1 else noise[lo : lo + b]
