"""Learned priors p(z): the VampPrior (Tomczak & Welling 2018), a mixture of the posteriors of K pseudo-inputs.

``p(z) = 1/K Σ_k q(z | u_k)`` with learned pseudo-inputs ``u_k`` shaped like the data. The prior is a submodule of
the VAE (``model.prior``), so its pseudo-inputs train with the autoencoder's optimizer and are checkpointed and
exported with its weights; ``model.config["prior"]`` records it so ``build_model_from_config`` rebuilds it. There
is no closed-form KL: the objective uses the sampled estimate ``log q(z|x) − log p(z)`` (``out.info["log_pz"]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vaekit.objectives.iwae import diag_normal_logpdf

Encoder = Callable[[Tensor], tuple[Tensor, Tensor]]


class VampPrior(nn.Module):
    """K learned pseudo-inputs; ``log_prob(z, encode)`` and ``sample(n, encode)`` use the VAE's own encoder.

    The pseudo-inputs are stored unconstrained and squashed by a hard-tanh into [0, 1] (the data range of image
    sources), as in the paper's implementation.
    """

    def __init__(self, pseudo_inputs: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.pseudo = nn.Parameter(torch.rand(pseudo_inputs, *shape) * 0.1 + 0.45)  # (K, *shape)

    def inputs(self) -> Tensor:
        return torch.nn.functional.hardtanh(self.pseudo, 0.0, 1.0)

    def log_prob(self, z: Tensor, encode: Encoder) -> Tensor:
        """log p(z) for ``z`` ``(N, *latent)``: ``logsumexp_k log q(z | u_k) − log K``. Returns ``(N,)`` fp32."""
        mean, logvar = encode(self.inputs())  # (K, *latent)
        dims = mean.dim() - 1
        per = diag_normal_logpdf(z.unsqueeze(1), mean.unsqueeze(0), logvar.unsqueeze(0), dims)  # (N, K)
        return torch.logsumexp(per, dim=1) - math.log(mean.shape[0])

    @torch.no_grad()
    def sample(self, n: int, encode: Encoder, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws: a pseudo-input chosen uniformly, then z ~ q(z | u_k)."""
        mean, logvar = encode(self.inputs())
        k = mean.shape[0]
        gen_device = generator.device if generator is not None else mean.device
        pick = torch.randint(k, (n,), generator=generator, device=gen_device).to(mean.device)
        eps = torch.randn((n, *mean.shape[1:]), generator=generator, device=gen_device).to(mean.device)
        return mean[pick] + torch.exp(0.5 * logvar[pick]) * eps


def attach_prior(model: nn.Module, kind: str, pseudo_inputs: int, shape: tuple[int, ...]) -> None:
    """Give ``model`` the prior ``kind`` (``vampprior``) and record it in ``model.config``."""
    if kind != "vampprior":
        raise ValueError(f"unknown model.prior.kind {kind!r} (normal | vampprior)")
    model.prior = VampPrior(pseudo_inputs, shape)
    model.config["prior"] = {"kind": kind, "pseudo_inputs": pseudo_inputs, "shape": list(shape)}
