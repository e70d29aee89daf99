"""Any autoencoder as a vaekit VAE: the small protocol a user's ``nn.Module`` follows, and its adapter.

The protocol (what ``vaekit.train(model=module)`` needs):

* ``encode(x)`` returns the Gaussian posterior q(z|x) as a ``(mean, logvar)`` pair, a ``torch.distributions.Normal``,
  or an object with a ``latent_dist`` attribute that has ``mean`` and ``logvar`` (diffusers' ``AutoencoderKL``
  returns ``AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution)``);
* ``decode(z)`` returns a tensor shaped like ``x``, or an object with a ``sample`` attribute (diffusers'
  ``DecoderOutput``), or a tuple whose first element is that tensor. It holds the likelihood's parameters, as for
  the built-in models: logits for ``loss.recon=bce``, the mean otherwise.

Optional: ``encoder`` / ``decoder`` submodules (the groups that ``freeze``, ``optim.group_lr`` and the
``decoder`` finetune mode address; any submodule path works for freezing), ``last_layer`` (the decoder's final
weight, for the adaptive adversarial weight; default: the last weight of ``decoder``), ``recon_logvar`` (a
learned log-variance, needed by ``loss.recon=gaussian``) and ``decoder_output`` (what ``decode`` returns:
``"logits"``, ``"probabilities"`` or ``"mean"``; under ``loss.recon=bce`` probabilities, or a mean, which is the
same thing, are trained as Bernoulli probabilities, clamped to [1e-6, 1 - 1e-6]). Undeclared, a decoder whose
output is the output of an ``nn.Sigmoid`` module is detected on the first forward and treated as probabilities,
with a warning. A module that breaks the protocol gets a one-line ``ModelProtocolError`` saying which method
returned what.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from vaekit.errors import ModelProtocolError
from vaekit.models.base import VAE, VAEOutput
from vaekit.models.layers import LOGVAR_MAX, LOGVAR_MIN

logger = logging.getLogger(__name__)
DECODER_OUTPUTS = ("logits", "probabilities", "mean")
PROB_EPS = 1e-6
"""Probabilities are clamped to [eps, 1 - eps] before their logit (BCE of a probability of exactly 0 or 1 is inf)."""


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value[:3])})"
    return f"a {type(value).__name__}"


def posterior_params(value: Any, name: str = "encode") -> tuple[Tensor, Tensor]:
    """``(mean, logvar)`` from whatever ``encode`` returned, or a one-line ``ModelProtocolError``."""
    dist = getattr(value, "latent_dist", None)
    if dist is not None:
        value = dist
    if isinstance(value, torch.distributions.Normal):
        return value.loc, 2.0 * value.scale.log()
    mean, logvar = getattr(value, "mean", None), getattr(value, "logvar", None)
    if isinstance(mean, Tensor) and isinstance(logvar, Tensor):
        return mean, logvar
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, Tensor) for v in value):
        mean, logvar = value
        if mean.shape != logvar.shape:
            raise ModelProtocolError(
                f"model.{name}(x) returned mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)}; "
                "they must have the same shape"
            )
        return mean, logvar
    raise ModelProtocolError(
        f"model.{name}(x) returned {_describe(value)}; expected (mean, logvar), a torch.distributions.Normal, "
        "or an object with latent_dist.mean and latent_dist.logvar"
    )


def decoded_tensor(value: Any, name: str = "decode") -> Tensor:
    """The reconstruction tensor from whatever ``decode`` returned, or a one-line ``ModelProtocolError``."""
    sample = getattr(value, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    if isinstance(value, Tensor):
        return value
    raise ModelProtocolError(
        f"model.{name}(z) returned {_describe(value)}; expected a tensor, an object with a 'sample' tensor, "
        "or a tuple whose first element is the tensor"
    )


class ModuleVAE(VAE):
    """Wraps a user's autoencoder so the engine sees the built-in VAE contract.

    ``module`` is kept as the one submodule ``module``; checkpoints and exports hold *its* state dict (no
    prefix), so the exported ``model.safetensors`` loads straight back into a fresh instance of the user's class.
    """

    def __init__(self, module: nn.Module, recon_kind: str = "bce") -> None:
        super().__init__(recon_kind if recon_kind != "gaussian" else "mse")
        self.recon_kind = recon_kind
        for method in ("encode", "decode"):
            if not callable(getattr(module, method, None)):
                raise ModelProtocolError(
                    f"model: {type(module).__name__} has no {method}() method; a model passed to vaekit.train "
                    "needs encode(x) -> posterior and decode(z) -> reconstruction"
                )
        _check_signatures(module)
        if next(module.parameters(), None) is None:
            raise ModelProtocolError(f"model: {type(module).__name__} has no parameters to train")
        self.module = module
        self.config = {"arch": "custom", "class": f"{type(module).__module__}.{type(module).__qualname__}"}
        self._latent_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.decoder_output = _declared_output(module, recon_kind)
        self._sniffed = self.decoder_output is not None or recon_kind != "bce"
        logvar = getattr(module, "recon_logvar", None)
        if recon_kind == "gaussian" and not isinstance(logvar, Tensor):
            raise ModelProtocolError(
                f"loss.recon=gaussian needs a learned variance: {type(module).__name__} has no recon_logvar "
                "tensor; add one (a 0-d nn.Parameter) or use loss.recon=mse"
            )

    # groups ------------------------------------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        return _child(self.module, "encoder")

    @property
    def decoder(self) -> nn.Module:  # type: ignore[override]
        return _child(self.module, "decoder")

    def export_module(self) -> nn.Module:
        return self.module

    @property
    def last_layer(self) -> nn.Parameter:
        explicit = getattr(self.module, "last_layer", None)
        if isinstance(explicit, Tensor):
            return explicit
        weights = [p for p in self.decoder.parameters() if p.ndim >= 2]
        if not weights:
            weights = [p for p in self.module.parameters() if p.ndim >= 2]
        if not weights:
            raise ModelProtocolError("model: no weight matrix found for the adaptive adversarial weight")
        return weights[-1]

    # the protocol ------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = posterior_params(self.module.encode(x))
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self._sniffed:
            self._sniff_sigmoid(z)
        recon = decoded_tensor(self.module.decode(z))
        if self.recon_kind == "bce" and self.decoder_output in ("probabilities", "mean"):
            # the objective's bce works on logits: BCE(logit(p), t) is the Bernoulli NLL of p itself
            recon = torch.logit(recon.float().clamp(PROB_EPS, 1.0 - PROB_EPS)).to(recon.dtype)
        logvar = getattr(self.module, "recon_logvar", None) if self.recon_kind == "gaussian" else None
        return recon, logvar

    def _sniff_sigmoid(self, z: Tensor) -> None:
        """Once, on the first decode: is the decoder's output the output of an ``nn.Sigmoid`` module?"""
        self._sniffed = True
        outputs: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o))
                 for m in self.module.modules() if isinstance(m, nn.Sigmoid)]
        if not hooks:
            return
        was_training = self.module.training
        devices = [z.device] if z.device.type == "cuda" else []
        try:  # eval mode and a forked RNG: no norm statistics updated, no random numbers drawn
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                self.module.eval()
                recon = decoded_tensor(self.module.decode(z.detach()))
        finally:
            self.module.train(was_training)
            for hook in hooks:
                hook.remove()
        if any(o is recon for o in outputs):
            self.decoder_output = "probabilities"
            logger.warning(
                "warning: %s.decode ends in nn.Sigmoid: its outputs are trained as Bernoulli probabilities under "
                "loss.recon=bce (declare decoder_output = 'probabilities' on the module to silence this, or "
                "'logits' if they are not)", type(self.module).__name__)

    def forward(self, x: Tensor, sample_posterior: bool = True, noise: Tensor | None = None) -> VAEOutput:
        out = super().forward(x, sample_posterior=sample_posterior, noise=noise)
        if out.recon.shape[out.recon.dim() - x.dim() + 1 :] != x.shape[1:] or out.recon.shape[0] != x.shape[0]:
            raise ModelProtocolError(
                f"model.decode(z) returned shape {tuple(out.recon.shape)} for input {tuple(x.shape)}; the "
                "reconstruction must have the input's shape"
            )
        return out

    def latent_shape_for(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Found by encoding one zero input (cached per input shape); no RNG is touched."""
        key = tuple(input_shape)
        if key not in self._latent_shapes:
            param = next(self.module.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
            was_training = self.module.training
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                self.module.eval()
                try:
                    mean, _ = posterior_params(self.module.encode(torch.zeros((1, *key), device=device, dtype=dtype)))
                except RuntimeError as err:  # torch's shape errors: the data's items do not fit this model
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                    raise ModelProtocolError(
                        f"model: {type(self.module).__name__}.encode cannot take items of shape {key} ({first}); "
                        "make the data's shape and the model's input match"
                    ) from err
                finally:
                    self.module.train(was_training)
            self._latent_shapes[key] = tuple(mean.shape[1:])
        return self._latent_shapes[key]

    @property
    def latent_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        if not self._latent_shapes:
            raise ModelProtocolError("model: latent shape unknown before the first input shape is seen")
        return next(iter(self._latent_shapes.values()))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """The module's own ``enable_gradient_checkpointing`` (diffusers) when it has one; else its ``encoder``
        and ``decoder`` children recompute their activations in the backward (``torch.utils.checkpoint``); a
        module with neither is refused in one line rather than silently trained without it."""
        own = "enable_gradient_checkpointing" if enabled else "disable_gradient_checkpointing"
        fn = getattr(self.module, own, None)
        if callable(fn):
            fn()
            return
        children = [c for name in ("encoder", "decoder") if isinstance(c := getattr(self.module, name, None), nn.Module)]
        if enabled and not children:
            raise ModelProtocolError(
                f"model.grad_checkpointing: {type(self.module).__name__} has no enable_gradient_checkpointing() "
                "and no encoder/decoder submodules to checkpoint; add one or set model.grad_checkpointing=false"
            )
        for child in children:
            _checkpoint_forward(child, enabled)


def _checkpoint_forward(child: nn.Module, enabled: bool) -> None:
    """Make ``child``'s forward recompute in the backward (training with grad only); state-dict keys unchanged."""
    original = child.__dict__.pop("_vaekit_forward", None)
    if original is not None:  # undo an earlier wrap first
        child.__dict__.pop("forward", None)
    if not enabled:
        return
    plain = child.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if child.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(plain, *args, use_reentrant=False, **kwargs)
        return plain(*args, **kwargs)

    child.__dict__["_vaekit_forward"] = plain
    child.__dict__["forward"] = forward


def _declared_output(module: nn.Module, recon_kind: str) -> str | None:
    """The module's ``decoder_output`` attribute, checked against ``loss.recon``."""
    declared = getattr(module, "decoder_output", None)
    if declared is None:
        return None
    if declared not in DECODER_OUTPUTS:
        raise ModelProtocolError(
            f"model: {type(module).__name__}.decoder_output={declared!r}; choose one of {', '.join(DECODER_OUTPUTS)}"
        )
    if declared == "logits" and recon_kind != "bce":
        raise ModelProtocolError(
            f"model: {type(module).__name__}.decoder_output='logits' needs loss.recon=bce (got {recon_kind!r}); "
            "return the mean for mse/l1/gaussian"
        )
    return declared


def _check_signatures(module: nn.Module) -> None:
    """``encode(x)`` and ``decode(z)`` must each take one tensor (checked before anything runs)."""
    for method in ("encode", "decode"):
        try:
            inspect.signature(getattr(module, method)).bind(None)
        except TypeError:
            names = ", ".join(inspect.signature(getattr(module, method)).parameters)
            raise ModelProtocolError(
                f"model: {type(module).__name__}.{method}({names}) must take one tensor: encode(x) and decode(z)"
            ) from None
        except ValueError:  # no signature to read (a builtin): it is tried on the first batch
            pass


def _child(module: nn.Module, name: str) -> nn.Module:
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Module) else module


def as_vae(module: nn.Module, recon_kind: str) -> VAE:
    """A built-in VAE as is; any other module wrapped in :class:`ModuleVAE`."""
    if isinstance(module, VAE):
        return module
    if not isinstance(module, nn.Module):
        raise ModelProtocolError(f"model: expected an nn.Module (or a dict for the model section), got {_describe(module)}")
    return ModuleVAE(module, recon_kind)


def export_module(model: nn.Module) -> nn.Module:
    """The module whose state dict is checkpointed and exported (the user's own module for a wrapped one)."""
    return model.export_module() if isinstance(model, ModuleVAE) else model
