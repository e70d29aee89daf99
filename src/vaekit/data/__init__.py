"""Data sources and batching: `build_data(cfg, seed)` → `DataBundle(train, val, info, test)`; `BatchLoader` batches.

One module per source: `shapes` (procedural dSprites-style), `mnist` (IDX files), `images` (image folders),
`video` (procedural moving shapes; streamed video files and frame folders), `audio` (streamed sound files),
`tables` (CSV/TSV/Parquet/NumPy/ARFF), `tags` (multi-hot tag lists), `records` (long-format records pivoted to
events × items), `tensors` (arrays from Python), `shards` (webdataset tar shards), `hf` (Hugging Face datasets). See docs/design.md and docs/guides/data-formats.md.
"""

from __future__ import annotations

from typing import Any

from vaekit.config.schema import DataConfig
from vaekit.data.audio import build_audio_folder
from vaekit.data.base import (
    ArraySource,
    DataBundle,
    DataError,
    DataInfo,
    FileSource,
    Source,
    split_indices,
    split_three,
)
from vaekit.data.hf import build_hf
from vaekit.data.images import build_image_folder
from vaekit.data.loader import BatchLoader
from vaekit.data.mnist import build_mnist
from vaekit.data.records import build_records
from vaekit.data.shapes import build_shapes, make_shapes
from vaekit.data.shards import build_shards
from vaekit.data.tables import build_table
from vaekit.data.tags import build_tags
from vaekit.data.tensors import from_arrays
from vaekit.data.video import build_moving_shapes, build_video_folder, make_moving_shapes, read_video_clips

__all__ = [
    "ArraySource",
    "BatchLoader",
    "DataBundle",
    "DataError",
    "DataInfo",
    "FileSource",
    "Source",
    "build_data",
    "from_arrays",
    "make_moving_shapes",
    "make_shapes",
    "read_video_clips",
    "split_indices",
    "split_three",
]

_BUILDERS = {
    "shapes": build_shapes,
    "mnist": build_mnist,
    "image_folder": build_image_folder,
    "moving_shapes": build_moving_shapes,
    "video_folder": build_video_folder,
    "audio_folder": build_audio_folder,
    "table": build_table,
    "tags": build_tags,
    "records": build_records,
    "webdataset": build_shards,
    "hf": build_hf,
}


def build_data(cfg: DataConfig, seed: int, arrays: dict[str, Any] | None = None) -> DataBundle:
    """Build the train, validation (and, with ``data.split`` or a source's own test set, test) sources.

    Args:
        cfg: the ``data`` section.
        seed: the run seed (procedural generation, train/val splits, augmentation).
        arrays: for ``data.source=tensor`` only: ``{"x": ..., "y": ..., "val_x": ..., "val_y": ...}``
            (``x`` required; see `from_arrays`).

    Raises:
        ConfigError: a setting is missing or inconsistent (the message names the key; a ValueError).
        DataError: a file is missing, corrupt or unreadable (the message names the file).
    """
    if cfg.source == "tensor":
        if not arrays or arrays.get("x") is None:
            raise ValueError(
                "data.source=tensor: needs arrays from the Python API: arrays={'x': x} "
                "(optionally 'y', 'val_x', 'val_y'); there is no file path for this source"
            )
        unknown = set(arrays) - {"x", "y", "val_x", "val_y"}
        if unknown:
            raise ValueError(f"arrays: unknown keys {sorted(unknown)} (expected x, y, val_x, val_y)")
        return from_arrays(
            arrays["x"],
            arrays.get("y"),
            val_fraction=cfg.val_fraction,
            seed=seed,
            val_x=arrays.get("val_x"),
            val_y=arrays.get("val_y"),
            num_samples=cfg.num_samples,
        )
    if arrays is not None:
        raise ValueError(f"arrays: only used with data.source=tensor (data.source is {cfg.source})")
    return _BUILDERS[cfg.source](cfg, seed)
