"""Planning a stage: its data and loaders, what it trains (freezing, LoRA), ``init_from``, its updates, its
objective and its clock, handed to the engine as a `vaekit.engine.plan.Plan`."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vaekit.config.schema import VaekitConfig
from vaekit.data import BatchLoader, DataBundle
from vaekit.data.ranges import check_target_range
from vaekit.data.user import LoaderBatches, LoaderSource
from vaekit.engine import checkpoint as ckpt
from vaekit.engine.plan import Plan
from vaekit.engine.runtime import Runtime
from vaekit.engine.updates import build_update
from vaekit.errors import ConfigError, raised_in_user_code
from vaekit.models.adapter import export_module
from vaekit.objectives import DiscriminatorObjective, VAEObjective
from vaekit.objectives.variants import FactorDiscriminatorObjective
from vaekit.pipeline.build import RunParts
from vaekit.pipeline.init_from import load_init_weights
from vaekit.pipeline.stages import Stage, StageClock, init_from_weights


def plan_stage(run: RunParts, stage: Stage, resuming: bool) -> Plan:
    """The `Plan` of ``stage``: its data checked against the model, loaders, clock, weights (``init_from``, on a
    fresh start of the stage), freezing and finetune mode, updates and objectives."""
    cfg, rt, st = stage.cfg, run.rt, run.trainer.state
    data = run.data_for(stage)
    try:  # a resolution/clip length the model cannot take fails here, naming the keys, not mid-step
        run.model.latent_shape_for(tuple(data.info.shape))
    except ValueError as err:
        if raised_in_user_code(err):  # the user's own encode: their traceback, unrelabelled
            raise
        raise ConfigError(f"stages.{stage.index} ({stage.name}): {err}") from None
    if stage.index > 0:  # the first stage's data were checked before the run directory was made
        check_target_range(cfg.loss.recon, data.train, f"stages.{stage.index}.loss.recon")
    train_loader, val_loader = loaders(rt, cfg, data)
    per_epoch = min(len(train_loader), cfg.train.limit_batches or len(train_loader))  # train.limit_batches
    clock = StageClock(stage.spec, math.ceil(per_epoch / cfg.train.grad_accum))
    total = clock.limit_steps()
    if not resuming and stage.spec.init_from:
        _init_from(run, stage.spec.init_from)
        if run.ema is not None:
            run.ema.copy_from(run.model)  # the average starts from the loaded weights
    if not resuming:
        st.frozen = sorted(stage.frozen_groups(set(st.frozen)))
    freeze(run, st.frozen)
    _finetune(run, stage)
    # FSDP replaces the parameters with sharded ones: the optimizer is built on the wrapped model's
    forward = rt.wrap(run.model, compile=cfg.train.compile)
    updates = {}
    enc, dec = run.model.encoder, run.model.decoder
    groups = {"encoder": list(enc.parameters()), "decoder": list(dec.parameters()),
              "other": list(run.model.parameters())}
    gen = build_update("generator", groups, cfg.optim, total, rt)
    if gen is not None:
        gen.sharded = run.model if rt.strategy == "fsdp" and rt.world > 1 else None
        updates["generator"] = gen
    d_objective = None
    if stage.adversarial and run.disc is not None:
        d_objective = DiscriminatorObjective(cfg.loss).to(rt.device)
        disc = build_update("discriminator", {"discriminator": list(run.disc.parameters())}, cfg.disc_optim,
                            total, rt, start_step=cfg.loss.adversarial.start_step)
        if disc is not None:
            updates["discriminator"] = disc
    elif stage.factor and run.disc is not None:  # FactorVAE's latent discriminator, with its own optimizer
        d_objective = FactorDiscriminatorObjective(cfg.loss).to(rt.device)
        disc = build_update("discriminator", {"discriminator": list(run.disc.parameters())}, cfg.factor_optim,
                            total, rt)
        if disc is not None:
            updates["discriminator"] = disc
    # the objective may hold a network (perceptual) whose init draws random numbers: seed it on its own, so
    # it is the same network in a resumed run and the training RNG is untouched
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []):
        torch.manual_seed(cfg.run.seed + 104729)
        objective = VAEObjective(cfg.loss).to(rt.device)
    disc_forward = rt.wrap(run.disc) if d_objective is not None else None
    return Plan(stage.name, stage.index, cfg, data, train_loader, val_loader, objective, d_objective, updates,
                clock, run.model, forward, disc_forward, lambda: _train_mode(run), lambda s: _desc(run, stage, s))


# ---------------------------------------------------------------------------------- loaders
def loaders(rt: Runtime, cfg: VaekitConfig, data: DataBundle) -> tuple[Any, Any]:
    """This process's training and validation batches of ``data``."""
    if rt.world > 1 and not cfg.train.drop_last:
        raise ConfigError(
            "train.drop_last: false is not supported with several processes (a partial last batch would "
            "split unevenly across them); keep the default true"
        )
    if data.info.n_train == 0 and cfg.data.split is not None and cfg.data.split[0] == 0:
        raise ConfigError(
            f"data.split: {cfg.data.split} leaves no training data (a train share of 0 is for evaluation only: "
            "vaekit eval / compare); give training a share, e.g. [0.8, 0.1, 0.1]"
        )
    train_loader, val_loader = batches(rt, data.train, cfg, train=True), batches(rt, data.val, cfg, train=False)
    if len(train_loader) == 0:
        batch = cfg.train.batch_size
        raise ConfigError(f"train.batch_size: {batch} is larger than the training set ({data.info.n_train} samples)")
    return train_loader, val_loader


