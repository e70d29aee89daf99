"""``evaluate`` one model and ``compare`` several on the same batches with the same seeds.

Owns loading what to evaluate (a run directory, a checkpoint, a ``model.safetensors`` or a module), resolving the
data (the run's own config, a DataBundle, a Dataset, a tensor, or overrides), picking the metrics that fit the
modality, and the deterministic pass over the batches. The numbers come from `vaekit.eval.metrics`; the figures
from `vaekit.eval.figures`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vaekit.errors import CheckpointError, ConfigError, MissingWeightsError, ModelProtocolError
from vaekit.eval import metrics as M
from vaekit.objectives.reconstruction import likelihood_mean

# Every metric name `evaluate` accepts, grouped by the modality it needs ("all": any data).
METRICS: dict[str, tuple[str, ...]] = {
    "all": ("elbo", "iwae", "mse", "latent", "mi", "scale_shift"),
    "image": ("psnr", "ssim", "ms_ssim", "lpips", "rfid", "fid"),
    "audio": ("si_sdr", "mrstft", "lsd"),
    "tags": ("tags",),  # binary tables / multi-hot tags
    "factors": ("mig", "sap"),  # data with labels or generative factors in batch["y"]
}
ALL_METRICS = tuple(name for group in METRICS.values() for name in group)
NEEDS_WEIGHTS = ("lpips", "rfid", "fid")

UNITS = {
    "neg_elbo": "nats/sample",
    "recon_nll": "nats/sample",
    "kl": "nats/sample",
    "neg_elbo_bpd": "bits/dim",
    "iwae_nll": "nats/sample",
    "iwae_bpd": "bits/dim",
    "mse": "per element",
    "active_units": "count",
    "active_fraction": "fraction",
    "mi": "nats",
    "kl_dim_max": "nats/dim",
    "posterior_mean_abs": "",
    "posterior_mean_var": "",
    "posterior_var": "",
    "aggregate_var": "",
    "scaling_factor": "1/std",
    "shift_factor": "mean",
    "psnr": "dB",
    "ssim": "[-1, 1]",
    "ms_ssim": "[0, 1]",
    "lpips": "distance",
    "rfid": "FID",
    "fid": "FID",
    "si_sdr": "dB",
    "mrstft": "distance",
    "lsd": "dB",
    "f1_micro": "[0, 1]",
    "f1_macro": "[0, 1]",
    "map": "[0, 1]",
    "auroc": "[0, 1]",
    "mig": "[0, 1]",
    "sap": "[0, 1]",
}


# ------------------------------------------------------------------------------------------ loading
@dataclass
class Loaded:
    """A model to evaluate and where it came from."""

    model: nn.Module
    name: str
    source: str
    run_dir: Path | None = None
    config: Any = None  # the run's VaekitConfig, when known
    step: int | None = None


def _read_run_config(run_dir: Path) -> Any:
    from vaekit.config.load import load_config

    return load_config(run_dir / "config.yaml")


def _model_from_weights(path: Path, run_dir: Path | None, cfg: Any) -> nn.Module:
    """Weights without their own config (a checkpoint's): the skeleton from the run's ``model_config.json``."""
    from safetensors.torch import load_file

    from vaekit.models import build_model_from_config

    if run_dir is not None and (run_dir / "model_config.json").is_file():
        model = build_model_from_config(json.loads((run_dir / "model_config.json").read_text()))
    elif cfg is not None:
        from vaekit.data import build_data
        from vaekit.models import build_model

        model = build_model(cfg.model, build_data(cfg.data, cfg.run.seed).info.shape, cfg.loss.recon)
    else:
        raise CheckpointError(f"{path}: no model config beside it (model_config.json) to rebuild the model")
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: does not match the run's model ({str(err).splitlines()[0]})"
        ) from None
    return model.eval()


def _checkpoint_file(checkpoint: str | Path, run_dir: Path | None, ema: bool) -> Path:
    path = Path(checkpoint)
    if not path.exists() and run_dir is not None and (run_dir / "checkpoints" / path).exists():
        path = run_dir / "checkpoints" / path
    if path.is_dir():
        path = path / ("ema.safetensors" if ema else "model.safetensors")
    if not path.is_file():
        what = "EMA weights (ema.safetensors; was train.ema on?)" if ema else "model.safetensors"
        raise CheckpointError(f"--checkpoint {checkpoint}: no {what} at {path}")
    return path


def load_for_eval(
    model_or_run: Loaded | nn.Module | str | Path, checkpoint: str | Path | None = None, ema: bool = False
) -> Loaded:
    """Resolve a run directory, a ``model.safetensors`` or a module into a model in eval mode.

    Args:
        model_or_run: a run directory (its ``config.yaml`` and ``model.safetensors``), a ``.safetensors`` file
            or an ``nn.Module`` with ``encode``/``decode``.
        checkpoint: a checkpoint directory (``checkpoints/step_XXXXXXXX``, also relative to the run's
            ``checkpoints/``) or weights file to load instead of the exported ``model.safetensors``.
        ema: load the checkpoint's ``ema.safetensors``.
    """
    if isinstance(model_or_run, Loaded):
        return model_or_run
    if isinstance(model_or_run, nn.Module):
        for method in ("encode", "decode"):
            if not callable(getattr(model_or_run, method, None)):
                raise ModelProtocolError(f"evaluate: {type(model_or_run).__name__} has no {method}() method")
        return Loaded(model_or_run.eval(), type(model_or_run).__name__, type(model_or_run).__name__)
    from vaekit.api import load_model

    path = Path(model_or_run)
    run_dir: Path | None = None
    cfg = None
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path}: not a run directory (no config.yaml)")
        run_dir, cfg = path, _read_run_config(path)
    elif not path.is_file():
        raise ConfigError(f"{path}: no such run directory or model file")
    name = run_dir.name if run_dir is not None else path.stem
    step = None
    if checkpoint is not None:
        weights = _checkpoint_file(checkpoint, run_dir, ema)
        model = _model_from_weights(weights, run_dir, cfg)
        state = weights.parent / "state.json"
        step = json.loads(state.read_text()).get("step") if state.is_file() else None
        return Loaded(model, name, str(weights), run_dir, cfg, step)
    weights = run_dir / "model.safetensors" if run_dir is not None else path
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: not found (the run has not finished; pass --checkpoint {run_dir}/checkpoints/step_...)"
        )
    model = load_model(weights)
    if run_dir is not None and (run_dir / "summary.json").is_file():
        step = json.loads((run_dir / "summary.json").read_text()).get("steps")
    if cfg is None:
        cfg = _config_from_metadata(weights)
    return Loaded(model, name, str(weights), run_dir, cfg, step)


def _config_from_metadata(path: Path) -> Any:
    """The run config stored in an exported ``model.safetensors`` (None when absent)."""
    from safetensors import safe_open

    from vaekit.config.load import load_config

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return load_config(json.loads(meta["vaekit_config"])) if "vaekit_config" in meta else None


# ------------------------------------------------------------------------------------------ data
@dataclass
class EvalData:
    """The samples to evaluate on, in a fixed order, and what is known about them."""

    source: Any  # ArraySource or a Dataset of dicts
    modality: str
    shape: tuple[int, ...]
    description: str = ""
    factor_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

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


def _from_bundle(bundle: Any, split: str) -> EvalData:
    source = {"train": bundle.train, "val": bundle.val, "test": bundle.test}.get(split)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split}: choose train, val or test")
    if source is None:
        raise ConfigError(f"--split test: {bundle.info.description or 'this data source'} has no test split")
    info = bundle.info
    return EvalData(source, info.modality, tuple(info.shape), info.description, info.factor_names, info.meta)


def _from_config(cfg: Any, split: str) -> EvalData:
    from vaekit.data import build_data

    if cfg.data.source == "tensor":
        raise ConfigError(
            "evaluate: the run was trained on in-memory arrays (data.source=tensor); pass data=<tensor or bundle>"
        )
    return _from_bundle(build_data(cfg.data, cfg.run.seed), split)


def resolve_data(data: Any, loaded: Loaded | None, split: str) -> EvalData:
    """The evaluation samples from ``data`` (see `evaluate`), or from the run's own config when None."""
    from torch.utils.data import Dataset

    from vaekit.data import DataBundle

    if isinstance(data, EvalData):
        return data
    if isinstance(data, DataBundle):
        return _from_bundle(data, split)
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
        return _from_config(load_config(data), split)  # a YAML config file of its own
    overrides = [data] if isinstance(data, str) else data  # dotted overrides (list) or section dicts
    return _from_config(load_config(resolve_dict(base, overrides)), split)


# ------------------------------------------------------------------------------------------ metric choice
def _is_binary(x: Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def default_metrics(modality: str, has_y: bool, binary: bool, vector_latent: bool) -> list[str]:
    """The metrics that fit the data: the general ones plus the modality's (and tags / factors when they apply)."""
    names = list(METRICS["all"])
    if modality in ("image", "video"):
        names += METRICS["image"]
    elif modality == "audio":
        names += METRICS["audio"]
    elif modality == "tabular" and binary:
        names += METRICS["tags"]
    if has_y and vector_latent:
        names += METRICS["factors"]
    return names


def _weights_missing(name: str, opts: dict[str, Any]) -> str | None:
    """Why ``name`` cannot be computed for lack of pretrained weights (None when they are there)."""
    fid_feature, fid_weights = opts["fid_feature"], opts["fid_weights"]
    if name == "lpips" and opts["lpips_pretrained"]:
        from vaekit.config.schema import PerceptualConfig
        from vaekit.objectives.perceptual import _BACKBONES, perceptual_weights_path

        net = opts["lpips_net"]
        path = perceptual_weights_path(
            PerceptualConfig(kind="lpips", net=net, weights_path=opts["lpips_weights"])
        )
        if not path.is_file():
            return f"needs torchvision {_BACKBONES[net][0]} weights at {path}: fetch {_BACKBONES[net][1]}"
    elif name in ("rfid", "fid") and fid_feature is None:
        import importlib.util

        if importlib.util.find_spec("torch_fidelity") is None:
            return "needs torch-fidelity (pip install 'vaekit[fid]')"
        path = M.inception_weights_path(fid_weights)
        if not path.is_file():
            return f"needs InceptionV3 weights at {path}: fetch {M.INCEPTION_URL}"
    return None


# ------------------------------------------------------------------------------------------ the pass
@dataclass
class Artifacts:
    """What the figures need from an evaluation (CPU tensors)."""

    inputs: Tensor
    recons: Tensor
    means: Tensor
    labels: Tensor | None
    errors: Tensor
    kl_per_dim: Tensor
    model: nn.Module
    modality: str
    meta: dict[str, Any]
    factor_names: list[str] | None


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@torch.no_grad()
def _run(
    loaded: Loaded,
    data: EvalData,
    *,
    split: str,
    batches: int | None,
    batch_size: int,
    metrics: Sequence[str] | None,
    seed: int,
    k: int,
    opts: dict[str, Any],
    keep: int = 8,
) -> tuple[dict[str, Any], Artifacts]:
    """One deterministic pass; ``opts``: lpips_net, lpips_pretrained, lpips_weights, fid_feature, fid_weights."""
    model = loaded.model.eval()
    kind = getattr(model, "recon_kind", None)
    if kind is None:
        raise ModelProtocolError(f"evaluate: {loaded.name} has no recon_kind (the likelihood: bce, mse, ...)")
    device = _device_of(model)
    first = next(data.batches(batch_size, 1))
    vector_latent = model.encode(first["x"][:1].to(device))[0].dim() == 2
    binary = _is_binary(first["x"])
    requested = list(metrics) if metrics is not None else None
    wanted = requested or default_metrics(data.modality, "y" in first, binary, vector_latent)
    unknown = sorted(set(wanted) - set(ALL_METRICS))
    if unknown:
        raise ConfigError(f"evaluate: unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")

    skipped: dict[str, str] = {}
    image_like = data.modality in ("image", "video")
    size = min(data.shape[-2:]) if image_like else 0
    for name in list(wanted):
        reason = None
        if name in METRICS["image"] and not image_like:
            reason = f"images or video only (the data is {data.modality})"
        elif name in METRICS["audio"] and data.modality != "audio":
            reason = f"audio only (the data is {data.modality})"
        elif name == "tags" and not binary:
            reason = "binary / multi-hot data only"
        elif name in METRICS["factors"] and "y" not in first:
            reason = "needs labels or factors in batch['y']"
        elif name in METRICS["factors"] and not vector_latent:
            reason = "vector latents only"
        elif name == "ms_ssim" and size < M.MS_SSIM_MIN_SIZE:
            reason = f"needs images of at least {M.MS_SSIM_MIN_SIZE} px a side (these are {size})"
        elif name == "ssim" and size < M.SSIM_MIN_SIZE:
            reason = f"needs images of at least {M.SSIM_MIN_SIZE} px a side (these are {size})"
        elif name == "lpips" and size < M.LPIPS_MIN_SIZE:
            reason = f"needs images of at least {M.LPIPS_MIN_SIZE} px a side (these are {size})"
        elif name in NEEDS_WEIGHTS:
            reason = _weights_missing(name, opts)
            if reason is not None and requested is not None:
                # asked for by name: fail loudly with what to fetch
                raise MissingWeightsError(f"{name}: {reason}")
        if reason is not None:
            skipped[name] = reason
            wanted.remove(name)
    want = set(wanted)

    lpips_net_module = None
    if "lpips" in want:
        lpips_net_module = M.build_lpips(
            opts["lpips_net"], opts["lpips_pretrained"], opts["lpips_weights"]
        ).to(device)
    fid_metric = None
    if want & {"rfid", "fid"}:
        # the real features serve both rFID and the prior samples' FID
        fid_metric = M.build_fid(opts["fid_feature"], opts["fid_weights"], reset_real_features=False).to(
            device
        )

    gen = torch.Generator(device).manual_seed(seed)
    iwae_gen = torch.Generator(device).manual_seed(seed + 1)
    per_sample: dict[str, list[Tensor]] = {}
    means, logvars, labels, errors = [], [], [], []
    inputs, recons, probs, targets = [], [], [], []
    mi_sum, count = 0.0, 0
    moments = M.LatentMoments()

    def add(name: str, value: Tensor) -> None:
        per_sample.setdefault(name, []).append(value.detach().float().cpu())

    n_batches = 0
    for batch in data.batches(batch_size, batches):
        x = batch["x"].to(device).float()  # (B, ...)
        n_batches += 1
        mean, logvar = model.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen, device=device)
        recon_z, logvar_z = model.decode(z)
        recon_mu, _ = model.decode(mean)  # reconstruction quality from the posterior mean
        x_hat = likelihood_mean(kind, recon_mu).float()
        dims = x[0].numel()
        if "elbo" in want:
            for name, value in M.elbo_terms(kind, recon_z, x, mean, logvar, logvar_z).items():
                add(name, value)
            add("neg_elbo_bpd", M.bits_per_dim(per_sample["neg_elbo"][-1], dims))
        if "iwae" in want:
            nll = M.importance_weighted_nll(model, x, k, iwae_gen, kind)
            add("iwae_nll", nll)
            add("iwae_bpd", M.bits_per_dim(nll, dims))
        err = M.mse(x_hat, x)
        errors.append(err.cpu())
        if "mse" in want:
            add("mse", err)
        if "mi" in want and len(x) > 1:  # the minibatch estimator, averaged over batches (weighted by size)
            mi_sum += M.mutual_information(mean, logvar, gen) * len(x)
            count += len(x)
        if "scale_shift" in want:
            moments.update(z)
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
        if "y" in batch:
            labels.append(batch["y"].cpu())
        if image_like:
            pred, target = x_hat.clamp(0, 1), x.clamp(0, 1)
            if "psnr" in want:
                add("psnr", M.psnr(pred, target))
            if "ssim" in want:
                add("ssim", M.ssim(pred, target))
            if "ms_ssim" in want:
                add("ms_ssim", M.ms_ssim(pred, target))
            if lpips_net_module is not None:
                add("lpips", M.lpips_distance(pred, target, lpips_net_module))
            if fid_metric is not None:
                M.fid_update(fid_metric, target, real=True)
                if "rfid" in want:
                    M.fid_update(fid_metric, pred, real=False)
        if data.modality == "audio":
            pred = x_hat.clamp(-1, 1)
            if "si_sdr" in want:
                add("si_sdr", M.si_sdr(pred, x))
            if "mrstft" in want:
                add("mrstft", M.mrstft_distance(pred, x))
            if "lsd" in want:
                add("lsd", M.log_spectral_distance(pred, x))
        if "tags" in want:
            probs.append(x_hat.clamp(0, 1).flatten(1).cpu())
            targets.append(x.flatten(1).cpu())
        if sum(len(t) for t in inputs) < keep:
            inputs.append(x[:keep].cpu())
            recons.append(x_hat[:keep].cpu())

    out: dict[str, float] = {name: torch.cat(values).mean().item() for name, values in per_sample.items()}
    details: dict[str, Any] = {}
    all_means, all_logvars = torch.cat(means), torch.cat(logvars)
    kl_dim = M.kl_per_dimension(all_means, all_logvars)
    if "latent" in want:
        out["active_units"] = float(M.active_units(all_means))
        out["active_fraction"] = out["active_units"] / kl_dim.numel()
        out["kl_dim_max"] = kl_dim.max().item()
        out.update(M.posterior_stats(all_means, all_logvars))
        details["kl_per_dim"] = kl_dim.tolist()
    if "mi" in want and count:
        out["mi"] = mi_sum / count
    if "scale_shift" in want:
        factors = moments.result()
        out["scaling_factor"], out["shift_factor"] = factors["scaling_factor"], factors["shift_factor"]
        details["scaling_factor_per_channel"] = factors["scaling_factor_per_channel"]
        details["shift_factor_per_channel"] = factors["shift_factor_per_channel"]
    if fid_metric is not None:
        if "rfid" in want:
            out["rfid"] = float(fid_metric.compute())
        if "fid" in want:  # prior samples against the same real images
            fid_metric.reset()
            prior = torch.Generator(device).manual_seed(seed + 2)
            n_real = int(fid_metric.real_features_num_samples)
            frames = data.shape[1] if data.modality == "video" else 1
            for start in range(0, n_real // frames, batch_size):
                n = min(batch_size, n_real // frames - start)
                sample = likelihood_mean(kind, model.sample(n, generator=prior, input_shape=data.shape))
                M.fid_update(fid_metric, sample.float().clamp(0, 1), real=False)
            out["fid"] = float(fid_metric.compute())
    if "tags" in want:
        scores = M.multilabel_scores(torch.cat(probs), torch.cat(targets))
        details["f1_per_label"] = scores.pop("f1_per_label")
        out.update(scores)
    y_all = torch.cat(labels) if labels else None
    if want & {"mig", "sap"} and y_all is not None:
        factor_names = data.factor_names or [f"y{i}" for i in range(y_all.reshape(len(y_all), -1).shape[1])]
        if "mig" in want:
            result = M.mig(all_means.numpy(), y_all.numpy())
            out["mig"] = result["mig"]
            details["mig_per_factor"] = dict(zip(factor_names, result["mig_per_factor"], strict=False))
        if "sap" in want:
            result = M.sap(all_means.numpy(), y_all.numpy())
            out["sap"] = result["sap"]
            details["sap_per_factor"] = dict(zip(factor_names, result["sap_per_factor"], strict=False))

    order = [name for name in UNITS if name in out]
    result = {
        "model": loaded.name,
        "source": loaded.source,
        "step": loaded.step,
        "split": split,
        "data": data.description,
        "modality": data.modality,
        "recon": kind,
        "samples": len(all_means),
        "batches": n_batches,
        "seed": seed,
        "k": k if "iwae" in want else None,
        "metrics": {name: out[name] for name in order},
        "units": {name: UNITS[name] for name in order},
        "details": details,
        "skipped": skipped,
    }
    artifacts = Artifacts(
        inputs=torch.cat(inputs)[:keep],
        recons=torch.cat(recons)[:keep],
        means=all_means,
        labels=y_all,
        errors=torch.cat(errors),
        kl_per_dim=kl_dim,
        model=model,
        modality=data.modality,
        meta=data.meta,
        factor_names=data.factor_names,
    )
    return _jsonable(result), artifacts


# ------------------------------------------------------------------------------------------ public API
def evaluate(
    model_or_run: nn.Module | str | Path,
    data: Any = None,
    *,
    split: str = "val",
    batches: int | None = None,
    batch_size: int = 64,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    k: int = 64,
    checkpoint: str | Path | None = None,
    ema: bool = False,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    lpips_net: str = "alex",
    lpips_pretrained: bool = True,
    lpips_weights: str | Path | None = None,
    fid_feature: nn.Module | None = None,
    fid_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate one model on a split, deterministically (same seed, same batches → same numbers).

    Args:
        model_or_run: a run directory, a ``model.safetensors`` or an ``nn.Module`` (the VAE protocol).
        data: None (the run's own ``data`` config and ``run.seed``), a ``DataBundle`` (``split`` picks the
            source), a ``Dataset`` of dict batches, a tensor ``(N, ...)``, a tuple ``(x, y)``, a dict
            ``{"x": ..., "y": ...}``, a YAML config path, or dotted overrides applied to the run's config
            (``["data.num_samples=500"]``).
        split: ``val``, ``test`` or ``train`` (bundles and configs only).
        batches: evaluate only the first N batches (in order; default all).
        batch_size: samples per batch.
        metrics: names from `ALL_METRICS`; default: those that fit the modality. Defaults that need pretrained
            weights not on disk (LPIPS, FID) are skipped with a note; named ones raise ``MissingWeightsError``.
        seed: seeds posterior samples, importance samples and prior samples.
        k: importance samples per input for ``iwae``.
        checkpoint, ema: evaluate a checkpoint's weights (see `load_for_eval`).
        device: where to run (default: where the module is; run directories load on CPU).
        out_dir: when given, figures are written there (see `vaekit.eval.figures.write_figures`).
        lpips_net, lpips_pretrained, lpips_weights: LPIPS backbone (alex, vgg, squeeze), ``False`` for a random
            trunk (tests only), the torchvision weights file (default: the torch hub cache).
        fid_feature, fid_weights: a feature extractor replacing InceptionV3 / the InceptionV3 weights file.

    Returns:
        A JSON-able dict: ``metrics`` (name → value), ``units``, ``details`` (per-dimension KL, per-channel
        scale/shift factors, per-label F1, per-factor MIG/SAP), ``skipped`` (name → why), the provenance
        (``model``, ``source``, ``step``, ``split``, ``samples``, ``seed``, ``k``) and ``files`` with ``out_dir``.
    """
    loaded = load_for_eval(model_or_run, checkpoint, ema)
    if device is not None:
        loaded.model.to(device)
    eval_data = resolve_data(data, loaded, split)
    _check_fits(loaded, eval_data)
    result, artifacts = _run(
        loaded,
        eval_data,
        split=split,
        batches=batches,
        batch_size=batch_size,
        metrics=metrics,
        seed=seed,
        k=k,
        opts=_options(lpips_net, lpips_pretrained, lpips_weights, fid_feature, fid_weights),
    )
    if out_dir is not None:
        from vaekit.eval.figures import write_figures

        result["files"] = [str(p) for p in write_figures(artifacts, Path(out_dir), seed=seed)]
    return result


def _options(
    lpips_net: str = "alex",
    lpips_pretrained: bool = True,
    lpips_weights: str | Path | None = None,
    fid_feature: nn.Module | None = None,
    fid_weights: str | Path | None = None,
) -> dict[str, Any]:
    return {
        "lpips_net": lpips_net,
        "lpips_pretrained": lpips_pretrained,
        "lpips_weights": None if lpips_weights is None else str(lpips_weights),
        "fid_feature": fid_feature,
        "fid_weights": fid_weights,
    }


def _expects(loaded: Loaded) -> tuple[int, ...] | None:
    config = getattr(loaded.model, "config", None)
    return tuple(config["input_shape"]) if isinstance(config, dict) and "input_shape" in config else None


def _fixed_size(loaded: Loaded) -> bool:
    config = getattr(loaded.model, "config", {}) or {}
    return config.get("arch") == "mlp" or config.get("latent", "vector") == "vector"


def _describe(shape: tuple[int, ...]) -> str:
    return f"{_MODALITY_BY_NDIM.get(len(shape) - 1, 'data')} {shape}"


def _check_fits(loaded: Loaded, data: EvalData) -> None:
    """The data must have the model's modality and channels (and size, for fixed-size models)."""
    shape = _expects(loaded)
    if shape is None:
        return
    ok = len(shape) == len(data.shape) and shape[0] == data.shape[0]
    if ok and _fixed_size(loaded):
        ok = shape == data.shape
    if not ok:
        raise ConfigError(
            f"{loaded.name} expects {_describe(shape)} but the data is {data.modality} {data.shape}"
        )


def _check_compatible(models: list[Loaded]) -> None:
    """All models must take the same modality and channels, and the same size when one is fixed-size."""
    first = models[0]
    a = _expects(first)
    for other in models[1:]:
        b = _expects(other)
        if a is None or b is None:
            continue
        ok = len(a) == len(b) and a[0] == b[0]
        if ok and (_fixed_size(first) or _fixed_size(other)):
            ok = a[1:] == b[1:]
        if not ok:
            raise ConfigError(
                f"compare: {other.name} expects {_describe(b)} but {first.name} expects {_describe(a)}; "
                "compare models of the same modality, channels and size"
            )


def compare(
    models: Sequence[nn.Module | str | Path],
    data: Any = None,
    *,
    split: str = "val",
    batches: int | None = None,
    batch_size: int = 64,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    k: int = 64,
    out_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate several models on the same batches with the same seeds.

    Args:
        models: run directories, ``model.safetensors`` files or modules (at least two).
        data: as in `evaluate`; None uses the first model's run config.
        out_dir: when given, writes ``compare.json``, ``compare.md`` (a markdown table) and ``compare.png``.
        names: column names (default: run directory names, made unique).
        **kwargs: ``device``, ``lpips_net``, ``lpips_pretrained``, ``lpips_weights``, ``fid_feature``,
            ``fid_weights`` as in `evaluate`.

    Returns:
        ``{"models": [names], "results": {name: evaluate's dict}, "data", "split", "seed"}`` (+ ``files``).

    Raises:
        ConfigError: models with different modality, channels or (fixed) size, naming both.
    """
    if len(models) < 2:
        raise ConfigError(f"compare: needs at least two models (got {len(models)})")
    loaded = [load_for_eval(m) for m in models]
    labels = list(names) if names is not None else _unique([m.name for m in loaded])
    for item, label in zip(loaded, labels, strict=True):
        item.name = label
    _check_compatible(loaded)
    eval_data = resolve_data(data, loaded[0], split)
    device = kwargs.pop("device", None)
    opts = _options(**kwargs)
    results, artifacts = {}, {}
    for item in loaded:
        if device is not None:
            item.model.to(device)
        _check_fits(item, eval_data)
        results[item.name], artifacts[item.name] = _run(
            item,
            eval_data,
            split=split,
            batches=batches,
            batch_size=batch_size,
            metrics=metrics,
            seed=seed,
            k=k,
            opts=opts,
        )
    out = {"models": labels, "results": results, "data": eval_data.description, "split": split, "seed": seed}
    if out_dir is not None:
        from vaekit.eval.figures import comparison_figure

        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "compare.md").write_text(markdown_table(results) + "\n")
        comparison_figure(artifacts, results, directory / "compare.png")
        out["files"] = [str(directory / n) for n in ("compare.json", "compare.md", "compare.png")]
        (directory / "compare.json").write_text(json.dumps(out, indent=1))
    return out


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per metric (with its unit), one column per model."""
    names = list(results)
    rows: list[str] = []
    for result in results.values():
        rows += [m for m in result["metrics"] if m not in rows]
    units = {m: u for r in results.values() for m, u in r["units"].items()}
    lines = ["| metric | unit | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for metric in rows:
        cells = [_format(results[n]["metrics"].get(metric)) for n in names]
        lines.append(f"| {metric} | {units.get(metric, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
