"""``vaekit validate``: a readable summary of what a config will do, built without training."""

from __future__ import annotations

from typing import Any

from vaekit.config.schema import BottleneckConfig, LossConfig, ModelConfig, OptimConfig, VaekitConfig


def describe_bottleneck(b: BottleneckConfig) -> str:
    """One line: the latent kind and its settings (rate per position for quantised kinds)."""
    import math

    if not b.quantized:
        return "gaussian (mean, log-variance; KL to N(0, I))"
    if b.kind == "fsq":
        size, text = math.prod(b.levels), f"fsq levels {b.levels}"
    else:
        size = b.codebook_size
        text = f"{b.kind} {b.codebook_size} codes"
        if b.kind == "rvq":
            text += f" × {b.num_quantizers} quantizers"
        if b.kind in ("vq", "rvq"):
            text += f", dim {b.codebook_dim or 'latent'}, {b.codebook} codebook"
            text += f" (decay {b.decay:g})" if b.codebook == "ema" else ""
            text += f", dead-code threshold {b.threshold_ema_dead_code:g}" if b.threshold_ema_dead_code else ""
            text += ", k-means init" if b.kmeans_init else ""
    n = b.num_quantizers if b.kind == "rvq" else 1
    return f"{text}; {math.log2(size) * n:.3g} bits per latent position"


def bottleneck_terms(b: BottleneckConfig) -> list[str]:
    """The quantiser terms of the loss with their weights (summed over latent elements, as the recon NLL)."""
    terms = []
    if b.kind != "fsq":
        terms.append(f"commit: Σ(h − sg(z_q))² ×{b.commitment_weight:g}")
    if b.kind in ("vq", "rvq") and b.codebook == "learned":
        terms.append("codebook: Σ(sg(h) − z_q)² ×1")
    if b.kind == "lfq":
        terms.append(f"entropy: H(position) − {b.diversity_gamma:g}·H(batch), nats summed over positions "
                     f"×{b.entropy_weight:g}")
    return terms or ["no quantiser loss (fsq: the codes are fixed levels)"]


def objective_terms(loss: LossConfig, bottleneck: BottleneckConfig | None = None) -> list[str]:
    """The loss terms a config trains with, each with its weight (and schedule)."""
    terms = [f"recon: {loss.recon} ×{loss.recon_weight:g} (summed over data dims, mean over batch)"]
    if bottleneck is not None and bottleneck.quantized:
        return [*terms, *bottleneck_terms(bottleneck), *_other_terms(loss)]
    kl = loss.kl
    sched = {
        "constant": f"β={loss.beta:g}",
        "linear": f"β 0→{loss.beta:g} over {kl.warmup_steps} steps",
        "cyclical": f"β cyclical 0→{loss.beta:g}, cycle {kl.cycle_steps} steps, ramp {kl.ratio:g}",
        "capacity": f"γ={kl.gamma:g}·|KL − C|, C 0→{kl.capacity_max:g} nats over {kl.capacity_steps} steps",
    }[kl.schedule]
    fb = f", free bits {kl.free_bits:g} nats/dim" if kl.free_bits > 0 else ""
    terms.append(f"kl: {sched}{fb}")
    return [*terms, *_other_terms(loss)]


def _other_terms(loss: LossConfig) -> list[str]:
    terms = []
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


def describe_presets(cfg: VaekitConfig) -> list[str]:
    """One line per preset (in the order applied): the keys it set, and those a later preset, the file or an
    override replaced (``loss.recon=bce→mse``)."""
    from vaekit.config.load import preset_keys, preset_names

    names = preset_names(cfg.preset)
    if not names:
        return []
    final = cfg.model_dump(mode="json")
    owner = preset_keys(names)
    lines = []
    for name in names:
        keys = []
        for key, (by, value) in owner.items():
            if by != name:
                continue
            now = _lookup(final, key)
            keys.append(f"{key}={_fmt(value)}" if now == value else f"{key}={_fmt(value)}→{_fmt(now)}")
        lines.append(f"preset     {name}: {', '.join(keys) or '(every key set by a later preset)'}")
    return lines


def _lookup(tree: dict, key: str) -> object:
    node: object = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def summarize(cfg: VaekitConfig, build: bool = True) -> str:
    """Multi-line summary; with ``build`` the data are read and the model built (sizes, parameter count)."""
    from vaekit.pipeline.stages import resolve_stages

    infos = _stage_data(resolve_stages(cfg)) if build else {}
    if build:  # the likelihood the run trains with: loss.recon, else what the data ask for (as the run resolves it)
        from vaekit.config.likelihood import with_data_likelihood

        cfg = with_data_likelihood(cfg, infos[0][0].meta)
    stages = resolve_stages(cfg)
    if build:
        _check_ranges(stages, infos)
        infos = {i: info for i, (info, _) in infos.items()}
    lines = []
    run_dir = f"{cfg.run.dir}/{cfg.run.name}" if cfg.run.name else f"{cfg.run.dir}/<source>-<arch>-<timestamp>"
    lines.append(f"run        {run_dir}  (seed {cfg.run.seed})")
    lines.extend(describe_presets(cfg))
    first = stages[0].cfg.data
    if build:
        lines.append(f"data       {infos[stages[0].index].description}")
    else:
        lines.append(f"data       {first.source} {first.path or ''}".rstrip())
    m = cfg.model
    if m.arch == "diffusers":  # a pretrained model is described by its own config (once built), not our fields
        source = m.pretrained or "model.diffusers_config (random weights)"
        model_line = f"model      diffusers {m.class_name} from {source} ({m.torch_dtype})"
    else:
        latent_kind = "spatial" if m.arch == "resnet" else m.latent
        model_line = f"model      {m.arch} latent {m.latent_dim} ({latent_kind}), hidden {m.hidden_dims}, {_family(m)}"
    if build:
        model_line += _build_models(cfg, stages, infos)
    lines.append(model_line)
    if m.arch in ("mlp", "conv", "resnet"):
        lines.append(f"bottleneck {describe_bottleneck(m.bottleneck)}")
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
            length = _stage_length(spec)
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
        for term in objective_terms(c.loss, cfg.model.bottleneck):
            lines.append(f"  loss     {term}")
        lines.append(f"  optim    {describe_optim(c.optim)}")
        if st.adversarial:
            lines.append(f"  d-optim  {describe_optim(c.disc_optim)}")
    return "\n".join(lines)


