"""``vaekit shard``: pack any vaekit source into webdataset tar shards that ``data.source=webdataset`` reads back.

A folder of images, sound files or video files is packed file by file: each sample's member is the original file's
bytes (``{key}.{ext}``), so the webdataset source decodes it exactly as the folder source would (same resize, crop,
segment, clip), and ``--labels folder`` adds the parent folder's class index as ``{key}.cls``. Any other source
(a config file, or a table file) is built as for training and its samples written decoded: images as 8-bit PNG
(lossless for 8-bit sources such as MNIST), video clips as uint8 ``npy`` (C, T, H, W), audio segments and table rows
as float32 ``npy``; an integer label as ``cls``, other labels as ``y.npy``.

Shards are ``{prefix}-{000000..}.tar`` with ``--samples-per-shard`` samples each, written to ``.tmp`` and renamed when
complete; ``dataset.json`` (sample count, modality, shape, value range, label names, the source's meta) is written
last, so a folder without it is not a finished set.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaekit.data.audio import AUDIO_EXTENSIONS, scan_audio
from vaekit.data.images import IMAGE_EXTENSIONS
from vaekit.data.shards import DATASET_FILE
from vaekit.errors import ConfigError, DataError

VIDEO_EXTENSIONS = {".mp4", ".webm", ".mkv", ".avi", ".mov"}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Iterator[dict[str, bytes]], out: Path, per_shard: int, prefix: str = "shard") -> tuple[list[str], int]:
    """Write ``samples`` (member extension → bytes) as tar shards under ``out``; returns (shard names, count)."""
    names: list[str] = []
    tar, count, tmp = None, 0, None
    for sample in samples:
        if count % per_shard == 0:
            if tar is not None:
                tar.close()
                tmp.rename(tmp.with_suffix(""))  # type: ignore[union-attr]
            name = f"{prefix}-{len(names):06d}.tar"
            names.append(name)
            tmp = out / f"{name}.tmp"
            tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed above or below
        for ext, data in sample.items():
            _tar_add(tar, f"{count:09d}.{ext}", data)  # type: ignore[arg-type]
        count += 1
    if tar is not None:
        tar.close()
        tmp.rename(tmp.with_suffix(""))  # type: ignore[union-attr]
    return names, count


def _folder_files(root: Path) -> tuple[str, list[Path]]:
    """The modality and the files of a folder source (images, else sound files, else video files)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for modality, exts in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS), ("video", VIDEO_EXTENSIONS)):
        found = [p for p in files if p.suffix.lower() in exts]
        if found:
            return modality, (scan_audio(root) if modality == "audio" else found)
    raise DataError(f"{root}: no image, sound or video file to pack")


def pack_folder(root: Path, labels: bool) -> tuple[Iterator[dict[str, bytes]], dict[str, Any]]:
    """A folder's files as samples of original bytes (and ``cls`` = the class folder's index with ``labels``)."""
    modality, files = _folder_files(root)
    classes: list[str] = []
    if labels:
        names = []
        for p in files:
            rel = p.parent.relative_to(root)
            if rel == Path("."):
                raise ConfigError(f"--labels folder: {p} is not inside a class folder of {root}")
            names.append(rel.parts[0])
        classes = sorted(set(names))

    def samples() -> Iterator[dict[str, bytes]]:
        for p in files:
            sample = {p.suffix.lower().lstrip("."): p.read_bytes()}
            if labels:
                sample["cls"] = str(classes.index(p.parent.relative_to(root).parts[0])).encode()
            yield sample

    meta = {"modality": modality, "source": str(root), "files": len(files)}
    if labels:
        meta["factor_names"] = ["label"]
        meta["meta"] = {"classes": classes}
    return samples(), meta


def _encode_x(x: Tensor, modality: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if modality == "image" and x.shape[0] in (1, 3):
        from PIL import Image

        arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, C)
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
        return "png", buf.getvalue()
    if modality == "video":
        np.save(buf, (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    else:
        np.save(buf, x.to(torch.float32).numpy())
    return "npy", buf.getvalue()


def pack_source(cfg: Any, splits: list[str]) -> tuple[Iterator[dict[str, bytes]], dict[str, Any]]:
    """The samples of a built source (config ``cfg``), the ``splits`` in order, as decoded members."""
    from vaekit.data import build_data

    if cfg.data.source == "tensor":
        raise ConfigError("data.source=tensor: nothing on disk to pack (save the arrays as .npy and pack that table)")
    bundle = build_data(cfg.data, cfg.run.seed)
    sources = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    chosen = [sources[s] for s in splits if sources.get(s) is not None]
    info = bundle.info

    def samples() -> Iterator[dict[str, bytes]]:
        for source in chosen:
            for i in range(len(source)):
                item = source[i]
                ext, data = _encode_x(item["x"], info.modality)
                sample = {ext: data}
                y = item.get("y")
                if y is not None:
                    if y.ndim == 0 and not y.is_floating_point():
                        sample["cls"] = str(int(y)).encode()
                    else:
                        buf = io.BytesIO()
                        np.save(buf, y.to(torch.float32).numpy())
                        sample["y.npy"] = buf.getvalue()
                yield sample

    meta = {"modality": info.modality, "shape": list(info.shape), "value_range": list(info.value_range),
            "factor_names": info.factor_names, "meta": info.meta, "source": info.description, "splits": splits}
    return samples(), meta


def shard(src: str, out: str, per_shard: int, *, overrides: list[str] | None = None, labels: bool = False,
          splits: list[str] | None = None, prefix: str = "shard") -> Path:
    """Pack ``src`` (a folder, a table file or a YAML config) into shards under ``out``; returns ``out``."""
    from vaekit.config.load import load_config

    if per_shard < 1:
        raise ConfigError(f"--samples-per-shard: must be at least 1 (got {per_shard})")
    root, dest = Path(src), Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"--out: {dest} is not empty (choose a new folder; shards are never mixed)")
    if not root.exists():
        raise DataError(f"{src}: no such folder or file")
    if root.is_dir() and not overrides:
        samples, meta = pack_folder(root, labels)
    else:
        if root.suffix.lower() in (".yaml", ".yml"):
            cfg = load_config(str(root), overrides or [])
        else:
            source = "image_folder" if root.is_dir() else "table"
            cfg = load_config(None, [f"data.source={source}", f"data.path={root}", *(overrides or [])])
        samples, meta = pack_source(cfg, splits or ["train", "val", "test"])
    dest.mkdir(parents=True, exist_ok=True)
    names, count = write_shards(samples, dest, per_shard, prefix)
    if count == 0:
        raise DataError(f"{src}: no sample to pack")
    meta.update({"shards": names, "samples": count, "samples_per_shard": per_shard,
                 "pattern": f"{dest}/{prefix}-{{{0:06d}..{len(names) - 1:06d}}}.tar"})
    (dest / DATASET_FILE).write_text(json.dumps(meta, indent=1))
    return dest
