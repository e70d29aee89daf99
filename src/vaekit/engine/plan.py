"""A plan: what one fit of the engine trains. The pipeline builds one per stage; the engine only runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vaekit.config.schema import VaekitConfig
from vaekit.engine.updates import Update


@dataclass
class Plan:
    """What one fit trains, built by the pipeline for a stage: data, objective, updates and when it ends."""

    name: str
    index: int
    cfg: VaekitConfig
    data: Any  # DataBundle
    train_loader: Any
    val_loader: Any
    objective: nn.Module
    d_objective: nn.Module | None
    updates: dict[str, Update]  # "generator" and/or "discriminator"
    clock: Any  # observe / metric_done / epochs_done / limit_steps / state_dict (pipeline.StageClock)
    model: nn.Module  # the VAE, unwrapped (latent shapes, last layer)
    forward: nn.Module  # the VAE as wrapped for training (DDP, compile)
    disc_forward: nn.Module | None
    train_mode: Any  # () -> None: train mode, frozen modules in eval
    describe: Any  # (TrainState) -> str for the progress bar
