"""Pretrained diffusers autoencoders as vaekit VAEs (``model.arch=diffusers``).

Without ``model.pretrained``, ``model.diffusers_config`` (a JSON file, e.g. a ``config.json``, or a mapping of
constructor arguments) builds the class with random weights, to train from scratch.

``model.pretrained`` names a folder written by ``save_pretrained`` (loaded offline) or a Hugging Face hub id
(the local hub cache first, then a download where the hub is reachable); ``model.class`` names the diffusers
class, loaded as ``getattr(diffusers, class).from_pretrained(...)``. The module then goes through the same
adapter as any user model (:class:`~vaekit.models.adapter.ModuleVAE`): diffusers' KL autoencoders return
``AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution)`` from ``encode`` and ``DecoderOutput(sample)``
from ``decode``, which is the protocol. Images and video (vaekit: [0, 1]) are mapped to the [-1, 1] range the
diffusers VAEs were trained on and back; audio (vaekit: [-1, 1]) is passed as is.

Checkpoints and exports hold the diffusers module's own state dict; ``model_config.json`` holds its diffusers
config, so ``vaekit.load_model(run_dir)`` rebuilds it without the original weights, and
``save_diffusers(module, dir)`` writes a folder that ``from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.config.schema import ModelConfig
from vaekit.errors import ConfigError, MissingWeightsError
from vaekit.models.adapter import ModuleVAE
from vaekit.models.base import register_model

SUPPORTED = (
    "AutoencoderKL", "AutoencoderKLCogVideoX", "AutoencoderKLLTXVideo", "AutoencoderKLWan", "AutoencoderKLMochi",
    "AutoencoderKLHunyuanVideo", "AutoencoderKLAllegro", "AutoencoderKLQwenImage", "AutoencoderKLMagvit",
    "AsymmetricAutoencoderKL", "AutoencoderOobleck",
)
"""Classes whose ``encode`` returns ``latent_dist`` with ``mean``/``logvar`` and whose ``decode`` returns
``.sample`` (checked by reading diffusers' code; AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLWan,
AutoencoderKLLTXVideo and AutoencoderOobleck also with tiny random configs in the tests). Not these:
AutoencoderKLCosmos (an IdentityDistribution posterior, no logvar), AutoencoderKLTemporalDecoder (decode needs
num_frames), VQModel, AutoencoderTiny, AutoencoderDC (no Gaussian posterior)."""
UNFIT = {
    "AutoencoderKLTemporalDecoder": "its decode(z, num_frames) needs the clip length",
    "AutoencoderKLCosmos": "its posterior is an IdentityDistribution without a log-variance",
    "VQModel": "it has a quantized, not a Gaussian, latent",
    "AutoencoderTiny": "its encoder is deterministic (no Gaussian posterior)",
    "AutoencoderDC": "its encoder is deterministic (no Gaussian posterior)",
}
_TIMEOUT_S = "10"  # hub metadata/download socket timeouts (seconds), unless the user set their own


def import_diffusers() -> Any:
    """The ``diffusers`` package, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "model.arch=diffusers needs the diffusers package: pip install 'vaekit[diffusers]'"
        ) from None
    return diffusers


def diffusers_class(name: str) -> type[nn.Module]:
    if name in UNFIT:
        raise ConfigError(f"model.class: {name} does not fit vaekit's VAE protocol ({UNFIT[name]}); "
                          f"autoencoders that fit: {', '.join(SUPPORTED)}")
    diffusers = import_diffusers()
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "from_pretrained")):
        raise ConfigError(
            f"model.class: diffusers {diffusers.__version__} has no model class {name!r}; "
            f"autoencoders that fit vaekit: {', '.join(SUPPORTED)}"
        )
    return cls


def _hub_offline() -> bool:
    import huggingface_hub.constants as hub

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(getattr(hub, "HF_HUB_OFFLINE", False))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:240]


def load_pretrained(cfg: ModelConfig) -> nn.Module:
    """``getattr(diffusers, cfg.class_name).from_pretrained(cfg.pretrained, ...)``, with one-line errors.

    A local folder loads with ``local_files_only``; a hub id loads from the hub cache, else (unless
    ``HF_HUB_OFFLINE`` is set) from the hub with 10 s socket timeouts; when neither works the
    ``MissingWeightsError`` names the command that fetches it.
    """
    cls = diffusers_class(cfg.class_name)
    source = str(cfg.pretrained)
    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, cfg.torch_dtype)}
    for key in ("subfolder", "variant", "revision"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    local = Path(source).expanduser()
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        folder = local / cfg.subfolder if cfg.subfolder else local
        if not (folder / "config.json").is_file():
            raise MissingWeightsError(
                f"model.pretrained: {folder} has no config.json; give a folder written by save_pretrained "
                "(or a hub id such as stabilityai/sd-vae-ft-mse)"
            )
        try:
            return cls.from_pretrained(str(local), local_files_only=True, **kwargs)
        except (OSError, ValueError, RuntimeError) as err:
            raise MissingWeightsError(f"model.pretrained: cannot load {cfg.class_name} from {local}: "
                                      f"{_first_line(err)}") from None
    try:  # a hub id: the local hub cache first (works offline)
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    fetch = (f"fetch it where the hub is reachable (`hf download {source} --local-dir DIR`, or "
             f"{cfg.class_name}.from_pretrained({source!r}).save_pretrained(DIR)) and set model.pretrained=DIR")
    if _hub_offline():
        raise MissingWeightsError(f"model.pretrained={source!r} is not in the local hub cache and HF_HUB_OFFLINE "
                                  f"is set; {fetch}") from None
    for var in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        os.environ.setdefault(var, _TIMEOUT_S)
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as err:  # noqa: BLE001 (hub errors come as OSError, HTTP and connection errors)
        raise MissingWeightsError(
            f"model.pretrained={source!r}: cannot load {cfg.class_name} from the Hugging Face hub "
            f"({_first_line(err)}); {fetch}"
        ) from None


def read_diffusers_config(spec: str | dict[str, Any]) -> dict[str, Any]:
    """``model.diffusers_config``: a mapping as is, or a JSON file (a folder: its ``config.json``)."""
    if isinstance(spec, dict):
        return dict(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"model.diffusers_config: cannot read {path} ({err.strerror or err}); give a JSON file of "
                          "constructor arguments or a mapping") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"model.diffusers_config: {path} is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.diffusers_config: {path} holds a {type(data).__name__}, not a mapping")
    return data


