"""Finetune modes (``finetune.mode``: full | lora | decoder), LoRA adapters through peft, and the checkpoint view
of a model that may carry adapters.

Per stage the pipeline calls :meth:`Finetuner.apply` (inject adapters entering a lora stage; merge them into
the base weights leaving one) and then :meth:`Finetuner.restrict` (which parameters train). The adapters live
inside the user's / diffusers' module itself (``peft.inject_adapter_in_model``), so the wrapped forward, DDP and
the optimizer see them like any parameter; adapter weights are kept fp32 whatever the base dtype, so bf16
autocast computes in bf16 while the master weights stay fp32.

Checkpoints: the manager's ``model`` entry is the :class:`Finetuner` itself. Its state dict is the module's with
peft's renames undone: base weights under their plain names (``conv.weight``, not ``conv.base_layer.weight``)
and adapters as ``conv.lora_A.weight`` / ``conv.lora_B.weight``. Loading a checkpoint into a module without
adapters keeps the adapter tensors aside until the stage that owns them re-injects them, so a resume in the
middle of a lora stage, or right after it ended, continues bitwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.config.schema import FinetuneConfig
from vaekit.errors import ConfigError

_LORA = re.compile(r"\.lora_([AB])\.(?:[^.]+\.)?weight$")
_PEFT_LORA = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")
LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_lora_key(key: str) -> bool:
    return bool(_LORA.search(key))


def plain_key(key: str) -> str:
    """A peft-injected module's state-dict key without the adapter name and ``base_layer`` level."""
    if _PEFT_LORA.search(key):
        return _PEFT_LORA.sub(r".\1.weight", key)
    return key.replace(".base_layer.", ".")


def default_targets(module: nn.Module) -> list[str]:
    """Every Linear and Conv1d/2d/3d layer: the autoencoder's convolutions and attention projections."""
    return [name for name, m in module.named_modules() if name and isinstance(m, LORA_LAYERS)]


def _import_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("finetune.mode=lora needs the peft package: pip install 'vaekit[lora]'") from None
    return peft


def _spec(cfg: FinetuneConfig) -> tuple[Any, ...]:
    return (cfg.rank, cfg.alpha, cfg.dropout, tuple(cfg.target_modules or ()))


def decoder_side(vae: nn.Module, module: nn.Module) -> list[nn.Module]:
    """What ``finetune.mode=decoder`` trains: the decoder, diffusers' ``post_quant_conv``, a learned variance."""
    parts = [getattr(vae, "decoder", module)]
    for name in ("post_quant_conv",):
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            parts.append(child)
    return parts


