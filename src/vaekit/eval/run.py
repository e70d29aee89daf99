"""One deterministic evaluation pass: which metrics apply, the pass over the batches, the numbers and the figures'
inputs (`Artifacts`).

The numbers come from `vaekit.eval.metrics`, the table of names and units from `vaekit.eval.registry`. Imports
nothing above it (no loading, no api, no pipeline): validation during training runs `measure` directly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaekit.errors import ConfigError, MissingWeightsError, ModelProtocolError
from vaekit.eval import metrics as M
from vaekit.eval.data import EvalData, check_fits
from vaekit.eval.registry import (
    ALL_METRICS,
    METRICS,
    NEEDS_WEIGHTS,
    POSTERIOR_ONLY,
    QUANTIZED_ONLY,
    UNITS,
    default_metrics,
)
from vaekit.models.bottleneck import codebook_stats
from vaekit.objectives.kl import kl_per_element
from vaekit.objectives.reconstruction import likelihood_mean


def options(
    lpips_net: str = "alex",
    lpips_pretrained: bool = True,
    lpips_weights: str | Path | None = None,
    fid_feature: nn.Module | None = None,
    fid_weights: str | Path | None = None,
) -> dict[str, Any]:
    """The pass's options for the pretrained networks (see `vaekit.eval.evaluate.evaluate`)."""
    return {
        "lpips_net": lpips_net,
        "lpips_pretrained": lpips_pretrained,
        "lpips_weights": None if lpips_weights is None else str(lpips_weights),
        "fid_feature": fid_feature,
        "fid_weights": fid_weights,
    }


