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
weight, for the adaptive adversarial weight; default: the last weight of ``decoder``), and ``recon_logvar`` (a
learned log-variance, needed by ``loss.recon=gaussian``). A module that breaks the protocol gets a one-line
``ModelProtocolError`` saying which method returned what.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.errors import ModelProtocolError
from vaekit.models.base import VAE, VAEOutput
from vaekit.models.layers import LOGVAR_MAX, LOGVAR_MIN


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
        recon = decoded_tensor(self.module.decode(z))
        logvar = getattr(self.module, "recon_logvar", None) if self.recon_kind == "gaussian" else None
        return recon, logvar

    def forward(self, x: Tensor, sample_posterior: bool = True, noise: Tensor | None = None) -> VAEOutput:
        out = super().forward(x, sample_posterior=sample_posterior, noise=noise)
        if out.recon.shape != x.shape:
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
        fn = getattr(self.module, "enable_gradient_checkpointing", None) if enabled else None
        if fn is None and not enabled:
            fn = getattr(self.module, "disable_gradient_checkpointing", None)
        if callable(fn):
            fn()


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