def _family(m: ModelConfig) -> str:
    if m.arch != "resnet":
        return f"norm {m.norm}, {m.activation}"
    r = m.resnet
    text = f"{r.layers_per_block} ResNet blocks per stage (GroupNorm, SiLU), {r.downsample} down-sampling"
    text += ", mid attention" if r.mid_attention else ""
    text += f", attention at stages {r.attention_stages}" if r.attention_stages else ""
    text += f", causal video (time halved in {m.temporal_downsample} stages)" if r.causal else ""
    return text


def _stage_length(spec: object) -> str:
    """How long a stage runs, every limit named: the first of its length, its transition and its caps ends it."""
    parts = [f"{spec.steps} steps" if spec.steps else f"{spec.epochs} epochs" if spec.epochs else ""]
    if spec.metric:
        rule = f"{spec.metric} {spec.mode} {spec.threshold:g}" if spec.threshold is not None else spec.metric
        if spec.plateau_window:
            rule += f" or plateau <{spec.plateau_threshold or 1e-3:g} over {spec.plateau_window} steps"
        parts.append(f"until {rule}")
    caps = [f"{spec.max_steps} steps" if spec.max_steps else "", f"{spec.max_epochs} epochs" if spec.max_epochs else ""]
    caps = [c for c in caps if c]
    text = ", ".join(p for p in parts if p)
    if caps:
        text += f" (at most {' or '.join(caps)}, whichever comes first)" if text else f"at most {' or '.join(caps)}"
    return text


def _check_ranges(stages: list, infos: dict) -> None:
    """Each stage's likelihood against its training data's range (bce needs [0, 1])."""
    from vaekit.data.ranges import check_target_range

    for st in stages:
        where = f"stages.{st.index}.loss.recon" if len(stages) > 1 else "loss.recon"
        check_target_range(st.cfg.loss.recon, infos[st.index][1], where)


def _stage_data(stages: list) -> dict[int, tuple]:
    """Each stage's (DataInfo, training source) (data read once per distinct data section); a bad setting is a
    ConfigError."""
    import json

    from vaekit.config.load import ConfigError
    from vaekit.data import DataError, build_data

    seen: dict[str, object] = {}
    out: dict[int, object] = {}
    for st in stages:
        key = json.dumps(st.cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in seen:
            try:
                bundle = build_data(st.cfg.data, st.cfg.run.seed)
                seen[key] = (bundle.info, bundle.train)
            except DataError:
                raise
            except ValueError as err:
                raise ConfigError(str(err)) from None
        out[st.index] = seen[key]
    return out


def _build_models(cfg: VaekitConfig, stages: list, infos: dict) -> str:
    """Build the model (and discriminator) for the first stage's data and check every stage's data fits it."""
    import math

    from vaekit.config.load import ConfigError
    from vaekit.models import build_discriminator, build_model, count_parameters

    shape = tuple(infos[stages[0].index].shape)
    try:
        model = build_model(cfg.model, shape, cfg.loss.recon)
        latent = tuple(model.latent_shape)
        text = (f", {count_parameters(model):,} parameters, latent shape {latent}, compression "
                f"{math.prod(shape) / math.prod(latent):.4g} (input elements per latent element)")
        own = model.config.get("config") if cfg.model.arch == "diffusers" else None
        if isinstance(own, dict):
            keys = ("block_out_channels", "latent_channels", "layers_per_block", "down_block_types", "sample_size")
            text += "; " + ", ".join(f"{k} {own[k]}" for k in keys if k in own)
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
    for st in stages:
        if st.cfg.finetune.mode != "full":
            text += f"; {'stage ' + st.name + ' ' if len(stages) > 1 else ''}{_trainable_share(model, st.cfg.finetune)}"
    return text


def _trainable_share(model: object, finetune: object) -> str:
    """What a finetune mode trains, counted on a copy of the model with its adapters injected."""
    import copy

    from vaekit.engine.finetune import Finetuner
    from vaekit.models.adapter import export_module
    from vaekit.pipeline.plan import trainable_line

    clone = copy.deepcopy(model)
    tuner = Finetuner(export_module(clone))
    tuner.apply(finetune, finetune)
    tuner.restrict(clone, finetune.mode)
    return trainable_line(clone, finetune.mode)
