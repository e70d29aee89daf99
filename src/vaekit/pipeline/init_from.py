"""``init_from``: a stage's starting weights from another run, checkpoint or ``model.safetensors``.

A checkpoint written during a LoRA stage holds the base weights and the adapters; they are merged (with that
run's own LoRA settings, read from its ``config.yaml`` and the checkpoint's ``state.json``) before loading. Weights
that do not fit are refused in one line naming the missing and unexpected keys.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from vaekit.config.schema import FinetuneConfig
from vaekit.engine import checkpoint as ckpt
from vaekit.engine.finetune import is_lora_key, merge_lora_state, plain_key
from vaekit.errors import ConfigError, VaekitError


def load_init_weights(module: nn.Module, path: Path) -> None:
    """Load ``path`` (adapters merged) into ``module``; ConfigError naming the keys that do not fit."""
    try:
        state = ckpt.read_weights(path)
    except VaekitError as err:
        raise ConfigError(f"init_from: {err}") from None
    own = {plain_key(k) for k in module.state_dict() if not is_lora_key(k)}
    base = {k for k in state if not is_lora_key(k)}
    missing, unexpected = sorted(own - base), sorted(base - own)
    if missing or unexpected:
        raise ConfigError(f"init_from: {path} does not fit this model: missing {_few(missing)}; unexpected "
                          f"{_few(unexpected)} (train the same architecture, or start the stage without init_from)")
    if len(base) < len(state):
        state = merge_lora_state(state, module, _lora_settings(path))
    _load(module, state, path)


def _load(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:  # a shape mismatch
        raise ConfigError(f"init_from: {path}: the weights do not fit this model "
                          f"({str(err).strip().splitlines()[-1].strip()[:200]})") from None


def _lora_settings(path: Path) -> FinetuneConfig:
    """The LoRA settings the checkpoint's adapters were trained with: its run's config, at its stage."""
    from vaekit.config.load import load_config
    from vaekit.config.stages import resolve_stages

    checkpoint = path.parent
    run_dir = checkpoint.parent.parent
    if not (run_dir / "config.yaml").is_file() or not (checkpoint / "state.json").is_file():
        raise ConfigError(f"init_from: {path} holds LoRA adapters but no run config beside it to merge them "
                          "with; point init_from at the run directory's model.safetensors (merged)")
    stage = json.loads((checkpoint / "state.json").read_text()).get("stage_index", 0)
    stages = resolve_stages(load_config(run_dir / "config.yaml"))
    return stages[min(stage, len(stages) - 1)].cfg.finetune


def _few(keys: list[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:4])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 4 else ''})"
