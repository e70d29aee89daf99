"""Building a run, once: the runtime, each stage's data (one stage's in memory at a time), the model and the
discriminator, the run directory (locked), the EMA, the trainer and what the checkpoints hold.

The result is a `RunParts`; planning a stage (`vaekit.pipeline.plan`) and finishing the run
(`vaekit.pipeline.finish`) read it, the driver (`vaekit.pipeline.run`) owns it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn

from vaekit.config.likelihood import with_data_likelihood
from vaekit.config.load import dump_config
from vaekit.config.schema import VaekitConfig
from vaekit.data import ArraySource, DataBundle, DataInfo, build_data
from vaekit.data.ranges import check_target_range
from vaekit.data.user import from_python
from vaekit.engine.checkpoint import CheckpointManager, GeneratorState
from vaekit.engine.ema import EMA
from vaekit.engine.finetune import Finetuner, GatherBeforeSave
from vaekit.engine.loop import Trainer
from vaekit.engine.rundir import new_run_dir, prepare_run_dir
from vaekit.engine.runtime import Runtime
from vaekit.errors import ConfigError, RunDirError, VaekitError, raised_in_user_code
from vaekit.models import build_discriminator, build_model
from vaekit.models.adapter import as_vae, export_module
from vaekit.models.discriminators import LatentDiscriminator
from vaekit.pipeline.stages import Stage, resolve_stages
from vaekit.tracking.tracker import Console
from vaekit.utils import set_seed


class StageData:
    """Each stage's data, built from its ``data`` section (or the user's Python data); the last one is cached,
    so stages that share a data section share one bundle."""

    def __init__(self, python_data: dict[str, Any] | None, rt: Runtime) -> None:
        self.python_data, self.rt = python_data, rt
        self._cache: dict[str, DataBundle] = {}

    def __call__(self, stage: Stage) -> DataBundle:
        key = json.dumps(stage.cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._cache:
            self._cache.clear()  # one stage's data in memory at a time
            cfg = stage.cfg
            try:
                if self.python_data is None:
                    data = build_data(cfg.data, cfg.run.seed)
                elif "arrays" in self.python_data:
                    data = build_data(cfg.data, cfg.run.seed, self.python_data["arrays"])
                else:
                    d = self.python_data
                    data = from_python(d["train"], d.get("val"), cfg.data.val_fraction, cfg.run.seed, cfg.data.num_samples)
            except VaekitError:
                raise
            except ValueError as err:  # a data setting that cannot work; the message names the key
                if raised_in_user_code(err):  # the user's own Dataset: their traceback, unrelabelled
                    raise
                raise ConfigError(str(err)) from None
            self._cache[key] = self._to_device(data)
        return self._cache[key]

    def _to_device(self, data: DataBundle) -> DataBundle:
        """In-memory data that fit in a quarter of the free GPU memory move there once: batches are then
        gathered on the GPU, with no per-step host-to-device copy."""
        if self.rt.device.type != "cuda":
            return data
        sources = [s for s in (data.train, data.val) if isinstance(s, ArraySource)]
        nbytes = sum(s.x.numel() * s.x.element_size() for s in sources)
        if nbytes and nbytes < 0.25 * torch.cuda.mem_get_info(self.rt.device)[0]:
            move = lambda s: s.to(self.rt.device) if isinstance(s, ArraySource) else s  # noqa: E731
            return DataBundle(move(data.train), move(data.val), data.info, data.test)
        return data


@dataclass
class RunParts:
    """Everything built once for a run."""

    cfg: VaekitConfig
    stages: list[Stage]
    rt: Runtime
    data_for: StageData
    info: DataInfo  # the first stage's data
    model: nn.Module
    disc: nn.Module | None
    run_dir: Path
    lock: Any
    ema: EMA | None
    trainer: Trainer
    tuner: Finetuner
    loaded: dict[str, Any] | None  # the checkpoint resumed from (None: a fresh start)
    resume: bool


def build_run(cfg: VaekitConfig, model: nn.Module | None = None, data: dict[str, Any] | None = None,
              run_dir: Path | None = None, resume: bool = False, hooks: list[Any] | None = None) -> RunParts:
    """Build a run (see `vaekit.pipeline.run.Pipeline` for the arguments); resumes the trainer's state from the
    newest complete checkpoint when ``resume``."""
    stages = resolve_stages(cfg)
    rt = Runtime(cfg.train.precision, cfg.train.deterministic, cfg.train.timeout_s, strategy=cfg.train.strategy,
                 device=cfg.train.device)
    data_for = StageData(data, rt)
    # model and discriminator: built once from the first stage's data, seeded, identical on every rank
    set_seed(cfg.run.seed, deterministic=cfg.train.deterministic)
    info = data_for(stages[0]).info
    cfg, stages = _likelihood_from_data(cfg, stages, info, resume)
    check_target_range(stages[0].cfg.loss.recon, data_for(stages[0]).train,
                       "stages.0.loss.recon" if cfg.stages else "loss.recon")
    vae, disc = _build_modules(cfg, model, info, stages, rt)
    if not resume:  # weights a stage starts from must fit: said now, before any output or run directory
        _check_init_from_fits(stages, export_module(vae))
    # the run directory only once data and model are known to work: a bad config leaves nothing behind
    run_path, lock = _open_run_dir(rt, cfg, info, run_dir, resume)
    ema = EMA(vae, cfg.train.ema.decay) if cfg.train.ema.enabled else None
    manager = CheckpointManager(run_path / "checkpoints", rt.rank, rt.world, rt.is_main, gather_object, cfg.train.keep_last)
    trainer = Trainer(cfg, rt, vae, disc, ema, manager, None, Console(rt.is_main, cfg.log.progress), run_path)
    trainer.hooks = list(hooks or [])
    tuner = _register(manager, trainer, rt, vae, disc, ema)
    loaded = None
    if resume:
        loaded = manager.load(warn=trainer.console.write)
        if loaded is not None:
            trainer.state.load_state_dict(loaded)
            trainer.elapsed_before = trainer.state.elapsed
    return RunParts(cfg, stages, rt, data_for, info, vae, disc, run_path, lock, ema, trainer, tuner, loaded, resume)


def _likelihood_from_data(cfg: VaekitConfig, stages: list[Stage], info: DataInfo,
                          resume: bool) -> tuple[VaekitConfig, list[Stage]]:
    """A table/tags/records source says which likelihood its values need (``info.meta["likelihood"]``:
    bce for binary data, gaussian otherwise); it becomes ``loss.recon`` unless the config set it (resolved by
    `vaekit.config.likelihood`, as ``vaekit validate`` does)."""
    resolved = with_data_likelihood(cfg, info.meta, resume)
    return (cfg, stages) if resolved is cfg else (resolved, resolve_stages(resolved))


def _build_modules(cfg: VaekitConfig, model: nn.Module | None, info: DataInfo, stages: list[Stage],
                   rt: Runtime) -> tuple[nn.Module, nn.Module | None]:
    """The VAE (the user's module adapted, or built from ``cfg.model``) and the discriminator of the first
    adversarial stage, on the device; a model that cannot take this data names the keys to change."""
    try:
        vae = as_vae(model, cfg.loss.recon) if model is not None else build_model(cfg.model, info.shape, cfg.loss.recon)
        vae.latent_shape_for(tuple(info.shape))
        vae = vae.to(rt.device)
        adv = next((s for s in stages if s.adversarial), None)
        disc = build_discriminator(adv.cfg.loss.adversarial.discriminator, info.shape).to(rt.device) if adv else None
        factor = next((s for s in stages if s.factor), None)
        if factor is not None:  # FactorVAE: a latent discriminator in the discriminator's place
            if adv is not None:
                raise ConfigError("loss.variant=factor_vae: a run has one discriminator; it cannot also have stages "
                                  "with loss.adversarial.weight > 0")
            f = factor.cfg.loss.factor
            latent = math.prod(vae.latent_shape_for(tuple(info.shape)))
            disc = LatentDiscriminator(latent, f.hidden, f.layers).to(rt.device)
    except ValueError as err:
        if raised_in_user_code(err):  # the user's own encode: their traceback, unrelabelled
            raise
        raise ConfigError(str(err)) from None
    if cfg.model.grad_checkpointing and model is not None:
        vae.set_grad_checkpointing(True)
    return vae, disc


def _check_init_from_fits(stages: list[Stage], module: nn.Module) -> None:
    """Every stage's ``init_from`` weights fit the model (names and shapes read from the file's header only)."""
    from safetensors import safe_open

    from vaekit.engine.checkpoint import fit_report
    from vaekit.pipeline.stages import init_from_weights

    for stage in stages:
        if not stage.spec.init_from:
            continue
        where = f"stages.{stage.index}.init_from ({stage.name})"
        path = init_from_weights(stage.spec.init_from, where)
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()}
        report = fit_report(module, shapes)
        if report:
            raise ConfigError(f"{where}: {path}: the weights do not fit this model ({report})")


def _open_run_dir(rt: Runtime, cfg: VaekitConfig, info: DataInfo, run_dir: Path | None,
                  resume: bool) -> tuple[Path, Any]:
    """Created and locked by the main process; its path (or why it cannot be used) is broadcast, so all ranks
    agree and none waits for a main process that stopped."""
    found: list[Any] = [None]
    lock = None
    if rt.is_main:
        run_dir = run_dir or new_run_dir(Path(cfg.run.dir), cfg.run.name, cfg.data.source, cfg.model.arch)
        try:
            lock = prepare_run_dir(run_dir, resume, cfg.run.overwrite)
            try:
                if not resume or (run_dir / "config.yaml").read_text() != dump_config(cfg):
                    # first, and whole (a killed start leaves no half config behind); a resume with overrides
                    # (optim.lr, train.max_steps, ...) writes them back, so the next resume starts from them
                    tmp = run_dir / "config.yaml.tmp"
                    tmp.write_text(dump_config(cfg))
                    tmp.replace(run_dir / "config.yaml")
                    if info.meta:
                        (run_dir / "data_meta.json").write_text(json.dumps(info.meta, indent=1))
                (run_dir / "samples").mkdir(exist_ok=True)
            except OSError as err:
                lock.release()
                raise RunDirError(f"run.dir: cannot write into {str(run_dir)!r} ({err.strerror or err})") from None
            found = [str(run_dir)]
        except VaekitError as err:
            found = [err]
    if rt.world > 1:
        broadcast_object_list(found)
    if isinstance(found[0], VaekitError):
        raise found[0]
    return Path(found[0]), lock


def _register(m: CheckpointManager, t: Trainer, rt: Runtime, model: nn.Module, disc: nn.Module | None,
              ema: EMA | None) -> Finetuner:
    """What each checkpoint holds, by name; returns the model's `Finetuner` (its weights, LoRA adapters included)."""
    tuner = Finetuner(export_module(model))
    m.register("module", "model", tuner)
    if rt.strategy == "fsdp" and rt.world > 1:  # sharded weights are gathered before each save
        if getattr(model, "config", {}).get("arch") in (None, "custom"):
            raise ConfigError("train.strategy=fsdp: a module passed from Python cannot be rebuilt for the "
                              "export; use train.strategy=ddp (or model.arch=diffusers / a built-in arch)")
        m.register("local", "fsdp_gather", GatherBeforeSave(tuner, m.shared))
    if disc is not None:
        m.register("module", "discriminator", disc)
    if ema is not None:
        m.register("module", "ema", export_module(ema.shadow))
    m.register("shared", "noise_generator", GeneratorState(t.noise.generator))
    if rt.scaler is not None:
        m.register("shared", "scaler", rt.scaler)
    m.register("local", "epoch_meter", t.metrics.epoch_meter)
    m.register("local", "log_meter", t.metrics.log_meter)
    return tuner
