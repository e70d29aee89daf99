"""The VAE contract every model family implements, the family registry and model inspection helpers.

A family subclasses :class:`VAE`, builds ``self.encoder`` (x -> ``(B, 2·latent, ...)``: mean and log-variance
stacked on dim 1) and ``self.decoder`` (z -> ``(B, k·C, ...)``, k = 2 for a per-element Gaussian variance,
with a final layer ``self.decoder.head``), stores its rebuild kwargs in ``self.config`` and registers itself
with :func:`register_model`. Reparameterisation, the likelihood heads and prior sampling live here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from vaekit.config.schema import ModelConfig
from vaekit.models.bottleneck import Bottleneck, GaussianBottleneck, build_bottleneck
from vaekit.models.layers import LOGVAR_MAX, LOGVAR_MIN, CheckpointedSequential

RECON_KINDS = ("mse", "l1", "bce", "gaussian")


@dataclass
class VAEOutput:
    """What :meth:`VAE.forward` returns.

    ``recon`` has the shape of ``x`` and holds the likelihood's parameters (logits for ``bce``, the mean
    otherwise); ``mean``/``logvar``/``z`` have shape ``(B, *latent_shape)``; ``recon_logvar`` is set only for
    ``gaussian``: a 0-d learned scalar (broadcastable) or a tensor shaped like ``recon``.

    A quantised bottleneck (``model.bottleneck.kind`` vq/rvq/fsq/lfq) has no posterior variance: ``mean`` and
    ``z`` are the quantised latent z_q and ``logvar`` is None (no KL term exists; the objective skips it).
    ``info`` holds what the bottleneck reports beyond that (see :mod:`vaekit.models.bottleneck`): quantiser
    terms (``commit``, ``codebook``, ``entropy``, their weighted sum ``bottleneck_loss``) and ``indices``.
    """

    recon: Tensor
    mean: Tensor
    logvar: Tensor | None
    z: Tensor
    recon_logvar: Tensor | None = None
    info: dict[str, Tensor] = field(default_factory=dict)


OUTPUT_ACTIVATIONS = ("none", "tanh", "sigmoid")
"""What a built-in decoder's mean passes through (``model.output_activation``)."""

