"""``vaekit export RUN --format hub`` and ``vaekit push RUN REPO_ID``: a folder ready to upload to the Hugging Face
hub, and its upload.

The folder holds ``model.safetensors`` (configs in its metadata, as every vaekit export), ``model_config.json``,
``config.yaml`` (the run's config), ``latent_stats.json`` (the scale/shift, when the run wrote them), ``curves.png``
(when plotted), for diffusers models the ``diffusers/`` folder (its config carrying ``scaling_factor`` and
``shift_factor``), and a model card ``README.md``: the data, the objective, the final validation and test metrics,
the curves and a usage snippet. ``vaekit.load_model(folder_or_hub_id)`` loads it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vaekit.errors import ConfigError

REPO_PLACEHOLDER = "OWNER/NAME"
"""Stands for the hub id in the card's snippets; `push` writes the real one."""

CARD = """---
library_name: vaekit
tags:
- vaekit
- vae
- autoencoder
{extra_tags}---

# {name}

A {arch} variational autoencoder trained with vaekit ({params:,} parameters).

## Data
{data}

## Objective
{objective}

## Metrics
{metrics}
{curves}
## Latents
{latents}

## Usage
```python
import vaekit

model = vaekit.load_model("{repo}")  # the hub id, or the path of this folder
mean, logvar = model.encode(x)                # x: {shape_text}
recon, _ = model.decode(mean)
```
{diffusers}"""

DIFFUSERS = """
With diffusers (the `diffusers/` subfolder):
```python
from diffusers import {cls}

vae = {cls}.from_pretrained("{repo}", subfolder="diffusers")
latents = (vae.encode(x).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
```
"""


def _table(metrics: dict[str, Any]) -> str:
    rows = [f"| {k} | {v:.5g} |" for k, v in metrics.items() if isinstance(v, int | float)]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) if rows else "(none recorded)"


def _objective(cfg: Any) -> str:
    loss = cfg.loss
    parts = [f"reconstruction `{loss.recon}`", f"KL weight β={loss.beta}" if hasattr(loss, "beta") else "KL"]
    for name in ("perceptual", "adversarial", "spectral"):
        sub = getattr(loss, name, None)
        on = getattr(sub, "kind", "none") != "none" if name == "perceptual" else getattr(sub, "weight", 0) > 0
        if sub is not None and on:
            parts.append(name)
    return ", ".join(parts) + f"; {cfg.train.max_steps or cfg.train.epochs} {'steps' if cfg.train.max_steps else 'epochs'}" \
        f", batch {cfg.train.batch_size}, optimiser {cfg.optim.name} (lr {cfg.optim.lr})."


def model_card(run_dir: Path, cfg: Any, summary: dict[str, Any], repo: str, has_curves: bool) -> str:
    """The README.md of a hub folder."""
    stats = summary.get("latent_stats")
    metrics = "Final validation:\n\n" + _table(summary.get("final_val", {}))
    if summary.get("test"):
        metrics += "\n\nTest split (evaluated once, final weights):\n\n" + _table(summary["test"])
    latents = ("Posterior means of the validation split (diffusers convention: "
               "`latents = (z - shift_factor) * scaling_factor`):\n\n"
               f"- scaling_factor: {stats['scaling_factor']:.6g}\n- shift_factor: {stats['shift_factor']:.6g}\n"
               f"- per-channel std: {[round(s, 4) for s in stats['std']]}\n(`latent_stats.json`)") if stats else \
        "(not recorded)"
    model_cfg = json.loads((run_dir / "model_config.json").read_text()) if (run_dir / "model_config.json").is_file() else {}
    shape = model_cfg.get("input_shape") or model_cfg.get("shape")
    is_diffusers = cfg.model.arch == "diffusers"
    return CARD.format(
        extra_tags="- diffusers\n" if is_diffusers else "",
        name=run_dir.name, arch=cfg.model.arch, params=int(summary.get("parameters", 0)),
        data=f"`{summary.get('data', cfg.data.source)}` (data.source={cfg.data.source})",
        objective=_objective(cfg), metrics=metrics,
        curves="\n![training curves](curves.png)\n" if has_curves else "",
        latents=latents, repo=repo,
        shape_text=f"(N, {', '.join(map(str, shape))})" if shape else "a batch shaped like the training data",
        diffusers=DIFFUSERS.format(cls=cfg.model.class_name, repo=repo) if is_diffusers else "",
    )


def export_hub(run_dir: Path, out: Path | None, checkpoint: str | None, export_run: Any) -> Path:
    """Write the hub folder of ``run_dir`` (default ``RUN_DIR/hub``); returns it."""
    from vaekit.config.load import load_config

    cfg = load_config(run_dir / "config.yaml")
    folder = out or run_dir / "hub"
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"--out: {folder} is not empty; choose a new folder")
    export_run(run_dir, "safetensors", checkpoint, folder)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    shutil.copy(run_dir / "config.yaml", folder / "config.yaml")
    if summary.get("latent_stats"):
        (folder / "latent_stats.json").write_text(json.dumps(summary["latent_stats"], indent=1))
    has_curves = (run_dir / "curves.png").is_file()
    if has_curves:
        shutil.copy(run_dir / "curves.png", folder / "curves.png")
    if cfg.model.arch == "diffusers":
        export_run(run_dir, "diffusers", checkpoint, folder / "diffusers")
    (folder / "README.md").write_text(model_card(run_dir, cfg, summary, REPO_PLACEHOLDER, has_curves))
    return folder


def push(run_dir: str | Path, repo_id: str, *, private: bool = False, folder: str | Path | None = None) -> str:
    """Export ``run_dir`` for the hub (unless ``folder`` is an existing export) and upload it to ``repo_id``;
    returns the repository URL. Offline or without a token: one line saying what to do."""
    from vaekit.pipeline.export import export_run

    src = Path(folder) if folder else Path(run_dir) / "hub"
    if not (src / "model.safetensors").is_file():
        src = export_run(run_dir, "hub", None, src)
    card = src / "README.md"
    if card.is_file():
        card.write_text(card.read_text().replace(f'"{REPO_PLACEHOLDER}"', f'"{repo_id}"'))
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(src), repo_id=repo_id, commit_message="vaekit export")
    except Exception as err:  # noqa: BLE001 - offline, no token, no rights: the hub raises many kinds; all one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"push: cannot upload to {repo_id} ({type(err).__name__}: {first}); check the network and log in "
            f"(`huggingface-cli login` or HF_TOKEN); the folder to upload is ready at {src}"
        ) from None
    return f"https://huggingface.co/{repo_id}"
