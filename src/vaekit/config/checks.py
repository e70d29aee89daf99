"""Cross-section checks that a single field's type cannot express; each failure is one ConfigError line."""

from __future__ import annotations

import math

from vaekit.config.load import ConfigError
from vaekit.config.schema import DataConfig, ModelConfig, VaekitConfig

MAX_PARAM_BYTES = 4e9
"""fp32 parameter memory above which a config is refused before anything is built (a typo such as an extra zero
in ``model.hidden_dims`` would otherwise allocate until the machine swaps)."""


def check_config(cfg: VaekitConfig) -> None:
    """Stages, transitions and freezing rules, then optimizer/scheduler arguments and the model's size (before
    any data is read)."""
    from vaekit.config.stages import check_stages, resolve_stages
    from vaekit.objectives.terms import EVAL_REPORTS, produced_metrics  # torch-free: the declared term lists

    stages = resolve_stages(cfg)
    for st in stages:
        for name in st.cfg.eval.metrics:
            if name not in EVAL_REPORTS:
                where = f"stages.{st.index}.eval.metrics" if cfg.stages else "eval.metrics"
                raise ConfigError(f"{where}: unknown metric {name!r}; choose from {', '.join(EVAL_REPORTS)}")
    produced = {st.name: produced_metrics(st.cfg.loss, st.cfg.eval.metrics, cfg.model.bottleneck) for st in stages}
    check_stages(stages, produced, model_recon=cfg.loss.recon)
    for st in stages:
        prefix = f"stages.{st.index}." if cfg.stages else ""
        _check_optim(st.cfg, prefix)
        _check_finetune(st.cfg, prefix)
        _check_output_activation(st.cfg, prefix)
        _check_model_size(cfg.model, st.cfg.data, f" (with stages.{st.index}.data)" if cfg.stages else "")
        _check_bottleneck(cfg.model, st.cfg, prefix)
        _check_resnet_input(cfg.model, st.cfg.data, f" (stages.{st.index}.data)" if cfg.stages else "")


def _check_optim(cfg: VaekitConfig, prefix: str) -> None:
    for key in ("optim", "disc_optim"):
        optim = getattr(cfg, key)
        for group in optim.group_lr:
            if group not in ("encoder", "decoder"):
                raise ConfigError(f"{prefix}{key}.group_lr.{group}: unknown group; use encoder or decoder")


def _check_finetune(cfg: VaekitConfig, prefix: str) -> None:
    if cfg.finetune.mode != "lora":
        return
    if cfg.train.ema.enabled:
        raise ConfigError(f"{prefix}finetune.mode: lora cannot run with train.ema.enabled (the average would "
                          "cover the frozen base weights); disable the EMA or use finetune.mode=full")
    if cfg.train.strategy == "fsdp":
        raise ConfigError(f"{prefix}finetune.mode: lora is not supported with train.strategy=fsdp (adapters "
                          "are injected into and merged from unsharded weights); use train.strategy=ddp")


def _check_output_activation(cfg: VaekitConfig, prefix: str) -> None:
    act = cfg.model.output_activation
    if act != "none" and cfg.loss.recon == "bce" and cfg.model.arch in ("conv", "mlp"):
        raise ConfigError(f"model.output_activation: {act} is for mse/l1/gaussian, but {prefix}loss.recon is bce "
                          "(whose logits already pass through a sigmoid); set loss.recon=mse or "
                          "model.output_activation=none")


def estimate_parameters(model: ModelConfig, data: DataConfig) -> tuple[int, int]:
    """A lower bound on the autoencoder's parameter count from the config alone (torch-free, no data read).

    Returns:
        ``(body, latent)``: parameters of the hidden stages/layers, and of the layers into and out of the latent.
        Every unknown is taken at its smallest (one input channel, a 1D kernel for arrays from Python, which may be
        audio, a 1x1 bottleneck when ``data.image_size`` is unset), so a real model is never over-estimated.
    """
    h, z = model.hidden_dims, model.latent_dim
    channels = data.channels or 1
    size = data.image_size if data.source != "tensor" else None
    if model.arch == "conv":
        k = 3 if data.source == "tensor" else 9  # 3x3 (images; video's 3x3x3 counted as 3x3)
        ins = [channels, *h[:-1]]
        body = 2 * sum(c_in * c_out * k for c_in, c_out in zip(ins, h, strict=True))  # down conv + up conv_t
        if model.latent == "vector":
            bottom = math.ceil(size / 2 ** len(h)) ** 2 if size else 1
            latent = 3 * h[-1] * bottom * z  # Linear(flat, 2z) + Linear(z, flat)
        else:
            latent = 3 * h[-1] * z * k
        return body, latent
    if model.arch == "resnet":  # each ResNet block has at least its second conv (width² · kernel)
        k = 3 if data.source == "tensor" else 9
        blocks = 2 * model.resnet.layers_per_block + 1  # encoder: layers per stage, decoder: layers + 1
        return sum(blocks * w * w * k for w in h), 3 * h[-1] * z * k
    widths = [channels * size * size, *h] if size else list(h)
    body = 2 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))  # encoder + mirrored decoder
    return body, 3 * h[-1] * z


