"""Validation: loss terms over the validation set, latent statistics and sample grids.

It decides its own cadence (every ``train.val_every`` steps, else at each epoch end, and once at a stage's end)
and draws its noise from its own seeded generator for the global batch, so it never touches the training RNG
and N processes report what one would. Also evaluates the test split once at the end of training.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.engine.runtime import Runtime
from vaekit.engine.state import Meter, TrainState
from vaekit.objectives import kl_per_element, likelihood_mean
from vaekit.tracking.media import (
    prune_samples,
    recon_grid,
    sample_grid,
    spectrogram_image,
    write_mp4,
    write_wav,
)


def _num_samples(loader: Any) -> int:
    """Samples in the loader's whole set (0 when unknown: a user DataLoader)."""
    source = getattr(loader, "source", None)
    return len(source) if source is not None else 0


def first_samples(source: Any, n: int) -> torch.Tensor:
    """The first ``n`` inputs of a source: gathered in memory, read item by item, or from a user DataLoader."""
    if hasattr(source, "get_batch"):
        return source.get_batch(torch.arange(n))["x"]
    if hasattr(source, "first"):
        return source.first(n)
    return torch.stack([source[i]["x"] for i in range(n)])


def safe_name(text: str) -> str:
    """A file-name-safe version of a stage name (never a path)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip(".") or "stage"


class CodeCounter:
    """Counts of each code over a validation pass (quantised latents), for usage, perplexity and dead codes."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        bottleneck = getattr(model, "bottleneck", None)
        self.on = bool(getattr(bottleneck, "quantized", False))
        if self.on:
            self.size, self.bits = bottleneck.codebook_size, bottleneck.bits_per_position
            self.counts = torch.zeros(bottleneck.num_codebooks, self.size, device=device)

    def add(self, indices: torch.Tensor) -> None:  # (B, N, Q)
        flat = indices.reshape(-1, indices.shape[-1]).long()
        offsets = torch.arange(flat.shape[1], device=flat.device) * self.size
        self.counts += torch.bincount((flat + offsets).flatten(), minlength=self.counts.numel()).view_as(self.counts)

    def stats(self, rt: Runtime, latent: tuple[int, ...], shape: tuple[int, ...], means: dict) -> dict[str, float]:
        """Code health and rate (quantised), or the KL in bits per input element (Gaussian)."""
        if not self.on:
            return {"bits_per_element": means["kl"] / math.log(2) / math.prod(shape)} if "kl" in means else {}
        from vaekit.models.bottleneck import codebook_stats

        positions = math.prod(latent[1:]) if len(latent) > 1 else 1
        out = codebook_stats(rt.reduce_sum(self.counts))
        out.update(bits_per_position=self.bits, bits_per_element=self.bits * positions / math.prod(shape))
        return out