class VAE(nn.Module):
    """Base class: a Gaussian encoder q(z|x), a decoder p(x|z) and a standard-normal prior.

    Args:
        recon_kind: the reconstruction likelihood (``loss.recon``); only ``gaussian`` changes the model.
        gaussian_logvar: with ``gaussian``, ``scalar`` adds one learned log-variance ``self.recon_logvar``
            (init 0, outside the encoder/decoder groups); ``pixel`` makes the decoder emit 2·C channels.
    """

    encoder: nn.Module
    decoder: nn.Module
    config: dict[str, Any]
    latent_shape: tuple[int, ...]

    def __init__(self, recon_kind: str = "bce", gaussian_logvar: str = "scalar", output_activation: str = "none",
                 bottleneck: dict[str, Any] | None = None, latent_channels: int | None = None) -> None:
        super().__init__()
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"unknown output_activation {output_activation!r} (model.output_activation: "
                             f"{' | '.join(OUTPUT_ACTIVATIONS)})")
        if output_activation != "none" and recon_kind == "bce":
            raise ValueError(f"model.output_activation={output_activation} is for mse/l1/gaussian: loss.recon=bce "
                             "trains logits (set model.output_activation=none)")
        self.output_activation = output_activation
        if recon_kind not in RECON_KINDS:
            raise ValueError(f"unknown recon_kind {recon_kind!r} (loss.recon: {' | '.join(RECON_KINDS)})")
        if gaussian_logvar not in ("scalar", "pixel"):
            raise ValueError(
                f"unknown gaussian_logvar {gaussian_logvar!r} (model.gaussian_logvar: scalar | pixel)"
            )
        self.recon_kind = recon_kind
        self.gaussian_logvar = gaussian_logvar
        self.pixel_logvar = recon_kind == "gaussian" and gaussian_logvar == "pixel"
        self.recon_logvar = (
            nn.Parameter(torch.zeros(()))
            if recon_kind == "gaussian" and gaussian_logvar == "scalar"
            else None
        )
        self.bottleneck: Bottleneck = (
            build_bottleneck(bottleneck, latent_channels) if latent_channels is not None else GaussianBottleneck()
        )

    @property
    def quantized(self) -> bool:
        """Whether the latent is quantised (``model.bottleneck.kind`` vq/rvq/fsq/lfq): no posterior variance."""
        return self.bottleneck.quantized

    @property
    def out_multiplier(self) -> int:
        """Decoder output channels per data channel: 2 when the decoder also predicts a log-variance."""
        return 2 if self.pixel_logvar else 1

    def features(self, x: Tensor) -> Tensor:
        """x ``(B, *shape)`` -> the encoder's output, the bottleneck's input (families check input sizes here)."""
        return self.encoder(x)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x ``(B, *shape)`` -> posterior ``(mean, logvar)``, each ``(B, *latent_shape)``; logvar in [-30, 20].

        A quantised model returns ``(z_q, None)``.
        """
        h = self.features(x)
        if self.quantized:
            return self.bottleneck(h)[0], None
        _, info = self.bottleneck(h, sample=False)
        return info["mean"], info["logvar"]

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """z ``(B, *latent_shape)`` -> ``(recon, recon_logvar)``; recon ``(B, *shape)``."""
        out = self.decoder(z)  # (B, k·C, ...)
        logvar = self.recon_logvar
        if self.pixel_logvar:
            out, logvar = out.chunk(2, dim=1)
            logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if self.output_activation != "none":
            out = torch.tanh(out) if self.output_activation == "tanh" else torch.sigmoid(out)
        return out, logvar

    def forward(self, x: Tensor, sample_posterior: bool = True, noise: Tensor | None = None) -> VAEOutput:
        """Encode, draw z = mean + exp(logvar/2)·ε (or z = mean), decode.

        ε is ``noise`` when given (the trainer draws it for the global batch so data-parallel runs match a single
        process), else ``randn_like`` on the global RNG, so a restored RNG state reproduces the run.
        With ``noise`` of shape ``(B, S, *latent)`` it draws S samples per input (importance-weighted objectives):
        ``z`` is then ``(B, S, *latent)`` and ``recon`` ``(B, S, *shape)``. A model with a learned prior
        (``self.prior``) reports ``info["log_pz"]`` for each z.
        """
        if self.quantized:  # deterministic: sample_posterior and noise do not apply
            z, info = self.bottleneck(self.features(x))
            recon, recon_logvar = self.decode(z)
            return VAEOutput(recon=recon, mean=z, logvar=None, z=z, recon_logvar=recon_logvar, info=info)
        mean, logvar = self.encode(x)
        multi = noise is not None and noise.dim() == mean.dim() + 1
        if sample_posterior:
            eps = torch.randn_like(mean) if noise is None else noise.to(mean.dtype)
            std = torch.exp(0.5 * logvar)
            z = mean.unsqueeze(1) + std.unsqueeze(1) * eps if multi else mean + std * eps
        else:
            z, multi = mean, False
        recon, recon_logvar = self.decode(z.flatten(0, 1) if multi else z)
        if multi:
            recon = recon.unflatten(0, z.shape[:2])
            if recon_logvar is not None and recon_logvar.dim() > 0:
                recon_logvar = recon_logvar.unflatten(0, z.shape[:2])
        info = {}
        prior = getattr(self, "prior", None)
        if prior is not None:
            info["log_pz"] = prior.log_prob(z.flatten(0, 1) if multi else z, self.encode).view(z.shape[: 2 if multi else 1])
        return VAEOutput(recon=recon, mean=mean, logvar=logvar, z=z, recon_logvar=recon_logvar, info=info)

    def latent_shape_for(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The latent shape for one input of ``input_shape`` (spatial latents follow the input's size)."""
        return tuple(self.latent_shape)

    def sample(
        self, n: int, generator: torch.Generator | None = None, input_shape: tuple[int, ...] | None = None
    ) -> Tensor:
        """Decode ``n`` draws from the prior N(0, I) (quantised: uniformly drawn codes): returns recon
        ``(n, *shape)`` (logits for ``bce``).

        ``input_shape`` picks the output size of fully-convolutional models (default: the size built for).
        """
        param = next(self.parameters())
        device = generator.device if generator is not None else param.device
        latent = self.latent_shape_for(input_shape) if input_shape is not None else tuple(self.latent_shape)
        prior = getattr(self, "prior", None)
        if prior is not None:
            z = prior.sample(n, self.encode, generator)
        else:
            z = self.bottleneck.sample(n, latent, generator, device, param.dtype)
        return self.decode(z.to(param.device))[0]

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's final layer (for the adaptive adversarial weight)."""
        return self.decoder.head.weight

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Turn activation checkpointing of the encoder/decoder blocks on or off."""
        for module in self.modules():
            if isinstance(module, CheckpointedSequential):
                module.grad_checkpointing = enabled
        if "grad_checkpointing" in getattr(self, "config", {}):
            self.config["grad_checkpointing"] = enabled

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> VAE:
        """Build from the ``model`` config section, the per-sample data shape and ``loss.recon``."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ registry