def batches(rt: Runtime, source: Any, cfg: VaekitConfig, train: bool) -> Any:
    """This process's batches of ``source``: shuffled and without labels for training, in order for
    validation and test; a user's DataLoader as it is."""
    if isinstance(source, LoaderSource):
        return LoaderBatches(source)
    batch = cfg.train.batch_size
    common = {"rank": rt.rank, "world_size": rt.world, "num_workers": cfg.data.num_workers, "seed": cfg.run.seed}
    try:
        if train:
            return BatchLoader(source, batch, shuffle=True, drop_last=cfg.train.drop_last, labels=False, **common)
        return BatchLoader(source, batch, shuffle=False, drop_last=False, **common)
    except ValueError as err:  # e.g. a batch size that the process count does not divide
        raise ConfigError(str(err)) from None


# ---------------------------------------------------------------------------------- weights
def _init_from(run: RunParts, source: str) -> None:
    path = init_from_weights(source)
    load_init_weights(export_module(run.model), path)  # LoRA adapters merged; a mismatch names the keys
    disc_file = path.with_name("discriminator.safetensors")
    if run.disc is not None and disc_file.is_file():
        ckpt.load_weights(run.disc, disc_file)


# ---------------------------------------------------------------------------------- freezing, finetune
def _module(run: RunParts, path: str) -> nn.Module:
    root, _, sub = path.partition(".")
    if root == "discriminator":
        if run.disc is None:
            raise ConfigError(f"freeze: {path!r}: this run has no discriminator")
        base, sub_path = run.disc, sub
    else:
        base, sub_path = export_module(run.model), path
        if root in ("encoder", "decoder") and base is run.model:
            base, sub_path = getattr(run.model, root), sub
    try:
        return base.get_submodule(sub_path) if sub_path else base
    except AttributeError:
        names = ", ".join(n for n, _ in export_module(run.model).named_children())
        raise ConfigError(f"freeze: {path!r} is not a submodule of the model (its children: {names})") from None


def _train_mode(run: RunParts) -> None:
    """Train mode, except frozen modules, whose norm statistics must not drift."""
    run.model.train()
    if run.disc is not None:
        run.disc.train()
    for path in run.trainer.state.frozen:
        _module(run, path).eval()
    # a quantiser fed by a frozen encoder (freeze: [encoder], finetune.mode=decoder) keeps its codebook: its EMA
    # updates and dead-code replacement run in train mode only, and would otherwise move the latent space
    bottleneck = getattr(run.model, "bottleneck", None)
    encoder = getattr(run.model, "encoder", None)
    if getattr(bottleneck, "quantized", False) and encoder is not None \
            and not any(p.requires_grad for p in encoder.parameters()):
        bottleneck.eval()


def freeze(run: RunParts, frozen: list[str]) -> None:
    """Everything trainable except the modules named in ``frozen``."""
    run.model.requires_grad_(True)
    if run.disc is not None:
        run.disc.requires_grad_(True)
    for path in sorted(frozen):
        _module(run, path).requires_grad_(False)


def _finetune(run: RunParts, stage: Stage) -> None:
    """The stage's finetune mode: inject / merge LoRA adapters, then leave only its parameters trainable."""
    st = run.trainer.state
    owner = run.stages[st.stage_index]  # the stage the current (or checkpointed) adapters belong to
    run.tuner.apply(stage.cfg.finetune, owner.cfg.finetune, save=lambda: save_adapters(run, owner.name))
    freeze(run, st.frozen)  # adapters injected just now obey the freeze list too
    run.tuner.restrict(run.model, stage.cfg.finetune.mode)
    _report_trainable(run, stage)


def _report_trainable(run: RunParts, stage: Stage) -> None:
    """The trainable share of the autoencoder (LoRA: the adapters' share) on the console and in model.txt."""
    line = trainable_line(run.model, stage.cfg.finetune.mode)
    run.trainer.console.write(f"stage {stage.name}: {line}" if len(run.stages) > 1 else line)
    model_txt = run.run_dir / "model.txt"
    if run.rt.is_main and model_txt.is_file() and f"stage {stage.name}:" not in model_txt.read_text():
        with model_txt.open("a") as fh:
            fh.write(f"stage {stage.name}: {line}\n")


def trainable_line(model: nn.Module, mode: str) -> str:
    """``trainable 1,234 of 56,789 parameters (2.17%, finetune lora)``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable {trainable:,} of {total:,} parameters ({trainable / max(total, 1):.2%}, finetune {mode})"


def save_adapters(run: RunParts, stage_name: str) -> None:
    """The LoRA adapters alone, under ``lora/<stage>`` (main process)."""
    if run.rt.is_main:
        run.tuner.save_adapters(run.run_dir / "lora" / stage_name)


def _desc(run: RunParts, stage: Stage, st: Any) -> str:
    spec, n = stage.spec, len(run.stages)
    epochs = spec.epochs or spec.max_epochs
    ep = f"Epoch {st.epoch + 1}" + (f"/{epochs}" if epochs else "")
    return f"Stage {spec.name} ({stage.index + 1}/{n}) | {ep}" if n > 1 else ep