def build_from_config(cfg: ModelConfig) -> nn.Module:
    """``getattr(diffusers, cfg.class_name).from_config(...)`` with random weights (train from scratch)."""
    cls = diffusers_class(cfg.class_name)
    config = {k: v for k, v in read_diffusers_config(cfg.diffusers_config or {}).items() if not k.startswith("_")}
    try:
        module = cls.from_config(config)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as err:
        raise ConfigError(f"model.diffusers_config: {cfg.class_name} refuses it: {_first_line(err)}") from None
    return module.to(getattr(torch, cfg.torch_dtype))


def build_module(cfg: ModelConfig) -> nn.Module:
    """The diffusers module of ``model``: pretrained weights, or random weights from ``model.diffusers_config``."""
    return load_pretrained(cfg) if cfg.pretrained else build_from_config(cfg)


def config_of(module: nn.Module) -> dict[str, Any]:
    """The module's diffusers config as plain JSON values (what ``from_config`` rebuilds it from)."""
    to_json = getattr(module, "to_json_string", None)
    if callable(to_json):
        return json.loads(to_json())
    return json.loads(json.dumps(dict(getattr(module, "config", {})), default=str))


@register_model("diffusers")
class DiffusersVAE(ModuleVAE):
    """A diffusers autoencoder behind the VAE contract.

    Args:
        class_name: the diffusers class (``AutoencoderKL``...).
        config: its diffusers config (a random-weight module is built from it when ``module`` is None).
        recon_kind: ``loss.recon``: mse or l1 (the decoder outputs pixels/samples, not logits).
        rescale: map [0, 1] inputs to [-1, 1] and outputs back (images and video).
        pretrained: where the weights came from (informational).
        module: the loaded module.
    """

    def __init__(self, class_name: str, config: dict[str, Any], recon_kind: str = "mse", rescale: bool = True,
                 pretrained: str | None = None, module: nn.Module | None = None) -> None:
        if recon_kind not in ("mse", "l1"):
            raise ValueError(
                f"loss.recon: {recon_kind} is not supported with model.arch=diffusers (its decoder outputs samples, "
                "not logits or a variance); use loss.recon=mse or l1"
            )
        if module is None:
            module = diffusers_class(class_name).from_config(config)
        super().__init__(module, recon_kind)
        self.rescale = rescale
        self.config = {"arch": "diffusers", "class_name": class_name, "config": config_of(module),
                       "recon_kind": recon_kind, "rescale": rescale, "pretrained": pretrained}

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, shape: tuple[int, ...], recon_kind: str) -> DiffusersVAE:
        module = build_module(cfg)
        rescale = len(shape) in (3, 4)  # images (C, H, W) and video (C, T, H, W) are [0, 1] in vaekit
        vae = cls(cfg.class_name, config_of(module), recon_kind, rescale, cfg.pretrained, module)
        vae.latent_shape_for(tuple(shape))  # known from the start, like a built-in family's
        return vae

    @property
    def decoder(self) -> nn.Module:  # type: ignore[override]
        return getattr(self.module, "decoder", self.module)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().encode(x * 2 - 1 if self.rescale else x)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        recon, logvar = super().decode(z)
        return ((recon + 1) / 2 if self.rescale else recon), logvar

    def latent_shape_for(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return super().latent_shape_for(input_shape)
        except RuntimeError as err:  # e.g. a clip length the temporal compression cannot take
            raise ValueError(f"{type(self.module).__name__} cannot encode inputs of shape {tuple(input_shape)} "
                             f"({_first_line(err)}); check data.channels, data.image_size, data.frames") from None

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        """Also takes the diffusers module's own keys (an exported ``model.safetensors``)."""
        if state and not any(k.startswith("module.") for k in state):
            return self.module.load_state_dict(state, strict=strict, assign=assign)
        return super().load_state_dict(state, strict=strict, assign=assign)


def save_diffusers(module: nn.Module, folder: Path) -> Path:
    """``module.save_pretrained(folder)`` (safetensors): a folder ``from_pretrained`` loads back."""
    save = getattr(module, "save_pretrained", None)
    if not callable(save):
        raise ConfigError(f"--format diffusers: {type(module).__name__} is not a diffusers model")
    folder.mkdir(parents=True, exist_ok=True)
    save(str(folder), safe_serialization=True)
    return folder
