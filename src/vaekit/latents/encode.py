"""``vaekit encode`` / ``vaekit decode``: a whole data set to latent shards and back, resumable and multi-process.

Layout of ``--out``: ``encode.json`` (what is being encoded: run, weights hash, data, split, mode) first; then per
chunk of ``--samples-per-chunk`` samples a data file ``latents-{split}-{chunk:06d}.safetensors`` (tensors ``z``,
``index``, optional ``y``) or ``.tar`` (webdataset: ``{key}.latent.npy`` and ``{key}.cls``/``{key}.y.npy`` per sample)
and beside it ``….json`` with the chunk's keys and latent moments, written after the data file (a chunk is done
when its ``.json`` exists); last ``stats.json`` and ``manifest.json`` (the manifest is written last of all: a folder
without it is unfinished). A killed encode rerun with the same arguments skips the done chunks.

Processes: with ``RANK``/``WORLD_SIZE`` set (``torchrun --nproc_per_node N -m vaekit encode ...``) process r encodes
chunks r, r + N, …; no collective is needed: whichever process finds every chunk done writes the statistics
(merged in chunk order: the same figures for any N) and the manifest.

Keys: ``{split}-{index:08d}``, the sample's index in its split of the run's data (same seed, same split).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from vaekit.errors import ConfigError, DataError
from vaekit.latents.stats import Moments, latent_stats, merge_all

OURS = re.compile(r"((encode|manifest|stats)\.json|latents-\w+-\d{6}\.(safetensors|tar|json))(\.\d+)?(\.tmp)?|\.tmp\w+")
"""Files an encode writes: its own, their ``.tmp`` while written, and ``.tmpXXXXXX`` files safetensors writes
before its atomic rename (a killed encode may leave them; they are harmless and not removed, since another process
of the same encode may be writing one)."""


def weights_hash(path: Path) -> str:
    """sha256 of a weights file (identifies the run's model in the manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_run(run: str | Path, data: list[str] | None) -> tuple[Any, Any, Path]:
    """(model, config with the ``data`` overrides or YAML applied, weights file) of a run directory."""
    from vaekit.api import load_model
    from vaekit.config.load import load_config, read_yaml

    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found (the run has not finished)")
    data = list(data or [])
    if len(data) == 1 and "=" not in data[0]:  # a YAML file: its data section replaces the run's
        section = read_yaml(data[0]).get("data")
        if not isinstance(section, dict):
            raise ConfigError(f"--data: {data[0]} has no data section")
        data = [f"data.{k}={json.dumps(v)}" for k, v in section.items()]
    bad = [d for d in data if not d.startswith("data.")]
    if bad:
        raise ConfigError(f"--data: only data.* overrides or one YAML file (got {bad[0]!r})")
    cfg = load_config(run_dir / "config.yaml", data)
    return load_model(weights), cfg, weights


def _check_out(out: Path, plan: dict) -> None:
    """Refuse a folder holding other files, a finished encode, or an unfinished one of something else."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    others = sorted(p.name for p in out.iterdir() if not OURS.fullmatch(p.name))
    if others:
        raise ConfigError(f"--out: {out} holds other files ({', '.join(others[:3])}); choose a new folder")
    if (out / "manifest.json").is_file():
        raise ConfigError(f"--out: {out} already holds a finished encode (manifest.json); choose a new folder")
    if (out / "encode.json").is_file() and json.loads((out / "encode.json").read_text()) != plan:
        raise ConfigError(f"--out: {out} holds an unfinished encode of other settings (encode.json); "
                          "rerun with the same arguments to resume it, or choose a new folder")



def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: several may write the same file
    tmp.write_text(text)
    tmp.replace(path)


def _chunks(sizes: dict[str, int], per_chunk: int) -> list[dict]:
    out = []
    for split, n in sizes.items():
        for c in range(math.ceil(n / per_chunk)):
            start = c * per_chunk
            out.append({"name": f"latents-{split}-{c:06d}", "split": split, "start": start,
                        "count": min(per_chunk, n - start)})
    return out


def _encode_chunk(model: torch.nn.Module, source: Any, chunk: dict, batch_size: int, num_workers: int,
                  mode: str, seed: int, device: torch.device, encoder: Any = None) -> tuple[Tensor, Tensor | None]:
    """The latents (and labels) of one chunk; ``encoder(x)`` (default ``model.encode``) gives (mean, logvar)."""
    idx = range(chunk["start"], chunk["start"] + chunk["count"])
    loader = DataLoader(Subset(source, list(idx)), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + zlib_hash(chunk["name"]))
    zs, ys = [], []
    encode = encoder or model.encode
    with torch.no_grad():
        for batch in loader:
            mean, logvar = encode(batch["x"].to(device))
            z = mean
            if mode == "sample":
                eps = torch.randn(mean.shape, generator=g).to(mean)
                z = mean + torch.exp(0.5 * logvar) * eps
            zs.append(z.float().cpu())
            if "y" in batch:
                ys.append(batch["y"])
    return torch.cat(zs), (torch.cat(ys) if ys else None)


def zlib_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def _write_chunk(out: Path, chunk: dict, z: Tensor, y: Tensor | None, fmt: str) -> None:
    """The chunk's data file (atomically), then its ``.json`` (keys and moments): the chunk is done."""
    keys = [f"{chunk['split']}-{chunk['start'] + i:08d}" for i in range(len(z))]
    if fmt == "safetensors":
        tensors = {"z": z.contiguous(), "index": torch.arange(chunk["start"], chunk["start"] + len(z))}
        if y is not None:
            tensors["y"] = y.contiguous()
        target = out / f"{chunk['name']}.safetensors"
        tmp = target.with_name(target.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})
    else:
        target = out / f"{chunk['name']}.tar"
        tmp = target.with_name(target.name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, key in enumerate(keys):
                members = {"latent.npy": _npy(z[i])}
                if y is not None:
                    yi = y[i]
                    members.update({"cls": str(int(yi)).encode()} if yi.ndim == 0 and not yi.is_floating_point()
                                   else {"y.npy": _npy(yi)})
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    tmp.replace(target)
    _atomic(out / f"{chunk['name']}.json", json.dumps({"keys": keys, "moments": Moments.of(z).to_json()}))


def _npy(t: Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, t.numpy())
    return buf.getvalue()


def encode_dataset(run: str | Path, out: str | Path, *, data: list[str] | None = None, split: str = "all",
                   mode: str = "mean", fmt: str = "safetensors", batch_size: int = 64, per_chunk: int = 1024,
                   device: str | None = None, tiling: dict[str, int] | None = None) -> Path:
    """Encode ``run``'s data (or ``data`` overrides / YAML) split(s) into ``out``; returns ``out``.

    Args:
        tiling: ``{"tile", "overlap"[, "frames", "frame_overlap"]}``: encode in blended windows
            (`vaekit.latents.tiling.tiled_encode`) for inputs larger than memory allows; None: whole inputs.
        split: ``train`` | ``val`` | ``test`` | ``all`` (the splits present, in that order).
        mode: ``mean`` (the posterior mean) or ``sample`` (one draw, seeded per chunk).
        fmt: ``safetensors`` or ``webdataset`` (tar shards).
    """
    from vaekit.data import build_data
    from vaekit.utils import get_device

    if per_chunk < 1 or batch_size < 1:
        raise ConfigError("--samples-per-chunk and --batch-size: must be at least 1")
    model, cfg, weights = load_run(run, data)
    dev = torch.device(device or get_device())
    model = model.to(dev).eval()
    bundle = build_data(cfg.data, cfg.run.seed)
    present = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    names = [s for s in ("train", "val", "test") if present[s] is not None] if split == "all" else [split]
    if present.get(split if split != "all" else "train") is None:
        raise ConfigError(f"--split: the data has no {split} split (set data.split=[train, val, test] fractions)")
    sources = {s: present[s] for s in names if len(present[s])}
    out = Path(out)
    plan = {"run": str(Path(run).resolve()), "weights_sha256": weights_hash(weights), "data": data or [],
            "split": split, "mode": mode, "format": fmt, "samples_per_chunk": per_chunk, "tiling": tiling}
    _check_out(out, plan)
    _atomic(out / "encode.json", json.dumps(plan, indent=1))
    chunks = _chunks({s: len(src) for s, src in sources.items()}, per_chunk)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    for c, chunk in enumerate(chunks):
        if c % world != rank or (out / f"{chunk['name']}.json").is_file():
            continue
        z, y = _encode_chunk(model, sources[chunk["split"]], chunk, batch_size, cfg.data.num_workers, mode,
                             cfg.run.seed, dev, _tiled_encoder(model, tiling))
        _write_chunk(out, chunk, z, y, fmt)
    if all((out / f"{c['name']}.json").is_file() for c in chunks):
        _finish(out, chunks, plan, model, bundle.info, cfg, {s: len(src) for s, src in sources.items()})
    return out


def _tiled_encoder(model: Any, tiling: dict[str, int] | None) -> Any:
    if not tiling:
        return None
    from vaekit.latents.tiling import tiled_encode

    return lambda x: tiled_encode(model, x, tiling["tile"], tiling.get("overlap", 0), tiling.get("frames"),
                                  tiling.get("frame_overlap", 0))


def _finish(out: Path, chunks: list[dict], plan: dict, model: Any, info: Any, cfg: Any, sizes: dict) -> None:
    """stats.json (chunk moments merged in order), then manifest.json, last."""
    moments = merge_all([Moments.from_json(json.loads((out / f"{c['name']}.json").read_text())["moments"])
                         for c in chunks])
    stats = latent_stats(moments)
    _atomic(out / "stats.json", json.dumps(stats, indent=1))
    model_config = getattr(model, "config", None)
    manifest = {
        **plan,
        "model_config": dict(model_config) if model_config is not None else None,
        "input_shape": list(info.shape),
        "latent_shape": list(model.latent_shape_for(tuple(info.shape))),
        "modality": info.modality,
        "value_range": list(info.value_range),
        "sample_rate": info.meta.get("sample_rate"),
        "data_description": info.description,
        "splits": sizes,
        "chunks": [{**c, "file": f"{c['name']}.{'safetensors' if plan['format'] == 'safetensors' else 'tar'}"}
                   for c in chunks],
        "scaling_factor": stats["scaling_factor"],
        "shift_factor": stats["shift_factor"],
    }
    _atomic(out / "manifest.json", json.dumps(manifest, indent=1, default=str))


# ------------------------------------------------------------------------------------------------ decode
def read_chunk(latents: Path, entry: dict, fmt: str) -> tuple[list[str], Tensor]:
    """(keys, z) of one chunk file."""
    path = latents / entry["file"]
    if fmt == "safetensors":
        keys = json.loads((latents / f"{entry['name']}.json").read_text())["keys"]
        return keys, load_file(str(path))["z"]
    keys, zs = [], []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".latent.npy"):
                keys.append(m.name.removesuffix(".latent.npy"))
                zs.append(torch.from_numpy(np.load(io.BytesIO(tar.extractfile(m).read()))))  # type: ignore[union-attr]
    return keys, torch.stack(zs)