class Validator:
    """Runs validation for the engine; ``plan`` is the current stage's plan (loaders, objective, config)."""

    def __init__(self, runtime: Runtime, run_dir: Path) -> None:
        self.rt = runtime
        self.run_dir = run_dir
        self.last_eval = -(10**12)

    def due(self, plan: Any, state: TrainState, epoch_end: bool) -> bool:
        every = plan.cfg.train.val_every
        if epoch_end:
            return every is None
        return every is not None and state.step % every == 0

    @torch.no_grad()
    def run(self, plan: Any, state: TrainState, model: nn.Module, loader: Any = None, split: str = "val") -> dict[str, float]:
        """Loss terms (clean inputs, ``model``: the EMA weights when enabled), reduced over processes; active
        units and KL per latent dimension."""
        rt, cfg = self.rt, plan.cfg
        loader = loader if loader is not None else plan.val_loader
        was_training = model.training
        model.eval()
        meter = Meter(rt.device)
        latent = plan.model.latent_shape_for(tuple(plan.data.info.shape))
        channels = latent[0]
        mom = torch.zeros(4, math.prod(latent), device=rt.device)  # per latent element: Σmean, Σmean², ΣKL, n
        codes = CodeCounter(plan.model, rt.device)
        gen = torch.Generator(device=rt.device).manual_seed(cfg.run.seed + 7919)
        n_total, batch_size = _num_samples(loader), cfg.train.batch_size
        devices = [rt.device] if rt.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for i, batch in enumerate(loader.iter_from(0)):
                if cfg.train.val_batches is not None and i >= cfg.train.val_batches:
                    break
                x = batch["x"].to(rt.device)
                global_b = min(batch_size, n_total - i * batch_size) if n_total else x.shape[0]
                sizes = [len(c) for c in torch.tensor_split(torch.arange(global_b), rt.world)]
                lo = sum(sizes[: rt.rank])
                samples = getattr(plan.objective, "samples", 1)  # IWAE/MIWAE: the same bound as training
                shape = (global_b, samples, *latent) if samples > 1 else (global_b, *latent)
                noise = torch.randn(shape, generator=gen, device=rt.device)[lo : lo + x.shape[0]]
                if x.shape[0] == 0:  # the last batch split over processes can leave one empty
                    continue
                with rt.autocast():
                    out = model(x, noise=noise)
                    _, terms = plan.objective(x, out, state.step)
                meter.add(tuple(terms), torch.stack([t.float() for t in terms.values()]), x.shape[0])
                if out.logvar is None:  # a quantised latent: code statistics instead of the posterior's
                    codes.add(out.info["indices"])
                    continue
                m = out.mean.float().flatten(1)  # (B, C·P)
                kl = kl_per_element(out.mean, out.logvar).flatten(1)
                mom += torch.stack([m.sum(0), (m * m).sum(0), kl.sum(0), torch.full_like(m[0], m.shape[0])])
        means = meter.means(rt.reduce)
        means.update(codes.stats(rt, latent, tuple(plan.data.info.shape), means))
        mom = rt.reduce_sum(mom)
        if mom[3, 0] > 0:
            # a latent dimension is a channel (spatial latents: averaged over positions), as in objectives.kl
            n = mom[3]
            var = (mom[1] / n - (mom[0] / n) ** 2).view(channels, -1).mean(1)
            kl_dim = (mom[2] / n).view(channels, -1).mean(1) * (mom.shape[1] // channels)  # nats per dim
            stats = torch.stack([(var > 0.01).sum().float(), kl_dim.mean(), kl_dim.max()]).tolist()
            means.update(zip(("active_units", "kl_dim_mean", "kl_dim_max"), stats, strict=True))
        model.train(was_training)
        return means

    def eval_metrics(self, plan: Any, state: TrainState, model: nn.Module) -> dict[str, float]:
        """``eval.metrics`` on the validation split (every process computes the same numbers from the same
        batches and seed: no collective), when due; {} otherwise."""
        ev = plan.cfg.eval
        if not ev.metrics or (ev.every is not None and state.step - self.last_eval < ev.every):
            return {}
        # the evaluation pass itself (eval.run, eval.data: leaves that import nothing of the api or pipeline)
        from vaekit.eval.data import check_fits, from_bundle
        from vaekit.eval.run import measure

        self.last_eval = state.step
        was_training = model.training
        name = type(model).__name__
        model.eval().to(self.rt.device)
        data = from_bundle(plan.data, "val")
        check_fits(model, name, data)
        devices = [self.rt.device] if self.rt.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            result, _ = measure(model, data, name=name, source=name, split="val", metrics=ev.metrics,
                                batch_size=plan.cfg.train.batch_size, batches=ev.batches or plan.cfg.train.val_batches,
                                seed=plan.cfg.run.seed, k=ev.k)
        model.train(was_training)
        return {k: float(v) for k, v in result["metrics"].items() if isinstance(v, int | float)}

    @torch.no_grad()
    def samples(self, plan: Any, state: TrainState, model: nn.Module, tracker: Any) -> None:
        """Input/reconstruction grid and decoded prior samples, as PNGs under ``samples/`` and in TensorBoard."""
        cfg = plan.cfg
        val = plan.data.val
        n = min(cfg.log.num_samples, len(val))
        if n == 0:
            return
        x = first_samples(val, n).to(self.rt.device)
        kind = cfg.loss.recon
        was_training = model.training
        model.eval()
        with self.rt.autocast():
            recon = likelihood_mean(kind, model(x, sample_posterior=False).recon).float()
            gen = torch.Generator(device=self.rt.device).manual_seed(cfg.run.seed)
            prior = likelihood_mean(kind, model.sample(n, generator=gen, input_shape=tuple(x.shape[1:]))).float()
        model.train(was_training)
        modality = plan.data.info.modality
        prefix = f"{safe_name(plan.name)}_{plan.index:03d}_"
        stem = f"{prefix}{state.epoch:03d}_{state.step:06d}"
        from torchvision.utils import save_image

        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        for kind_name, img in (("recon", recon_grid(x, recon, modality)), ("prior", sample_grid(prior, modality))):
            save_image(img, folder / f"{stem}-{kind_name}.png")
            tracker.image(f"samples/{kind_name}", img, state.step)
        meta = plan.data.info.meta
        if modality == "audio":  # listen, don't just look: inputs and reconstructions as .wav, spectrograms
            rate = int(meta.get("sample_rate") or 16000)
            for i in range(min(4, n)):
                for name, wave in (("input", x[i]), ("recon", recon[i].clamp(-1, 1)), ("prior", prior[i].clamp(-1, 1))):
                    write_wav(folder / f"{stem}-{name}{i}.wav", wave, rate)
                    if hasattr(tracker, "audio"):
                        tracker.audio(f"samples/{name}{i}", wave, state.step, rate)
            save_image(torch.cat([spectrogram_image(x[0], rate), spectrogram_image(recon[0], rate)], 1),
                       folder / f"{stem}-spectrogram.png")
        elif modality == "video":  # input above reconstruction, as a playable clip
            pair = torch.cat([x[0].float().cpu(), recon[0].clamp(0, 1).cpu()], dim=-2)  # (C, T, 2H, W)
            fps = meta.get("fps")
            fps = fps[0] if isinstance(fps, list | tuple) and fps else fps
            write_mp4(folder / f"{stem}-recon.mp4", pair, float(fps) if isinstance(fps, int | float) and fps > 0 else 8.0)
        prune_samples(folder, prefix, cfg.log.keep_samples)  # only the last few validations of this stage
