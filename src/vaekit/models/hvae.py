"""HVAE: a VAE with two stochastic layers, x → z1 → z2 (the IWAE paper's second architecture, Burda et al. 2016).

Inference ``q(z1|x) q(z2|z1)``, generation ``p(z2) p(z1|z2) p(x|z1)``, every conditional a diagonal Gaussian given
by an MLP (the paper: 784-200-200-100 and 100-100-100-50, tanh). The latent seen by the rest of vaekit is
``[z1, z2]`` (``latent_shape = (d1 + d2,)``): the trainer's noise covers both layers, ``decode`` reads z1, and the
forward reports ``info["log_qz"]`` and ``info["log_pz"]`` (both layers), from which the objectives compute the
sampled KL (ELBO) or the importance weights (IWAE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vaekit.config.schema import ModelConfig
from vaekit.models.base import LOGVAR_MAX, LOGVAR_MIN, VAE, VAEOutput, register_model, register_to_config
from vaekit.models.layers import build_activation
from vaekit.objectives.iwae import diag_normal_logpdf, standard_normal_logpdf


def _mlp(widths: Sequence[int], d_out: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), build_activation(activation)]
    layers.append(nn.Linear(widths[-1], d_out))
    return nn.Sequential(*layers)


def _gauss(h: Tensor) -> tuple[Tensor, Tensor]:
    mean, logvar = h.chunk(2, dim=-1)
    return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class _Decoder(nn.Module):
    def __init__(self, z1_from_z2: nn.Module, x_from_z1: nn.Module) -> None:
        super().__init__()
        self.z1_from_z2, self.x_from_z1 = z1_from_z2, x_from_z1

    @property
    def head(self) -> nn.Module:
        """The final layer of p(x|z1) (the adaptive adversarial weight's ``last_layer``)."""
        return self.x_from_z1[-1]


@register_model("hvae")
class HierarchicalVAE(VAE):
    """Two stochastic layers on flattened inputs.

    Args:
        input_shape: per-sample shape.
        latent_dim, hidden_dims: z1's size and the x ↔ z1 networks' hidden widths.
        top_latent_dim, top_hidden_dims: z2's size and the z1 ↔ z2 networks' hidden widths.
        activation: hidden activation.
        recon_kind: the likelihood (``bce`` for binarized MNIST).
    """

    @register_to_config
    def __init__(self, input_shape: Sequence[int], latent_dim: int = 100, hidden_dims: Sequence[int] = (200, 200),
                 top_latent_dim: int = 50, top_hidden_dims: Sequence[int] = (100, 100), activation: str = "relu",
                 recon_kind: str = "bce") -> None:
        super().__init__(recon_kind, "scalar")
        self.input_shape = tuple(input_shape)
        d, d1, d2 = math.prod(self.input_shape), latent_dim, top_latent_dim
        self.d1, self.d2 = d1, d2
        self.latent_shape = (d1 + d2,)
        self.encoder = nn.ModuleDict({
            "z1": _mlp([d, *hidden_dims], 2 * d1, activation),
            "z2": _mlp([d1, *top_hidden_dims], 2 * d2, activation),
        })
        self.decoder = _Decoder(_mlp([d2, *reversed(top_hidden_dims)], 2 * d1, activation),
                                _mlp([d1, *reversed(hidden_dims)], d, activation))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior statistics ``[μ1, μ2(μ1)]``, ``[logσ1², logσ2²(μ1)]`` (z2's taken at z1 = μ1)."""
        m1, lv1 = _gauss(self.encoder["z1"](x.flatten(1)))
        m2, lv2 = _gauss(self.encoder["z2"](m1))
        return torch.cat([m1, m2], -1), torch.cat([lv1, lv2], -1)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """p(x | z1) from ``z = [z1, z2]`` (or z1 alone); returns ``(recon (N, *shape), recon_logvar)``."""
        out = self.decoder.x_from_z1(z[..., : self.d1])
        return out.view(*z.shape[:-1], *self.input_shape), self.recon_logvar

    def forward(self, x: Tensor, sample_posterior: bool = True, noise: Tensor | None = None) -> VAEOutput:
        """Draw z1 ~ q(z1|x), z2 ~ q(z2|z1) (``noise`` ``(B, d1+d2)`` or ``(B, S, d1+d2)``), decode z1."""
        d1 = self.d1
        m1, lv1 = _gauss(self.encoder["z1"](x.flatten(1)))  # (B, d1)
        multi = sample_posterior and noise is not None and noise.dim() == 3
        if not sample_posterior:  # the posterior means of both layers
            eps = torch.zeros((x.shape[0], d1 + self.d2), device=x.device, dtype=m1.dtype)
        elif noise is None:
            eps = torch.randn((x.shape[0], d1 + self.d2), device=x.device, dtype=m1.dtype)
        else:
            eps = noise.to(m1.dtype)
        mu1, l1 = (m1.unsqueeze(1), lv1.unsqueeze(1)) if multi else (m1, lv1)
        z1 = mu1 + torch.exp(0.5 * l1) * eps[..., :d1]
        m2, lv2 = _gauss(self.encoder["z2"](z1))
        z2 = m2 + torch.exp(0.5 * lv2) * eps[..., d1:]
        pm1, plv1 = _gauss(self.decoder.z1_from_z2(z2))
        log_qz = diag_normal_logpdf(z1, mu1, l1, 1) + diag_normal_logpdf(z2, m2, lv2, 1)
        log_pz = standard_normal_logpdf(z2, 1) + diag_normal_logpdf(z1, pm1, plv1, 1)
        recon, recon_logvar = self.decode(z1)
        first = (lambda t: t[:, 0]) if multi else (lambda t: t)  # noqa: E731
        return VAEOutput(recon=recon, mean=torch.cat([m1, first(m2)], -1), logvar=torch.cat([lv1, first(lv2)], -1),
                         z=torch.cat([z1, z2], -1), recon_logvar=recon_logvar,
                         info={"log_qz": log_qz, "log_pz": log_pz})

    def sample(self, n: int, generator: torch.Generator | None = None,
               input_shape: tuple[int, ...] | None = None) -> Tensor:
        """z2 ~ N(0, I), z1 ~ p(z1|z2), decoded: ``(n, *shape)`` (logits for ``bce``)."""
        param = next(self.parameters())
        device = generator.device if generator is not None else param.device
        z2 = torch.randn((n, self.d2), generator=generator, device=device).to(param)
        pm1, plv1 = _gauss(self.decoder.z1_from_z2(z2))
        eps = torch.randn((n, self.d1), generator=generator, device=device).to(param)
        return self.decode(pm1 + torch.exp(0.5 * plv1) * eps)[0]

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> HierarchicalVAE:
        if recon_kind == "gaussian":
            raise ValueError("model.arch=hvae: loss.recon=gaussian is not supported (use bce, mse or l1)")
        return cls(shape, cfg.latent_dim, cfg.hidden_dims, cfg.top.latent_dim, cfg.top.hidden_dims,
                   activation=cfg.activation, recon_kind=recon_kind)
