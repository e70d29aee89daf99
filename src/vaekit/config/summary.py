"""``vaekit validate``: a readable summary of what a config will do, built without training."""

from __future__ import annotations

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
    den = loss.denoise
    if den.noise_std > 0 or den.mask_rate > 0:
        terms.append(f"denoising inputs: noise std {den.noise_std:g}, mask rate {den.mask_rate:g} (training only)")
    return terms


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
    shape = None
    if build:
        from vaekit.data import build_data

        info = build_data(cfg.data, cfg.run.seed).info
        shape = info.shape
        lines.append(f"data       {info.description}")
    else:
        lines.append(f"data       {cfg.data.source} {cfg.data.path or ''}".rstrip())
    m = cfg.model
    model_line = f"model      {m.arch} latent {m.latent_dim} ({m.latent}), hidden {m.hidden_dims}, norm {m.norm}, {m.activation}"
    if shape is not None:
        from vaekit.models import build_discriminator, build_model, count_parameters

        model = build_model(m, shape, cfg.loss.recon)
        model_line += f", {count_parameters(model):,} parameters, latent shape {tuple(model.latent_shape)}"
        adv = next((s for s in stages if s.adversarial), None)
        if adv is not None:
            disc = build_discriminator(adv.cfg.loss.adversarial.discriminator, shape)
            model_line += f"; discriminator {count_parameters(disc):,} parameters"
    lines.append(model_line)
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    lines.append(
        f"train      {length}, batch {t.batch_size} (global) × accumulation {t.grad_accum}, precision {t.precision}"
        + (f", EMA {t.ema.decay:g}" if t.ema.enabled else "")
    )
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
                limit = spec.max_steps and f"{spec.max_steps} steps" or spec.max_epochs and f"{spec.max_epochs} epochs"
                length = (length + ", " if length else "") + f"until {rule} (at most {limit})"
            frozen = st.frozen_groups(frozen)
            groups = ["encoder", "decoder"] + (["discriminator"] if st.adversarial else [])
            trains = [g for g in groups if g not in frozen]
            lines.append(f"  length   {length}")
            lines.append(f"  trains   {', '.join(trains)}" + (f"; frozen {', '.join(sorted(frozen))}" if frozen else ""))
            lines.append(
                f"  data     {c.data.source} size {c.data.image_size or 'native'}"
                + (f", {c.data.frames} frames" if c.data.source == "moving_shapes" else "")
                + f", batch {c.train.batch_size} × accum {c.train.grad_accum}"
            )
            if spec.init_from:
                lines.append(f"  init     {spec.init_from}")
        for term in objective_terms(c.loss):
            lines.append(f"  loss     {term}")
        lines.append(f"  optim    {describe_optim(c.optim)}")
        if st.adversarial:
            lines.append(f"  d-optim  {describe_optim(c.disc_optim)}")
    return "\n".join(lines)
