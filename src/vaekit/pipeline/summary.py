"""``vaekit validate``: a readable summary of what a config will do, built without training."""

from __future__ import annotations

from typing import Any

from vaekit.config.schema import LossConfig, OptimConfig, VaekitConfig


def objective_terms(loss: LossConfig) -> list[str]:
    """The loss terms a config trains with, each with its weight (and schedule)."""
    terms = [f"recon: {loss.recon} ×{loss.recon_weight:g} (summed over data dims, mean over batch)"]
    kl = loss.kl
    sched = {
        "constant": f"β={loss.beta:g}",
        "linear": f"β 0→{loss.beta:g} over {kl.warmup_steps} steps",
        "cyclical": f"β cyclical 0→{loss.beta:g}, cycle {kl.cycle_steps} steps, ramp {kl.ratio:g}",
        "capacity": f"γ={kl.gamma:g}·|KL − C|, C 0→{kl.capacity_max:g} nats over {kl.capacity_steps} steps",
    }[kl.schedule]
    fb = f", free bits {kl.free_bits:g} nats/dim" if kl.free_bits > 0 else ""
    terms.append(f"kl: {sched}{fb}")
    if loss.perceptual.kind != "none":
        p = loss.perceptual
        net = f"lpips-{p.net}" if p.kind == "lpips" else "vgg16 features"
        terms.append(f"perceptual: {net} ×{p.weight:g}{'' if p.pretrained else ' (random weights)'}")
    if loss.spectral.weight > 0:
        terms.append(f"spectral: multi-resolution STFT ×{loss.spectral.weight:g}, FFT sizes {loss.spectral.fft_sizes}")
    adv = loss.adversarial
    if adv.weight > 0:
        extra = ", adaptive weight" if adv.adaptive else ""
        extra += f", R1 ×{adv.r1_weight:g} every {adv.r1_every}" if adv.r1_weight > 0 else ""
        extra += f", feature matching ×{adv.feature_matching:g}" if adv.feature_matching > 0 else ""
        terms.append(f"adversarial: PatchGAN {adv.loss} ×{adv.weight:g} from step {adv.start_step}{extra}")
    variant = _describe_variant(loss)
    if variant:
        terms.append(variant)
    den = loss.denoise
    if den.noise_std > 0 or den.mask_rate > 0:
        terms.append(f"denoising inputs: noise std {den.noise_std:g}, mask rate {den.mask_rate:g} (training only)")
    return terms


def _describe_variant(loss: Any) -> str:
    """The research objective that replaces the KL term (``loss.variant``), or ''."""
    v = loss.variant
    if v == "beta_tcvae":
        t = loss.tc
        return f"variant: β-TCVAE α={t.alpha:g}·MI + β={t.beta:g}·TC + γ={t.gamma:g}·DWKL ({t.estimator}), replaces kl"
    if v == "factor_vae":
        f = loss.factor
        return (f"variant: FactorVAE γ={f.gamma:g}·TC (latent discriminator {f.layers}×{f.hidden}, its own update "
                "with factor_optim)")
    if v in ("dip_vae_i", "dip_vae_ii"):
        return f"variant: DIP-VAE-{'I' if v.endswith('_i') else 'II'} λ_od={loss.dip.lambda_od:g}"
    if v in ("iwae", "miwae"):
        return f"variant: {v.upper()} bound, k={loss.iw.k} × m={loss.iw.m} samples per input (replaces recon + kl)"
    return ""


def describe_optim(optim: OptimConfig) -> str:
    text = f"{optim.name} lr={optim.lr:g}"
    if optim.weight_decay:
        text += f" wd={optim.weight_decay:g}"
    if optim.group_lr:
        text += " " + " ".join(f"{k}.lr={v:g}" for k, v in optim.group_lr.items())
    if optim.grad_clip:
        text += f", clip {optim.grad_clip:g}"
    s = optim.scheduler
    if s.name != "none" or s.warmup_steps:
        text += f", schedule {s.name}" + (f" after {s.warmup_steps} warm-up steps" if s.warmup_steps else "")
    return text