def check_same_run(manifest: dict, run: Path, model: Any, weights: Path) -> None:
    """Refuse latents made by another run: another model config, latent shape or set of weights."""
    where = f"{manifest.get('run')}"
    config = dict(getattr(model, "config", {}) or {})
    stored = manifest.get("model_config")
    if stored is not None and json.loads(json.dumps(config, default=str)) != stored:
        raise ConfigError(f"decode: these latents were made by another model ({where}); the config of {run} differs")
    shape = list(model.latent_shape_for(tuple(manifest["input_shape"])))
    if shape != manifest["latent_shape"]:
        raise ConfigError(f"decode: latents of shape {manifest['latent_shape']} ({where}) do not fit {run}'s "
                          f"latent shape {shape}")
    if weights_hash(weights) != manifest["weights_sha256"]:
        raise ConfigError(f"decode: these latents were made by other weights ({where}), not {weights}")


def _write_sample(path: Path, x: Tensor, modality: str, rate: int | None) -> None:
    from vaekit.tracking.media import write_mp4, write_wav

    if modality == "image":
        from PIL import Image

        arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path.with_suffix(".png"))
    elif modality == "video":
        write_mp4(path.with_suffix(".mp4"), x)
    elif modality == "audio":
        write_wav(path.with_suffix(".wav"), x, rate or 16000)