def bar(items: Iterable[Any], progress: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    """``items`` under a tqdm bar on stderr when ``progress`` (updates every 30 s when stderr is not a terminal,
    so a log file is not filled with carriage returns); else ``items`` as they are."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=True, mininterval=0.1 if interactive else 30.0,
                dynamic_ncols=True)


def _is_binary(x: Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# ------------------------------------------------------------------------------------------ metric choice
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


def _why_not(name: str, data: EvalData, has_y: bool, binary: bool, vector_latent: bool,
             quantized: bool = False) -> str | None:
    """Why ``name`` does not apply to this data and model (None when it does), weights aside."""
    if quantized and name in POSTERIOR_ONLY:
        return "needs a Gaussian posterior (the latent is quantised)"
    if not quantized and name in QUANTIZED_ONLY:
        return "quantised latents only (model.bottleneck.kind vq, rvq, fsq, lfq)"
    image_like = data.modality in ("image", "video")
    size = min(data.shape[-2:]) if image_like else 0
    if name in METRICS["image"] and not image_like:
        return f"images or video only (the data is {data.modality})"
    if name in METRICS["audio"] and data.modality != "audio":
        return f"audio only (the data is {data.modality})"
    if name == "tags" and not binary:
        return "binary / multi-hot data only"
    factor_metric = name in METRICS["factors"] or name in METRICS["disentangle"]
    if factor_metric and not has_y:
        return "needs labels or factors in batch['y']"
    if factor_metric and not vector_latent:
        return "vector latents only"
    if name == "ms_ssim" and size < M.MS_SSIM_MIN_SIZE:
        return f"needs images of at least {M.MS_SSIM_MIN_SIZE} px a side (these are {size})"
    if name == "ssim" and size < M.SSIM_MIN_SIZE:
        return f"needs images of at least {M.SSIM_MIN_SIZE} px a side (these are {size})"
    if name == "lpips" and size < M.LPIPS_MIN_SIZE:
        return f"needs images of at least {M.LPIPS_MIN_SIZE} px a side (these are {size})"
    return None


def choose_metrics(
    requested: Sequence[str] | None, data: EvalData, first: dict[str, Tensor], vector_latent: bool,
    opts: dict[str, Any], quantized: bool = False,
) -> tuple[set[str], dict[str, str]]:
    """The metrics to compute and the skipped ones (name → why). Defaults that do not fit are skipped with a note;
    named ones that lack their pretrained weights raise ``MissingWeightsError``."""
    binary = _is_binary(first["x"])
    requested = list(requested) if requested is not None else None
    wanted = requested or default_metrics(data.modality, "y" in first, binary, vector_latent)
    unknown = sorted(set(wanted) - set(ALL_METRICS))
    if unknown:
        raise ConfigError(f"evaluate: unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")
    skipped: dict[str, str] = {}
    for name in list(wanted):
        reason = _why_not(name, data, "y" in first, binary, vector_latent, quantized)
        if reason is None and name in NEEDS_WEIGHTS:
            reason = _weights_missing(name, opts)
            if reason is not None and requested is not None:
                # asked for by name: fail loudly with what to fetch
                raise MissingWeightsError(f"{name}: {reason}")
        if reason is not None:
            skipped[name] = reason
            wanted.remove(name)
    return set(wanted), skipped


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


class _Pass:
    """The accumulators of one pass: per-sample values, posterior statistics and what the figures keep."""

    def __init__(self, model: nn.Module, kind: str, data: EvalData, want: set[str], opts: dict[str, Any],
                 seed: int, k: int, batch_size: int, keep: int, name: str = "", progress: bool = False) -> None:
        self.model, self.kind, self.data, self.want = model, kind, data, want
        self.name, self.progress = name, progress
        self.seed, self.k, self.batch_size, self.keep = seed, k, batch_size, keep
        self.device = device = _device_of(model)
        self.image_like = data.modality in ("image", "video")
        self.lpips = None
        if "lpips" in want:
            self.lpips = M.build_lpips(opts["lpips_net"], opts["lpips_pretrained"], opts["lpips_weights"]).to(device)
        self.fid = None
        if want & {"rfid", "fid"}:
            # the real features serve both rFID and the prior samples' FID
            self.fid = M.build_fid(opts["fid_feature"], opts["fid_weights"], reset_real_features=False).to(device)
        self.gen = torch.Generator(device).manual_seed(seed)
        self.iwae_gen = torch.Generator(device).manual_seed(seed + 1)
        self.per_sample: dict[str, list[Tensor]] = {}
        self.means: list[Tensor] = []
        self.logvars: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.errors: list[Tensor] = []
        self.inputs: list[Tensor] = []
        self.recons: list[Tensor] = []
        self.probs: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.mi_sum, self.count, self.n_batches = 0.0, 0, 0
        self.moments = M.LatentMoments()
        bottleneck = getattr(model, "bottleneck", None)
        self.quantized = bool(getattr(bottleneck, "quantized", False))
        if self.quantized:  # code counts per codebook over the pass
            self.codes = torch.zeros(bottleneck.num_codebooks, bottleneck.codebook_size, dtype=torch.float64)
        self.seconds: dict[str, float] = {}
        """Wall time per metric over the pass (``forward``: encoding and decoding), for the progress report."""

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, value: Tensor) -> None:
        self.per_sample.setdefault(name, []).append(value.detach().float().cpu())

    def update(self, batch: dict[str, Tensor]) -> None:
        """One batch: encode, decode a posterior sample and the posterior mean, then every wanted metric."""
        model, want, gen, timed = self.model, self.want, self.gen, self.timed
        x = batch["x"].to(self.device).float()  # (B, ...)
        self.n_batches += 1
        with timed("forward"):
            if self.quantized:
                mean, x_hat = self._quantized(x)
                logvar = None
            else:
                mean, logvar = model.encode(x)
                z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen, device=self.device)
                recon_z, logvar_z = model.decode(z)
                recon_mu, _ = model.decode(mean)  # reconstruction quality from the posterior mean
                x_hat = likelihood_mean(self.kind, recon_mu).float()
        if "rate" in want and logvar is not None:  # the KL in bits: what the posterior transmits about x
            self.add("kl_bits", kl_per_element(mean, logvar).flatten(1).sum(1) / math.log(2))
        dims = x[0].numel()
        if "elbo" in want:
            with timed("elbo"):
                terms = M.elbo_terms(self.kind, recon_z, x, mean, logvar, logvar_z)
                if M.has_own_densities(model):  # a learned prior / two layers: the sampled KL, not N(0, I)'s
                    log_px, log_pz, log_qz = (t[0] for t in M.sampled_log_densities(model, x, 1, gen, self.kind))
                    terms = {"recon_nll": -log_px, "kl": log_qz - log_pz, "neg_elbo": log_qz - log_pz - log_px}
                for name, value in terms.items():
                    self.add(name, value)
                self.add("neg_elbo_bpd", M.bits_per_dim(self.per_sample["neg_elbo"][-1], dims))
        if "iwae" in want:
            with timed("iwae"):
                nll = M.importance_weighted_nll(model, x, self.k, self.iwae_gen, self.kind)
                self.add("iwae_nll", nll)
                self.add("iwae_bpd", M.bits_per_dim(nll, dims))
        with timed("mse"):
            err = M.mse(x_hat, x)
            self.errors.append(err.cpu())
        if "mse" in want:
            self.add("mse", err)
        if "mi" in want and len(x) > 1:  # the minibatch estimator, averaged over batches (weighted by size)
            with timed("mi"):
                self.mi_sum += M.mutual_information(mean, logvar, gen) * len(x)
                self.count += len(x)
        if "scale_shift" in want:
            self.moments.update(z if logvar is not None else mean)
        self.means.append(mean.float().cpu())
        if logvar is not None:
            self.logvars.append(logvar.float().cpu())
        if "y" in batch:
            self.labels.append(batch["y"].cpu())
        self._per_modality(x, x_hat)
        if sum(len(t) for t in self.inputs) < self.keep:
            self.inputs.append(x[: self.keep].cpu())
            self.recons.append(x_hat[: self.keep].cpu())

    def _quantized(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A quantised model's pass over one batch: ``(z_q, likelihood mean)``; counts the codes it used."""
        out = self.model(x)
        indices = out.info["indices"].reshape(-1, self.codes.shape[0]).long().cpu()  # (B·N, Q)
        for q in range(self.codes.shape[0]):
            self.codes[q] += torch.bincount(indices[:, q], minlength=self.codes.shape[1]).double()
        return out.mean, likelihood_mean(self.kind, out.recon).float()

    def _rate(self, out: dict[str, float]) -> None:
        """Bits per latent position and per input element: log2(codebook size) for a quantised latent, the KL in
        bits for a Gaussian one (so the two compare at equal rate)."""
        latent = tuple(self.all_means.shape[1:])
        positions = math.prod(latent[1:]) if len(latent) > 1 else 1
        elements = math.prod(self.data.shape)
        if self.quantized:
            bits = self.model.bottleneck.bits_per_position
            out["bits_per_position"], out["bits_per_element"] = bits, bits * positions / elements
        elif "kl_bits" in out:
            kl_bits = out.pop("kl_bits")
            out["bits_per_position"], out["bits_per_element"] = kl_bits / positions, kl_bits / elements

    def _per_modality(self, x: Tensor, x_hat: Tensor) -> None:
        """The image, audio and tag metrics of one batch."""
        want, add, timed = self.want, self.add, self.timed
        if self.image_like:
            pred, target = x_hat.clamp(0, 1), x.clamp(0, 1)
            for name, fn in (("psnr", M.psnr), ("ssim", M.ssim), ("ms_ssim", M.ms_ssim)):
                if name in want:
                    with timed(name):
                        add(name, fn(pred, target))
            if self.lpips is not None:
                with timed("lpips"):
                    add("lpips", M.lpips_distance(pred, target, self.lpips))
            if self.fid is not None:
                with timed("rfid" if "rfid" in want else "fid"):
                    M.fid_update(self.fid, target, real=True)
                    if "rfid" in want:
                        M.fid_update(self.fid, pred, real=False)
        if self.data.modality == "audio":
            pred = x_hat.clamp(-1, 1)
            for name, fn in (("si_sdr", M.si_sdr), ("mrstft", M.mrstft_distance), ("lsd", M.log_spectral_distance)):
                if name in want:
                    with timed(name):
                        add(name, fn(pred, x))
        if "tags" in want:
            self.probs.append(x_hat.clamp(0, 1).flatten(1).cpu())
            self.targets.append(x.flatten(1).cpu())

    def finish(self) -> tuple[dict[str, float], dict[str, Any]]:
        """The numbers over all batches (``out``) and the per-dimension / per-label / per-factor ``details``."""
        want = self.want
        out: dict[str, float] = {name: torch.cat(v).mean().item() for name, v in self.per_sample.items()}
        details: dict[str, Any] = {}
        self.all_means = torch.cat(self.means)
        if "rate" in want:
            self._rate(out)
        out.pop("kl_bits", None)
        if self.quantized:  # no posterior: KL per dimension is undefined (zeros for the figures' ordering)
            self.kl_dim = torch.zeros(self.all_means.shape[1])
            if "codebook" in want:
                out.update(codebook_stats(self.codes))
            return self._finish_common(out, details)
        all_logvars = torch.cat(self.logvars)
        self.kl_dim = kl_dim = M.kl_per_dimension(self.all_means, all_logvars)
        if "latent" in want:
            out["active_units"] = float(M.active_units(self.all_means))
            out["active_fraction"] = out["active_units"] / kl_dim.numel()
            out["kl_dim_max"] = kl_dim.max().item()
            out.update(M.posterior_stats(self.all_means, all_logvars))
            details["kl_per_dim"] = kl_dim.tolist()
        if "mi" in want and self.count:
            out["mi"] = self.mi_sum / self.count
        return self._finish_common(out, details)

    def _finish_common(self, out: dict[str, float], details: dict[str, Any]) -> tuple[dict[str, float], dict]:
        """The metrics every latent has: scale/shift, FID, tags, factor scores."""
        want = self.want
        if "scale_shift" in want:
            factors = self.moments.result()
            out["scaling_factor"], out["shift_factor"] = factors["scaling_factor"], factors["shift_factor"]
            details["scaling_factor_per_channel"] = factors["scaling_factor_per_channel"]
            details["shift_factor_per_channel"] = factors["shift_factor_per_channel"]
        if self.fid is not None:
            self._fid(out)
        if "tags" in want:
            with self.timed("tags"):
                scores = M.multilabel_scores(torch.cat(self.probs), torch.cat(self.targets))
            details["f1_per_label"] = scores.pop("f1_per_label")
            out.update(scores)
        self.y_all = torch.cat(self.labels) if self.labels else None
        if want & {"mig", "sap", "dci", "factor_vae_score", "beta_vae_score"} and self.y_all is not None:
            self._factors(out, details)
        return out, details

    def _fid(self, out: dict[str, float]) -> None:
        """rFID (reconstructions) and FID (prior samples), both against the real images of the pass."""
        fid = self.fid
        if "rfid" in self.want:
            with self.timed("rfid"):
                out["rfid"] = float(fid.compute())
        if "fid" in self.want:  # prior samples against the same real images
            fid.reset()
            prior = torch.Generator(self.device).manual_seed(self.seed + 2)
            n_real = int(fid.real_features_num_samples)
            frames = self.data.shape[1] if self.data.modality == "video" else 1
            starts = range(0, n_real // frames, self.batch_size)
            with self.timed("fid"):
                for start in bar(starts, self.progress, f"{self.name}: fid prior samples"):
                    n = min(self.batch_size, n_real // frames - start)
                    sample = self.model.sample(n, generator=prior, input_shape=self.data.shape)
                    M.fid_update(fid, likelihood_mean(self.kind, sample).float().clamp(0, 1), real=False)
                out["fid"] = float(fid.compute())

    def _factors(self, out: dict[str, float], details: dict[str, Any]) -> None:
        """MIG and SAP of the posterior means against the labels / generative factors."""
        y_all = self.y_all
        names = self.data.factor_names or [f"y{i}" for i in range(y_all.reshape(len(y_all), -1).shape[1])]
        for metric, score in (("mig", M.mig), ("sap", M.sap)):
            if metric in self.want:
                with self.timed(metric):
                    result = score(self.all_means.numpy(), y_all.numpy())
                out[metric] = result[metric]
                details[f"{metric}_per_factor"] = dict(zip(names, result[f"{metric}_per_factor"], strict=False))
        self._disentangle(out, details)

    def _disentangle(self, out: dict[str, float], details: dict[str, Any]) -> None:
        """DCI, the FactorVAE score and the β-VAE score (``eval.disentangle``), seeded by the pass's seed."""
        from vaekit.eval import disentangle as D

        z, y = self.all_means.numpy(), self.y_all.numpy()
        if "dci" in self.want:
            result = D.dci(z, y, seed=self.seed)
            details["dci_importance"] = result.pop("importance")
            out.update(result)
        if "factor_vae_score" in self.want:
            out["factor_vae_score"] = D.factor_vae_score(z, y, seed=self.seed)["factor_vae_score"]
        if "beta_vae_score" in self.want:
            out["beta_vae_score"] = D.beta_vae_score(z, y, seed=self.seed)["beta_vae_score"]

    def artifacts(self) -> Artifacts:
        return Artifacts(
            inputs=torch.cat(self.inputs)[: self.keep],
            recons=torch.cat(self.recons)[: self.keep],
            means=self.all_means,
            labels=self.y_all,
            errors=torch.cat(self.errors),
            kl_per_dim=self.kl_dim,
            model=self.model,
            modality=self.data.modality,
            meta=self.data.meta,
            factor_names=self.data.factor_names,
        )


@torch.no_grad()
def measure_loaded(loaded: Any, data: EvalData, split: str, **settings: Any) -> tuple[dict[str, Any], Artifacts]:
    """`measure` of a loaded model (`vaekit.eval.load.Loaded`: ``model``, ``name``, ``source``, ``step``) on ``data``,
    checked first to fit it; ``settings`` are `measure`'s counts and options."""
    check_fits(loaded.model, loaded.name, data)
    return measure(loaded.model, data, name=loaded.name, source=loaded.source, step=loaded.step,
                   split=data.split or split, **settings)


def measure(
    model: nn.Module,
    data: EvalData,
    *,
    name: str,
    source: str = "",
    step: int | None = None,
    split: str,
    batches: int | None,
    batch_size: int,
    metrics: Sequence[str] | None,
    seed: int,
    k: int,
    opts: dict[str, Any] | None = None,
    keep: int = 8,
    progress: bool = False,
) -> tuple[dict[str, Any], Artifacts]:
    """One deterministic pass of ``model`` over ``data`` (same seed, same batches → same numbers).

    Args:
        model: a VAE (``encode``, ``decode``, ``sample``, ``recon_kind``); put in eval mode.
        data: the samples, in order. name, source, step: the provenance written into the result.
        opts: see `options` (default: LPIPS alex with pretrained weights, InceptionV3 for FID).
        keep: inputs and reconstructions kept for the figures.
        progress: a progress bar over the batches (and FID's prior samples) on stderr, then one line with the
            time each metric took.

    Returns:
        evaluate's JSON-able dict (see `vaekit.eval.evaluate.evaluate`) and the `Artifacts` for the figures.
    """
    model = model.eval()
    kind = getattr(model, "recon_kind", None)
    if kind is None:
        raise ModelProtocolError(f"evaluate: {name} has no recon_kind (the likelihood: bce, mse, ...)")
    opts = options() if opts is None else opts
    first = next(data.batches(batch_size, 1), None)
    if first is None:
        raise ConfigError(f"evaluate: the data has no samples ({data.description or 'empty split'})")
    vector_latent = model.encode(first["x"][:1].to(_device_of(model)))[0].dim() == 2
    quantized = bool(getattr(getattr(model, "bottleneck", None), "quantized", False))
    want, skipped = choose_metrics(metrics, data, first, vector_latent, opts, quantized)
    run = _Pass(model, kind, data, want, opts, seed, k, batch_size, keep, name, progress)
    total = math.ceil(len(data) / batch_size)
    total = total if batches is None else min(total, batches)
    for batch in bar(data.batches(batch_size, batches), progress, f"{name}: {split}", total):
        run.update(batch)
    out, details = run.finish()
    if progress:
        took = ", ".join(f"{m} {t:.2f} s" for m, t in sorted(run.seconds.items(), key=lambda kv: -kv[1]))
        print(f"{name}: time per metric: {took}", file=sys.stderr, flush=True)
    order = [metric for metric in UNITS if metric in out]
    result = {
        "model": name,
        "source": source,
        "step": step,
        "split": split,
        "data": data.description,
        "modality": data.modality,
        "recon": kind,
        "samples": len(run.all_means),
        "batches": run.n_batches,
        "seed": seed,
        "k": k if "iwae" in want else None,
        "metrics": {metric: out[metric] for metric in order},
        "units": {metric: UNITS[metric] for metric in order},
        "details": details,
        "skipped": skipped,
    }
    return _jsonable(result), run.artifacts()