def summarize(cfg: VaekitConfig, build: bool = True) -> str:
    """Multi-line summary; with ``build`` the data are read and the model built (sizes, parameter count)."""
    from vaekit.pipeline.stages import resolve_stages

    stages = resolve_stages(cfg)
    lines = []
    run_dir = f"{cfg.run.dir}/{cfg.run.name}" if cfg.run.name else f"{cfg.run.dir}/<source>-<arch>-<timestamp>"
    lines.append(f"run        {run_dir}  (seed {cfg.run.seed})" + (f"  preset {cfg.preset}" if cfg.preset else ""))
    infos = _stage_data(stages) if build else {}
    first = stages[0].cfg.data
    if build:
        lines.append(f"data       {infos[stages[0].index].description}")
    else:
        lines.append(f"data       {first.source} {first.path or ''}".rstrip())
    m = cfg.model
    model_line = f"model      {m.arch} latent {m.latent_dim} ({m.latent}), hidden {m.hidden_dims}, norm {m.norm}, {m.activation}"
    if build:
        model_line += _build_models(cfg, stages, infos)
    lines.append(model_line)
    t = cfg.train
    if cfg.stages:
        length = f"{len(stages)} stages (below)"
    else:
        length = (f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs") + f", batch {t.batch_size} (global)"
        length += f" × accumulation {t.grad_accum}"
    lines.append(f"train      {length}, precision {t.precision}" + (f", EMA {t.ema.decay:g}" if t.ema.enabled else ""))
    lines.append(
        f"checkpoint every {t.ckpt_every or '-'} steps and each epoch, keep {t.keep_last}; validate "
        + (f"every {t.val_every} steps" if t.val_every else "each epoch")
    )
    trackers = [n for n in ("jsonl", "tensorboard", "wandb", "mlflow") if getattr(cfg.log, n)]
    lines.append(f"tracking   {', '.join(trackers) or 'none'}, log every {cfg.log.every} steps")
    frozen: set[str] = set()
    for st in stages:
        c = st.cfg
        head = f"stage {st.index + 1}/{len(stages)} {st.name!r}" if cfg.stages else "objective"
        lines.append(head)
        if cfg.stages:
            spec = st.spec
            length = f"{spec.steps} steps" if spec.steps else f"{spec.epochs} epochs" if spec.epochs else ""
            if spec.metric:
                rule = f"{spec.metric} {spec.mode} {spec.threshold:g}" if spec.threshold is not None else spec.metric
                if spec.plateau_window:
                    rule += f" or plateau <{spec.plateau_threshold or 1e-3:g} over {spec.plateau_window}"
                limit = f"{spec.max_steps} steps" if spec.max_steps else f"{spec.max_epochs} epochs" if spec.max_epochs else ""
                length = (length + ", " if length else "") + f"until {rule}" + (f" (at most {limit})" if limit else "")
            if build:
                lines.append(f"  data     {infos[st.index].description}")
            frozen = st.frozen_groups(frozen)
            groups = ["encoder", "decoder"] + (["discriminator"] if st.adversarial else [])
            trains = [g for g in groups if g not in frozen]
            lines.append(f"  length   {length}")
            lines.append(f"  trains   {', '.join(trains)}" + (f"; frozen {', '.join(sorted(frozen))}" if frozen else ""))
            lines.append(f"  batch    {c.train.batch_size} (global) × accumulation {c.train.grad_accum}")
            if spec.init_from:
                lines.append(f"  init     {spec.init_from}")
        for term in objective_terms(c.loss):
            lines.append(f"  loss     {term}")
        lines.append(f"  optim    {describe_optim(c.optim)}")
        if st.adversarial:
            lines.append(f"  d-optim  {describe_optim(c.disc_optim)}")
    return "\n".join(lines)


def _stage_data(stages: list) -> dict[int, object]:
    """Each stage's DataInfo (data read once per distinct data section); a bad setting is a ConfigError."""
    import json

    from vaekit.config.load import ConfigError
    from vaekit.data import DataError, build_data

    seen: dict[str, object] = {}
    out: dict[int, object] = {}
    for st in stages:
        key = json.dumps(st.cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in seen:
            try:
                seen[key] = build_data(st.cfg.data, st.cfg.run.seed).info
            except DataError:
                raise
            except ValueError as err:
                raise ConfigError(str(err)) from None
        out[st.index] = seen[key]
    return out


def _build_models(cfg: VaekitConfig, stages: list, infos: dict) -> str:
    """Build the model (and discriminator) for the first stage's data and check every stage's data fits it."""
    from vaekit.config.load import ConfigError
    from vaekit.models import build_discriminator, build_model, count_parameters

    shape = tuple(infos[stages[0].index].shape)
    try:
        model = build_model(cfg.model, shape, cfg.loss.recon)
        text = f", {count_parameters(model):,} parameters, latent shape {tuple(model.latent_shape)}"
        adv = next((s for s in stages if s.adversarial), None)
        if adv is not None:
            disc = build_discriminator(adv.cfg.loss.adversarial.discriminator, shape)
            text += f"; discriminator {count_parameters(disc):,} parameters"
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for st in stages[1:]:
        try:
            model.latent_shape_for(tuple(infos[st.index].shape))
        except ValueError as err:
            raise ConfigError(f"stages.{st.index} ({st.name}): {err}") from None
    return text
