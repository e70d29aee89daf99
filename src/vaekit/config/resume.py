"""Which settings may change when a run is resumed: the rest must match the run's config.yaml.

Resumable: learning rates (the schedule is rescaled from the checkpoint on), the run's length, logging,
validation and checkpoint cadence, the non-finite policy, data paths and workers, the collective timeout.
Changing anything else would make the checkpoint describe a different run, so it is refused in one line instead
of being silently ignored.
"""

from __future__ import annotations

from typing import Any

from vaekit.config.schema import VaekitConfig
from vaekit.errors import ConfigError

RESUMABLE_LEAVES = {
    ("optim", "lr"), ("disc_optim", "lr"), ("optim", "grad_clip"), ("disc_optim", "grad_clip"),
    ("train", "max_steps"), ("train", "epochs"), ("train", "val_every"), ("train", "val_batches"),
    ("train", "ckpt_every"), ("train", "keep_last"), ("train", "nan_policy"), ("train", "nan_skip_limit"),
    ("train", "timeout_s"), ("data", "path"), ("data", "num_workers"), ("run", "overwrite"),
}
RESUMABLE_SECTIONS = {"log"}


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, (*prefix, str(key))))
        return out or {prefix: {}}
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(_flatten(value, (*prefix, str(i))))
        return out
    return {prefix: tree}


def _resumable(path: tuple[str, ...]) -> bool:
    if path and path[0] == "stages" and len(path) > 2:
        path = path[2:]  # stages.N.<section>...
        if path[0] in ("steps", "epochs", "max_steps", "max_epochs"):
            return True
    if path and path[0] == "stage_defaults":
        path = path[1:]
    return bool(path) and (path[0] in RESUMABLE_SECTIONS or tuple(path[-2:]) in RESUMABLE_LEAVES)


def check_resume_overrides(saved: VaekitConfig, new: VaekitConfig) -> None:
    """Raise ``ConfigError`` naming the first setting that differs from the saved run and cannot change."""
    old_flat, new_flat = _flatten(saved.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    for path in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(path) != new_flat.get(path) and not _resumable(path):
            key = ".".join(path)
            raise ConfigError(
                f"{key}: cannot change when resuming (the run has {old_flat.get(path)!r}); resumable settings are "
                "optim.lr, disc_optim.lr, grad_clip, train.max_steps/epochs, val/ckpt cadence, nan_policy, log.*, "
                "data.path/num_workers; start a new run with init_from to change the rest"
            )