def _check_model_size(model: ModelConfig, data: DataConfig, where: str) -> None:
    if model.arch == "diffusers":  # a pretrained model's size is what it is; hidden_dims do not describe it
        return
    body, latent = estimate_parameters(model, data)
    gb = 4 * (body + latent) / 1e9
    if 4 * (body + latent) <= MAX_PARAM_BYTES:
        return
    limit = f"the limit is {MAX_PARAM_BYTES / 1e9:g} GB"
    if latent > body:
        raise ConfigError(
            f"model.latent_dim: {model.latent_dim} needs about {gb:.0f} GB of parameters{where} (fp32); {limit}: "
            "use a smaller model.latent_dim (or model.latent=spatial)"
        )
    raise ConfigError(
        f"model.hidden_dims: {model.hidden_dims} needs about {gb:.0f} GB of parameters{where} (fp32); {limit}: "
        "use smaller widths"
    )


# ------------------------------------------------------------------------------- bottleneck and resnet
NATIVE_SIZES = {"mnist": 28}
"""Image sizes known without reading data (``data.image_size`` unset)."""


def _check_bottleneck(model: ModelConfig, cfg: VaekitConfig, prefix: str) -> None:
    """A quantised latent has no KL: its schedules, free bits, β and posterior-based metrics are refused."""
    from vaekit.objectives.terms import POSTERIOR_METRICS

    kind = model.bottleneck.kind
    if kind == "gaussian":
        return
    kl = cfg.loss.kl
    why = f"model.bottleneck.kind={kind} is a quantised latent without a KL term"
    variant = getattr(cfg.loss, "variant", "elbo")
    if variant != "elbo":
        raise ConfigError(f"{prefix}loss.variant: {variant} reshapes the KL of a Gaussian posterior, but {why}; use "
                          "loss.variant=elbo (or model.bottleneck.kind=gaussian)")
    if kl.schedule != "constant":
        raise ConfigError(f"{prefix}loss.kl.schedule: {kl.schedule} schedules a KL, but {why}; remove it (or use "
                          "model.bottleneck.kind=gaussian)")
    if kl.free_bits > 0:
        raise ConfigError(f"{prefix}loss.kl.free_bits: {why}; set it to 0 (the rate is log2(codebook size) per "
                          "position)")
    if cfg.loss.beta != 1.0:
        raise ConfigError(f"{prefix}loss.beta: weights the KL, but {why}; remove it and weigh the quantiser with "
                          "model.bottleneck.commitment_weight / entropy_weight")
    bad = [m for m in cfg.eval.metrics if m in POSTERIOR_METRICS]
    if bad:
        raise ConfigError(f"{prefix}eval.metrics: {bad[0]} needs a Gaussian posterior, but {why}; use psnr, ssim, "
                          "mse, lpips, rfid or the codebook statistics logged at every validation")


def _check_resnet_input(model: ModelConfig, data: DataConfig, where: str) -> None:
    """The stages of ``model.arch=resnet`` must divide the input size; causal video needs 1 + 2^k·m frames."""
    if model.arch != "resnet":
        return
    factor = 2 ** (len(model.hidden_dims) - 1)
    size = data.image_size or NATIVE_SIZES.get(data.source)
    if size is not None and data.source not in ("table", "tags", "records", "audio_folder") and size % factor:
        good = [m * factor for m in range(max(1, size // factor), size // factor + 2)]
        raise ConfigError(f"data.image_size: {size}{where} is not divisible by {factor}, the down-sampling of "
                          f"model.arch=resnet with {len(model.hidden_dims)} stages (model.hidden_dims); use "
                          f"{' or '.join(map(str, good))} (or fewer stages)")
    if data.source not in ("moving_shapes", "video_folder"):
        if model.resnet.causal:
            raise ConfigError(f"model.resnet.causal: applies to video sources; data.source={data.source} is not "
                              "video (set it to false)")
        return
    t = 2 ** model.temporal_downsample
    if model.resnet.causal and (data.frames - 1) % t:
        ok = ", ".join(str(1 + t * m) for m in range(1, 4))
        raise ConfigError(f"data.frames: {data.frames}{where} breaks the causal rule 1 + {t}·m frames "
                          f"(model.resnet.causal with model.temporal_downsample={model.temporal_downsample}); use "
                          f"1, {ok}, ...")
    if not model.resnet.causal and data.frames % t:
        raise ConfigError(f"data.frames: {data.frames}{where} is not divisible by {t} (model.temporal_downsample="
                          f"{model.temporal_downsample}); use a multiple of {t}, or model.resnet.causal with 1 + {t}·m")
