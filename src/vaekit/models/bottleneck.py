"""The latent between encoder and decoder, as its own module: a Gaussian posterior or a quantiser.

A bottleneck takes the encoder's output ``h`` and returns ``(z, info)`` (the contract of stable-audio-tools'
``Bottleneck``). The model family only sizes its encoder for :meth:`Bottleneck.in_channels` and hands ``h`` over,
so a Gaussian, VQ, RVQ, FSQ or LFQ latent is one config swap (``model.bottleneck.kind``).

* :class:`GaussianBottleneck`: ``h`` is mean and log-variance stacked on dim 1; ``z`` is the reparameterised draw;
  ``info`` holds ``mean`` and ``logvar`` (the objective computes the KL from them, as before).
* :class:`QuantizedBottleneck`: wraps lucidrains' ``vector-quantize-pytorch`` (``VectorQuantize``, ``ResidualVQ``,
  ``FSQ``, ``LFQ``) for the quantisation itself, EMA codebook updates, k-means init, dead-code re-initialisation and
  the straight-through / rotation-trick gradient. A spatial latent ``(B, C, *S)`` is quantised as ``prod(S)``
  positions of ``C`` channels each; a vector latent ``(B, D)`` as one position of ``D`` channels (the library
  projects to ``codebook_dim`` when it differs).

Quantiser terms, in the units of the reconstruction NLL (summed over a sample's elements, mean over the batch):

* ``commit``: ``Σ (h − sg(z_q))²`` over the sample's latent elements (VQ-VAE's commitment term; vq/rvq/lfq);
* ``codebook``: ``Σ (sg(h) − z_q)²`` with the gradient into the codebook (vq/rvq with ``codebook: learned``; an
  EMA codebook is updated by the library instead and has no loss);
* ``entropy`` (lfq, training only: the library computes it in training mode): MAGVIT-2's entropy penalty,
  ``H(per-position code distribution) − γ·H(batch code distribution)`` in nats per position, summed over positions.

``info["bottleneck_loss"]`` is their weighted sum (``commitment_weight·commit + codebook + entropy_weight·entropy``),
which the objective adds to the loss; ``info["indices"]`` (``(B, N)``, or ``(B, N, Q)`` for rvq) feeds the
codebook statistics (usage, perplexity, dead codes) of validation and ``vaekit eval``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.models.layers import LOGVAR_MAX, LOGVAR_MIN

QUANTIZED_KINDS = ("vq", "rvq", "fsq", "lfq")
BOTTLENECK_KINDS = ("gaussian", *QUANTIZED_KINDS)


class Bottleneck(nn.Module):
    """Base: ``encode(h) -> (z, info)``; ``sample(n, latent_shape)`` draws latents from the prior."""

    quantized: bool = False

    @staticmethod
    def in_channels(latent_channels: int) -> int:
        """Channels the encoder must produce for ``latent_channels`` latent channels."""
        return latent_channels

    def encode(self, h: Tensor, sample: bool = True, noise: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def forward(self, h: Tensor, sample: bool = True, noise: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.encode(h, sample, noise)

    def sample(self, n: int, latent_shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
               dtype: torch.dtype) -> Tensor:
        raise NotImplementedError


def reparameterize(mean: Tensor, logvar: Tensor, sample: bool = True, noise: Tensor | None = None) -> Tensor:
    """``mean + exp(logvar/2)·ε`` (or ``mean``); ε is ``noise`` when given (the trainer draws it for the global
    batch so data-parallel runs match a single process), else ``randn_like`` on the global RNG."""
    if not sample:
        return mean
    eps = torch.randn_like(mean) if noise is None else noise.to(mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


class GaussianBottleneck(Bottleneck):
    """A diagonal Gaussian posterior: ``h = [mean, logvar]`` on dim 1, ``z = mean + exp(logvar/2)·ε``."""

    @staticmethod
    def in_channels(latent_channels: int) -> int:
        return 2 * latent_channels

    def encode(self, h: Tensor, sample: bool = True, noise: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """h ``(B, 2·C, ...)`` -> z ``(B, C, ...)``; ε is ``noise`` when given, else ``randn_like`` (global RNG)."""
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        return reparameterize(mean, logvar, sample, noise), {"mean": mean, "logvar": logvar}

    def sample(self, n: int, latent_shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
               dtype: torch.dtype) -> Tensor:
        return torch.randn((n, *latent_shape), generator=generator, device=device, dtype=dtype)


def _library() -> Any:
    import vector_quantize_pytorch

    return vector_quantize_pytorch


class QuantizedBottleneck(Bottleneck):
    """A quantised latent from ``vector-quantize-pytorch`` (see the module docstring for the terms).

    Args:
        kind: ``vq`` (VectorQuantize), ``rvq`` (ResidualVQ), ``fsq`` (FSQ) or ``lfq`` (LFQ).
        channels: latent channels per position (the library's ``dim``).
        codebook_size: codes per codebook (vq/rvq; lfq: a power of 2). fsq: ``prod(levels)``.
        codebook_dim: vq/rvq code dimension (the library adds in/out projections when it differs from
            ``channels``); None: ``channels``.
        codebook: vq/rvq ``ema`` (codebook follows an exponential moving average of its assigned vectors) or
            ``learned`` (trained by the ``codebook`` loss).
        decay: EMA decay of the codebook (``codebook: ema``).
        commitment_weight: weight of ``commit`` in ``bottleneck_loss``.
        num_quantizers: rvq depth.
        levels: fsq levels per code dimension.
        entropy_weight: lfq weight of ``entropy``.
        diversity_gamma: lfq γ (weight of the batch entropy inside ``entropy``).
        kmeans_init: vq/rvq: initialise the codebook by k-means on the first batch.
        threshold_ema_dead_code: vq/rvq: re-initialise codes whose EMA usage falls below this (0: never) from
            vectors of the current batch.
    """

    quantized = True

    def __init__(self, kind: str, channels: int, codebook_size: int = 512, codebook_dim: int | None = None,
                 codebook: str = "ema", decay: float = 0.99, commitment_weight: float = 0.25, num_quantizers: int = 2,
                 levels: list[int] | None = None, entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
                 kmeans_init: bool = False, threshold_ema_dead_code: float = 0.0) -> None:
        super().__init__()
        self.kind, self.channels = kind, channels
        self.commitment_weight, self.entropy_weight = commitment_weight, entropy_weight
        # the library reads values of its own buffers while building (FSQ's codebook size): on the meta device
        # (a size check before allocating) it is built on the CPU instead; it is a few kilobytes
        on_meta = torch.empty(0).device.type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            self._build(kind, channels, codebook_size, codebook_dim, codebook, decay, num_quantizers, levels,
                        diversity_gamma, kmeans_init, threshold_ema_dead_code)

    def _build(self, kind: str, channels: int, codebook_size: int, codebook_dim: int | None, codebook: str,
               decay: float, num_quantizers: int, levels: list[int] | None, diversity_gamma: float,
               kmeans_init: bool, threshold_ema_dead_code: float) -> None:
        lib = _library()
        self.learned = kind in ("vq", "rvq") and codebook == "learned"
        if kind in ("vq", "rvq"):
            common = dict(dim=channels, codebook_size=codebook_size, codebook_dim=codebook_dim, decay=decay,
                          commitment_weight=0.0,  # vaekit computes commit/codebook in stated units (see above)
                          kmeans_init=kmeans_init, threshold_ema_dead_code=threshold_ema_dead_code,
                          ema_update=not self.learned, learnable_codebook=self.learned)
            if self.learned:
                common["rotation_trick"] = False  # the library pairs a learned codebook with the plain STE
            if kind == "vq":
                self.quantizer = lib.VectorQuantize(**common)
            else:
                self.quantizer = lib.ResidualVQ(num_quantizers=num_quantizers, **common)
            self.codebook_size, self.num_codebooks = codebook_size, (num_quantizers if kind == "rvq" else 1)
        elif kind == "fsq":
            levels = list(levels or [8, 5, 5, 5])
            self.quantizer = lib.FSQ(levels=levels, dim=channels)
            self.codebook_size, self.num_codebooks = math.prod(levels), 1
        elif kind == "lfq":
            self.quantizer = lib.LFQ(dim=channels, codebook_size=codebook_size, entropy_loss_weight=1.0,
                                     commitment_loss_weight=0.0, diversity_gamma=diversity_gamma)
            self.codebook_size, self.num_codebooks = codebook_size, 1
        else:
            raise ValueError(f"unknown bottleneck kind {kind!r} (model.bottleneck.kind: {' | '.join(BOTTLENECK_KINDS)})")

    @property
    def bits_per_position(self) -> float:
        """log2(codebook size) × codebooks: the rate of one latent position in bits."""
        return math.log2(self.codebook_size) * self.num_codebooks

    def encode(self, h: Tensor, sample: bool = True, noise: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """h ``(B, C, *S)`` or ``(B, C)`` -> z_q of the same shape; ``sample``/``noise`` are ignored (deterministic)."""
        tokens = h.flatten(2).transpose(1, 2) if h.dim() > 2 else h.unsqueeze(1)  # (B, N, C)
        info: dict[str, Tensor] = {}
        with torch.autocast(h.device.type, enabled=False):  # codebook distances and EMA updates in fp32
            tokens = tokens.float()
            if self.kind == "lfq":
                (quantized, indices, _), breakdown = self.quantizer(tokens, return_loss_breakdown=True)
                if self.training:
                    per_position = breakdown.per_sample_entropy - self.quantizer.diversity_gamma * breakdown.batch_entropy
                    info["entropy"] = per_position * tokens.shape[1]
            elif self.kind == "fsq":
                quantized, indices = self.quantizer(tokens)
            else:
                quantized, indices, _ = self.quantizer(tokens)
            per_sample = tokens.shape[1] * tokens.shape[2]  # latent elements per sample
            if self.kind != "fsq":
                info["commit"] = (tokens - quantized.detach()).pow(2).mean() * per_sample
            if self.learned:
                codes = self.quantizer.get_output_from_indices(indices)
                info["codebook"] = (tokens.detach() - codes).pow(2).mean() * per_sample
        loss = sum((w * info[k] for k, w in (("commit", self.commitment_weight), ("codebook", 1.0),
                                              ("entropy", self.entropy_weight)) if k in info), h.new_zeros(()).float())
        info["bottleneck_loss"] = loss
        info["indices"] = indices.reshape(h.shape[0], tokens.shape[1], -1)  # (B, N, Q)
        z = quantized.to(h.dtype).transpose(1, 2).reshape(h.shape) if h.dim() > 2 else quantized.to(h.dtype)[:, 0]
        return z, info

    def decode_indices(self, indices: Tensor, latent_shape: tuple[int, ...]) -> Tensor:
        """Codes ``(B, N, Q)`` -> z_q ``(B, *latent_shape)``."""
        if self.kind == "rvq":
            out = self.quantizer.get_output_from_indices(indices)
        elif self.kind == "vq":
            out = self.quantizer.get_output_from_indices(indices[..., 0])
        else:
            out = self.quantizer.indices_to_codes(indices[..., 0])  # (B, N, C) for sequences
        out = out.float()
        if len(latent_shape) == 1:
            return out[:, 0]
        return out.transpose(1, 2).reshape(indices.shape[0], *latent_shape)

    def sample(self, n: int, latent_shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
               dtype: torch.dtype) -> Tensor:
        """Codes drawn uniformly (the prior of a quantised model without a learned prior), decoded to z_q."""
        positions = math.prod(latent_shape[1:]) if len(latent_shape) > 1 else 1
        indices = torch.randint(self.codebook_size, (n, positions, self.num_codebooks), generator=generator,
                                device=device)
        home = next(self.quantizer.buffers()).device  # every quantiser keeps its codes (or levels) in buffers
        with torch.no_grad():
            return self.decode_indices(indices.to(home), latent_shape).to(dtype)


def build_bottleneck(spec: dict[str, Any] | None, channels: int) -> Bottleneck:
    """The bottleneck for ``model.bottleneck`` (a dict of :class:`~vaekit.config.schema.BottleneckConfig` fields;
    None or ``kind: gaussian``: the Gaussian posterior) over ``channels`` latent channels."""
    spec = dict(spec or {})
    kind = spec.pop("kind", "gaussian")
    if kind == "gaussian":
        return GaussianBottleneck()
    return QuantizedBottleneck(kind, channels, **spec)


def codebook_stats(counts: Tensor) -> dict[str, float]:
    """Health of a codebook from code counts ``(Q, K)`` over a validation pass (Q codebooks of K codes).

    Returns:
        ``code_usage`` (fraction of codes used at least once, mean over codebooks), ``perplexity`` (exp of the
        entropy of the code distribution, mean over codebooks; K when every code is equally used) and
        ``dead_codes`` (codes never used, summed over codebooks).
    """
    counts = counts.double()
    total = counts.sum(1, keepdim=True).clamp_min(1)
    p = counts / total
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1)
    used = (counts > 0).double()
    return {"code_usage": used.mean().item(), "perplexity": entropy.exp().mean().item(),
            "dead_codes": float((counts == 0).sum().item())}
