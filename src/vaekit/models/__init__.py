"""VAE model families (one file each), the discriminator, and the ``build_*`` factories.

Importing this package registers the built-in families (``conv``, ``mlp``, ``resnet``, ``diffusers``) in :data:`MODELS`.
"""

from vaekit.models.base import (
    MODELS,
    VAE,
    VAEOutput,
    build_model,
    build_model_from_config,
    count_parameters,
    model_summary,
    register_model,
)
from vaekit.models.conv import ConvVAE
from vaekit.models.diffusers import DiffusersVAE  # diffusers itself is imported only when one is built
from vaekit.models.discriminators import PatchDiscriminator, build_discriminator
from vaekit.models.hvae import HierarchicalVAE
from vaekit.models.mlp import MLPVAE
from vaekit.models.resnet import ResNetVAE

__all__ = [
    "MODELS",
    "VAE",
    "ConvVAE",
    "DiffusersVAE",
    "HierarchicalVAE",
    "MLPVAE",
    "PatchDiscriminator",
    "ResNetVAE",
    "VAEOutput",
    "build_discriminator",
    "build_model",
    "build_model_from_config",
    "count_parameters",
    "model_summary",
    "register_model",
]