class Finetuner:
    """The autoencoder module's finetune state across stages, and its checkpoint view.

    Args:
        module: the module whose weights are checkpointed (the user's / diffusers' module, or a built-in VAE).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.lora: FinetuneConfig | None = None
        """The config of the injected adapters (None: none injected)."""
        self.stash: dict[str, Tensor] = {}
        """Adapter weights read from a checkpoint, waiting for their stage to re-inject the adapters."""

    # the checkpoint view -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        full, self.gathered = self.gathered, None
        state = {plain_key(k): v for k, v in (full if full is not None else self.module.state_dict()).items()}
        return {**state, **self.stash}

    gathered: dict[str, Tensor] | None = None
    """The full weights of an FSDP-sharded module, gathered by every process just before a save."""

    def gather(self) -> dict[str, Tensor]:
        """Collective (every process calls it): the full, unsharded weights on the main process (CPU)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self.gathered = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
        return self.gathered

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> Any:
        if self.lora is None:
            self.stash = {k: v for k, v in state.items() if is_lora_key(k)}
            return self.module.load_state_dict({k: v for k, v in state.items() if not is_lora_key(k)}, strict=strict)
        names = {plain_key(k): k for k in self.module.state_dict()}
        return self.module.load_state_dict({names.get(k, k): v for k, v in state.items()}, strict=strict)

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The adapters alone (``path.lora_A.weight`` / ``path.lora_B.weight``)."""
        if self.stash:
            return dict(self.stash)
        return {plain_key(k): v for k, v in self.module.state_dict().items() if _PEFT_LORA.search(k)}

    # stages ------------------------------------------------------------------------------------
    def apply(self, cfg: FinetuneConfig, owner: FinetuneConfig, save: Callable[[], None] | None = None) -> None:
        """Give the module the structure ``cfg`` trains: adapters entering lora, merged weights leaving it.

        Args:
            cfg: the new stage's finetune config.
            owner: the finetune config of the stage the present (or stashed) adapters were trained in.
            save: called before adapters are merged (writes them alone).
        """
        if self.stash and self.lora is None:  # resumed: the checkpoint's adapters come back first
            self._inject(owner)
            self._load_lora(self.stash)
            self.stash = {}
        if self.lora is not None and (cfg.mode != "lora" or _spec(cfg) != _spec(self.lora)):
            if save is not None:
                save()
            self.merge()
        if cfg.mode == "lora" and self.lora is None:
            self._inject(cfg)

    def restrict(self, vae: nn.Module, mode: str) -> None:
        """Leave ``requires_grad`` on only what ``mode`` trains (freezing has already been applied)."""
        if mode == "full":
            return
        if mode == "lora":
            keep = {id(p) for n, p in self.module.named_parameters() if "lora_" in n}
        else:
            keep = {id(p) for part in decoder_side(vae, self.module) for p in part.parameters()}
            logvar = getattr(vae, "recon_logvar", None)
            if isinstance(logvar, nn.Parameter):
                keep.add(id(logvar))
        for p in vae.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)

    def _inject(self, cfg: FinetuneConfig) -> None:
        peft = _import_peft()
        targets = cfg.target_modules or default_targets(self.module)
        config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
        try:
            peft.inject_adapter_in_model(config, self.module)
        except ValueError as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise ConfigError(f"finetune.target_modules: {first}") from None
        for name, p in self.module.named_parameters():
            if "lora_" in name and p.dtype != torch.float32:
                p.data = p.data.float()  # fp32 adapters on a low-precision base
        self.lora = cfg
        self.peft_config = config

    def _load_lora(self, state: dict[str, Tensor]) -> None:
        names = {plain_key(k): k for k in self.module.state_dict() if _PEFT_LORA.search(k)}
        if set(names) != set(state):
            raise ConfigError(
                "finetune: the checkpoint's LoRA adapters do not match this stage's finetune settings "
                f"({len(state)} tensors saved, {len(names)} expected); resume with the run's own config"
            )
        missing = self.module.load_state_dict({names[k]: v for k, v in state.items()}, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys

    def merge(self) -> None:
        """Fold every adapter into its base weight (W + alpha/r · B·A) and put the plain layer back."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [(n, m) for n, m in self.module.named_modules() if isinstance(m, BaseTunerLayer)]
        with torch.no_grad():
            for name, layer in layers:
                layer.merge()
                parent_name, _, child = name.rpartition(".")
                parent = self.module.get_submodule(parent_name) if parent_name else self.module
                setattr(parent, child, layer.get_base_layer())
        self.lora = None

    def save_adapters(self, folder: Path) -> Path:
        """``adapter_model.safetensors`` (the adapters alone) and ``adapter_config.json`` (peft's LoraConfig)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.lora_state_dict().items()}
        save_file(state, str(folder / "adapter_model.safetensors"))
        config = getattr(self, "peft_config", None)
        if config is not None:
            config.save_pretrained(str(folder))
        else:
            (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        return folder


def merge_lora_state(state: dict[str, Tensor], module: nn.Module, cfg: FinetuneConfig) -> dict[str, Tensor]:
    """A checkpoint's weights with its adapters merged into plain weights (``vaekit export``)."""
    tuner = Finetuner(module)
    tuner.load_state_dict(state)
    if tuner.stash:
        tuner.apply(FinetuneConfig(mode="full"), cfg)
    return {k: v for k, v in tuner.state_dict().items()}


class GatherBeforeSave:
    """Registered as a per-process state of the checkpoint manager, whose per-process states are collected on
    every process before the main process writes: under FSDP that is where the sharded weights are gathered
    into full tensors (a collective), which the main process's ``model`` entry then writes. Holds no state."""

    def __init__(self, tuner: Finetuner, shared: dict[str, Any]) -> None:
        self.tuner, self.shared = tuner, shared

    def state_dict(self) -> dict[str, Any]:
        self.tuner.gather()
        for update in self.shared.values():  # the optimizers over the sharded parameters, in full
            if getattr(update, "sharded", None) is not None:
                update.gather()
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