MODELS: dict[str, type[VAE]] = {}
V = TypeVar("V", bound=type[VAE])
F = TypeVar("F", bound=Callable[..., None])


def register_to_config(init: F) -> F:
    """Decorator for a family's ``__init__``: record the arguments it was called with (defaults filled in,
    sequences as lists) in ``self.config``, plus ``arch``, so ``build_model_from_config(model.config)`` rebuilds
    it. The signature is the one source of truth (the idea of diffusers' ``@register_to_config``)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: VAE, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {k: list(v) if isinstance(v, tuple | list) else v for k, v in bound.arguments.items() if k != "self"}
        # set before the body runs: a family may read its own config while building (error messages)
        object.__setattr__(self, "config", {"arch": getattr(type(self), "arch", type(self).__name__), **config})
        init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def register_model(name: str) -> Callable[[V], V]:
    """Class decorator: make a VAE family buildable as ``model.arch: name``."""

    def register(cls: V) -> V:
        MODELS[name] = cls
        cls.arch = name
        return cls

    return register


def build_model(cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> VAE:
    """Build the family named by ``cfg.arch`` for per-sample data ``shape`` and likelihood ``recon_kind``."""
    if cfg.arch not in MODELS:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; registered: {sorted(MODELS)}")
    model = MODELS[cfg.arch].from_model_config(cfg, tuple(shape), recon_kind)
    if cfg.prior.kind != "normal":
        from vaekit.models.priors import attach_prior

        attach_prior(model, cfg.prior.kind, cfg.prior.pseudo_inputs, tuple(shape))
    return model


def build_model_from_config(config: dict[str, Any]) -> VAE:
    """Rebuild a model from its :attr:`VAE.config` (e.g. read back from JSON beside ``model.safetensors``)."""
    kwargs = dict(config)
    arch = kwargs.pop("arch")
    prior = kwargs.pop("prior", None)
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r} in model config; registered: {sorted(MODELS)}")
    model = MODELS[arch](**kwargs)
    if prior is not None:
        from vaekit.models.priors import attach_prior

        attach_prior(model, prior["kind"], prior["pseudo_inputs"], tuple(prior["shape"]))
    return model


# ------------------------------------------------------------------------------------------ inspection
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_summary(model: nn.Module, example: Tensor | None = None) -> str:
    """A table of the model's blocks (two levels deep) with parameter counts, then total/trainable counts.

    Args:
        model: any module.
        example: optional input batch; when given, one forward pass (no grad) records each block's output shape.
    """
    rows: list[tuple[str, nn.Module | nn.Parameter]] = []
    for name, child in model.named_children():
        rows.append((name, child))
        rows.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
    rows.extend(model.named_parameters(recurse=False))  # direct parameters, e.g. recon_logvar

    shapes: dict[str, str] = {}
    if example is not None:
        hooks = []
        for name, module in rows:
            if isinstance(module, nn.Module):

                def record(_m: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
                    if isinstance(out, Tensor):
                        shapes[name] = str(tuple(out.shape))

                hooks.append(module.register_forward_hook(record))
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(example)
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()

    table = [("block", "type", "output", "params")]
    for name, item in rows:
        if isinstance(item, nn.Parameter):
            table.append((name, "Parameter", "", f"{item.numel():,}"))
        else:
            table.append((name, type(item).__name__, shapes.get(name, ""), f"{count_parameters(item):,}"))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=False)), row[3].rjust(widths[3])])
        for row in table
    ]
    rule = "-" * len(lines[0])
    lines.insert(1, rule)
    lines += [
        rule,
        f"total params: {count_parameters(model):,}",
        f"trainable params: {count_parameters(model, trainable_only=True):,}",
    ]
    return "\n".join(lines)