def decode_latents(run: str | Path, latents: str | Path, out: str | Path, *, batch_size: int = 64,
                   device: str | None = None, tiling: dict[str, int] | None = None) -> Path:
    """Decode the latents in ``latents`` (a finished ``vaekit encode`` folder) with ``run``'s model into ``out``:
    ``{split}/{key}.png|wav|mp4`` (tables: ``{split}.npy`` rows in key order); returns ``out``. ``tiling`` as for
    `encode_dataset` (input units): decode in blended windows (`vaekit.latents.tiling.tiled_decode`)."""
    from vaekit.objectives.reconstruction import likelihood_mean
    from vaekit.utils import get_device

    latents, out = Path(latents), Path(out)
    if not (latents / "manifest.json").is_file():
        raise DataError(f"{latents}: no manifest.json (not a finished `vaekit encode` folder)")
    manifest = json.loads((latents / "manifest.json").read_text())
    model, _cfg, weights = load_run(run, None)
    check_same_run(manifest, Path(run), model, weights)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty; choose a new folder")
    dev = torch.device(device or get_device())
    model = model.to(dev).eval()
    modality, tables = manifest["modality"], {}
    for entry in manifest["chunks"]:
        keys, z = read_chunk(latents, entry, manifest["format"])
        (out / entry["split"]).mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for s in range(0, len(z), batch_size):
                zb = z[s : s + batch_size].to(dev)
                if tiling:
                    from vaekit.latents.tiling import tiled_decode

                    recon = tiled_decode(model, zb, (len(zb), *manifest["input_shape"]), tiling["tile"],
                                         tiling.get("overlap", 0), tiling.get("frames"), tiling.get("frame_overlap", 0))
                else:
                    recon, _ = model.decode(zb)
                x = likelihood_mean(model.recon_kind, recon).float().cpu()
                if modality == "tabular":
                    tables.setdefault(entry["split"], []).append(x)
                    continue
                for key, xi in zip(keys[s : s + batch_size], x, strict=True):
                    _write_sample(out / entry["split"] / key, xi, modality, manifest.get("sample_rate"))
    for split, parts in tables.items():
        np.save(out / f"{split}.npy", torch.cat(parts).numpy())
    return out
