"""Resolving the evaluation data: the run's own config, a DataBundle, a Dataset, a tensor or overrides, in a fixed
order; and whether that data fits the model.

Imports nothing above it (no loading, no api): validation during training reads its data through `from_bundle`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vaekit.errors import ConfigError


@dataclass
class EvalData:
    """The samples to evaluate on, in a fixed order, and what is known about them."""

    source: Any  # ArraySource or a Dataset of dicts
    modality: str
    shape: tuple[int, ...]
    description: str = ""
    factor_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    """The split evaluated (bundles and configs): ``auto`` resolved, ``all`` when an empty split fell back to
    every sample; None for data given directly."""
    note: str | None = None
    """Something the user must be told about this data (an empty split replaced by all samples)."""

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, limit: int | None) -> Iterator[dict[str, Tensor]]:
        """Consecutive batches from the start (no shuffling), at most ``limit`` of them."""
        count = math.ceil(len(self) / batch_size)
        count = count if limit is None else min(count, limit)
        if hasattr(self.source, "get_batch"):
            for i in range(count):
                idx = torch.arange(i * batch_size, min((i + 1) * batch_size, len(self)))
                yield self.source.get_batch(idx)
            return
        loader = torch.utils.data.DataLoader(self.source, batch_size=batch_size, shuffle=False)
        for i, batch in enumerate(loader):
            if i >= count:
                return
            yield batch if isinstance(batch, dict) else {"x": batch[0] if isinstance(batch, list) else batch}


_MODALITY_BY_NDIM = {1: "tabular", 2: "audio", 3: "image", 4: "video"}


def _from_tensor(x: Any, y: Any = None, description: str = "tensor") -> EvalData:
    from vaekit.data import ArraySource

    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    y = None if y is None else torch.as_tensor(y)
    if x.dim() - 1 not in _MODALITY_BY_NDIM:
        raise ConfigError(
            f"evaluate: data of shape {tuple(x.shape)} is not (N, D), (N, C, L), (N, C, H, W) or video"
        )
    return EvalData(ArraySource(x, y), _MODALITY_BY_NDIM[x.dim() - 1], tuple(x.shape[1:]), description)


def from_bundle(bundle: Any, split: str) -> EvalData:
    """The ``split`` of ``bundle``; ``auto``: the test split when the bundle has a non-empty one, else val."""
    if split == "auto":
        split = "test" if bundle.test is not None and len(bundle.test) else "val"
    source = {"train": bundle.train, "val": bundle.val, "test": bundle.test}.get(split)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split}: choose train, val or test")
    if source is None:
        raise ConfigError(f"--split test: {bundle.info.description or 'this data source'} has no test split")
    info = bundle.info
    return EvalData(source, info.modality, tuple(info.shape), info.description, info.factor_names, info.meta, split)


def _whole(bundle: Any, split: str) -> EvalData:
    """Every sample of ``bundle`` (train, val and test together), with a note saying that ``split`` was empty."""
    from torch.utils.data import ConcatDataset

    from vaekit.data import ArraySource

    parts = [s for s in (bundle.train, bundle.val, bundle.test) if s is not None and len(s)]
    if not parts:
        raise ConfigError(f"evaluate: no samples in {bundle.info.description or 'the data'}")
    if all(isinstance(p, ArraySource) for p in parts):
        ys = [p.y for p in parts]
        y = torch.cat(ys) if all(v is not None for v in ys) else None
        source: Any = ArraySource(torch.cat([p.x for p in parts]), y)
    else:
        source = ConcatDataset(parts)
    info = bundle.info
    note = f"the {split} split is empty; evaluating on all {len(source)} samples of the data"
    return EvalData(source, info.modality, tuple(info.shape), info.description, info.factor_names, info.meta,
                    "all", note)


def _from_config(cfg: Any, split: str) -> EvalData:
    from vaekit.data import build_data

    if cfg.data.source == "tensor":
        raise ConfigError(
            "evaluate: the run was trained on in-memory arrays (data.source=tensor): from Python pass "
            "data=<tensor or bundle>; on the command line name the data, e.g. `vaekit eval RUN data.source=table "
            "data.path=x.npy data.shape=[1,28,28]` (np.save the arrays as rows) or an image/audio/video folder"
        )
    bundle = build_data(cfg.data, cfg.run.seed)
    data = from_bundle(bundle, split)
    return data if len(data) else _whole(bundle, data.split or split)


WHOLE_SOURCES = {"image_folder", "audio_folder", "video_folder"}
"""Sources whose ``data.path`` given on the command line is used whole (every file is evaluated)."""
_EXTENSIONS = {
    "image_folder": {".png", ".jpg", ".jpeg", ".webp", ".bmp"},
    "audio_folder": {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff"},
    "video_folder": {".mp4", ".avi", ".mkv", ".webm", ".mov"},
}


def path_overrides(path: Path, cfg: Any, model: nn.Module | None) -> list[str]:
    """Dotted overrides that evaluate the data at ``path`` (a file or folder named on the command line) with the
    run's config ``cfg``: ``data.path``; an image/audio/video file or folder is used whole (``data.split=[0,1,0]``,
    and a single file becomes its own folder source), at the size and channels the model was built for."""
    source = cfg.data.source
    ext = path.suffix.lower()
    guessed = next((s for s, exts in _EXTENSIONS.items() if ext in exts), None)
    if guessed is not None or (path.is_dir() and source not in WHOLE_SOURCES | {"table", "tags", "records"}):
        source = guessed or "image_folder"
    out = [f"data.source={source}", f"data.path={path}"]
    if source in WHOLE_SOURCES:
        out.append("data.split=[0,1,0]")
        shape = expected_shape(model) if model is not None else None
        if source == "image_folder" and shape is not None and len(shape) == 3:
            out += [f"data.image_size={shape[-1]}", f"data.channels={shape[0]}"]
        if source != cfg.data.source and cfg.data.source not in WHOLE_SOURCES:
            out.append("data.num_samples=null")
    return out


def resolve_data(data: Any, loaded: Any, split: str) -> EvalData:
    """The evaluation samples from ``data`` (see `evaluate`), or from the run's own config when None.

    ``loaded`` is what `vaekit.eval.load.load_for_eval` returned (its ``run_dir`` and ``config``), or None.
    """
    from torch.utils.data import Dataset

    from vaekit.data import DataBundle

    if isinstance(data, EvalData):
        return data
    if isinstance(data, DataBundle):
        return from_bundle(data, split)
    if isinstance(data, Tensor | np.ndarray):
        return _from_tensor(data)
    if isinstance(data, tuple) and len(data) == 2:
        return _from_tensor(*data)
    if isinstance(data, Mapping) and "x" in data:
        return _from_tensor(data["x"], data.get("y"))
    if isinstance(data, Dataset):
        first = data[0]
        x0 = first["x"] if isinstance(first, dict) else first
        modality = _MODALITY_BY_NDIM.get(x0.dim(), "tabular")
        return EvalData(data, modality, tuple(x0.shape), type(data).__name__)
    from vaekit.config.load import load_config, resolve_dict

    base = loaded.run_dir / "config.yaml" if loaded is not None and loaded.run_dir is not None else None
    if base is None and loaded is not None and loaded.config is not None:
        base = loaded.config
    if data is None:
        if base is None:
            raise ConfigError(
                "evaluate: a module without a run directory needs data= (a tensor, Dataset or bundle)"
            )
        return _from_config(load_config(base), split)
    if isinstance(data, str | Path) and "=" not in str(data):
        if Path(data).suffix.lower() in (".yaml", ".yml") or base is None:
            return _from_config(load_config(data), split)  # a YAML config file of its own
        if not Path(data).exists():
            raise ConfigError(f"--data {data}: no such file or directory")
        cfg = load_config(base)
        data = path_overrides(Path(data), cfg, getattr(loaded, "model", None))
    overrides = [data] if isinstance(data, str) else data  # dotted overrides (list) or section dicts
    return _from_config(load_config(resolve_dict(base, overrides)), split)


def expected_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The per-sample input shape a vaekit model was built for (None: a user's module, unknown)."""
    config = getattr(model, "config", None)
    return tuple(config["input_shape"]) if isinstance(config, dict) and "input_shape" in config else None


def fixed_size(model: nn.Module) -> bool:
    """Whether the model takes only the size it was built for (MLPs and vector latents)."""
    config = getattr(model, "config", {}) or {}
    return config.get("arch") == "mlp" or config.get("latent", "vector") == "vector"


def describe(shape: tuple[int, ...]) -> str:
    return f"{_MODALITY_BY_NDIM.get(len(shape), 'data')} {shape}"  # a per-sample shape: (C, H, W) is an image


def check_fits(model: nn.Module, name: str, data: EvalData) -> None:
    """The data must have the model's modality and channels (and size, for fixed-size models)."""
    shape = expected_shape(model)
    if shape is None:
        return
    ok = len(shape) == len(data.shape) and shape[0] == data.shape[0]
    if ok and fixed_size(model):
        ok = shape == data.shape
    if not ok:
        raise ConfigError(f"{name} expects {describe(shape)} but the data is {data.modality} {data.shape}")
