"""A run: build data, model and engine once, then drive the engine through the stages, then export.

The pipeline owns what changes between stages — data, freezing, objective, optimizers, the stage clock — and
hands each stage to the engine as a ``Plan``. The engine never imports this package.
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

from vaekit.config.load import dump_config, load_config
from vaekit.config.schema import VaekitConfig
from vaekit.data import ArraySource, BatchLoader, DataBundle, build_data
from vaekit.data.user import LoaderBatches, LoaderSource, from_python
from vaekit.engine import checkpoint as ckpt
from vaekit.engine.checkpoint import CheckpointManager, GeneratorState, RNGState
from vaekit.engine.ema import EMA
from vaekit.engine.finetune import Finetuner, GatherBeforeSave
from vaekit.engine.loop import Trainer
from vaekit.engine.plan import Plan
from vaekit.engine.rundir import new_run_dir, prepare_run_dir
from vaekit.engine.runtime import Runtime
from vaekit.engine.updates import build_update
from vaekit.errors import ConfigError, RunDirError, VaekitError
from vaekit.models import build_discriminator, build_model, count_parameters, model_summary
from vaekit.models.adapter import as_vae, export_module
from vaekit.models.diffusers import DiffusersVAE, save_diffusers
from vaekit.objectives import DiscriminatorObjective, VAEObjective
from vaekit.pipeline.stages import Stage, StageClock, resolve_stages
from vaekit.tracking.plots import plot_curves
from vaekit.tracking.tracker import Console, Tracker
from vaekit.utils import set_seed


@dataclass
class Outcome:
    run_dir: Path
    config: VaekitConfig
    trainer: Trainer
    records: list[dict[str, Any]]
    summary: dict[str, Any]


class Pipeline:
    """Everything built once for a run, and the per-stage plans.

    Args:
        cfg: the validated config.
        model: a user ``nn.Module`` following the protocol (None: build ``cfg.model``).
        data: Python data, ``{"arrays": {...}}`` or ``{"train": ..., "val": ...}`` (None: ``cfg.data`` from files).
        run_dir: the directory of a run to resume (None: a new one from ``cfg.run``).
        resume: continue from the newest complete checkpoint of ``run_dir``.
    """

    def __init__(self, cfg: VaekitConfig, model: nn.Module | None = None, data: dict[str, Any] | None = None,
                 run_dir: Path | None = None, resume: bool = False, hooks: list[Any] | None = None) -> None:
        self.cfg, self.python_data, self.resume = cfg, data, resume
        self.stages = resolve_stages(cfg)
        self.rt = rt = Runtime(cfg.train.precision, cfg.train.deterministic, cfg.train.timeout_s,
                               strategy=cfg.train.strategy)
        self._cache: dict[str, DataBundle] = {}
        # model and discriminator: built once from the first stage's data, seeded, identical on every rank
        set_seed(cfg.run.seed, deterministic=cfg.train.deterministic)
        self.info = self.data_for(self.stages[0]).info
        self.cfg = cfg = self._likelihood_from_data(cfg)
        try:  # a model that cannot take this data names the keys to change
            vae = as_vae(model, cfg.loss.recon) if model is not None else build_model(cfg.model, self.info.shape, cfg.loss.recon)
            vae.latent_shape_for(tuple(self.info.shape))
            self.model = vae.to(rt.device)
            adv = next((s for s in self.stages if s.adversarial), None)
            self.disc = build_discriminator(adv.cfg.loss.adversarial.discriminator, self.info.shape).to(rt.device) if adv else None
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if cfg.model.grad_checkpointing and model is not None:
            self.model.set_grad_checkpointing(True)
        # the run directory only once data and model are known to work: a bad config leaves nothing behind
        self.run_dir, self.lock = self._run_dir(run_dir, resume)
        self.ema = EMA(self.model, cfg.train.ema.decay) if cfg.train.ema.enabled else None
        manager = CheckpointManager(self.run_dir / "checkpoints", rt.rank, rt.world, rt.is_main,
                                    gather_object, cfg.train.keep_last)
        self.trainer = Trainer(cfg, rt, self.model, self.disc, self.ema, manager, None,
                               Console(rt.is_main, cfg.log.progress), self.run_dir)
        self.trainer.hooks = list(hooks or [])
        self._register(manager)
        self.loaded = None
        if resume:
            self.loaded = manager.load(warn=self.trainer.console.write)
            if self.loaded is not None:
                self.trainer.state.load_state_dict(self.loaded)
                self.trainer.elapsed_before = self.trainer.state.elapsed

    def _likelihood_from_data(self, cfg: VaekitConfig) -> VaekitConfig:
        """A table/tags/records source says which likelihood its values need (``info.meta["likelihood"]``:
        bce for binary data, gaussian otherwise); it becomes ``loss.recon`` unless the config set it."""
        want = self.info.meta.get("likelihood")
        if not want or want == cfg.loss.recon or "recon" in cfg.loss.model_fields_set or self.resume:
            return cfg
        tree = cfg.model_dump(mode="json")
        tree["loss"]["recon"] = want
        cfg = load_config(tree)
        self.stages = resolve_stages(cfg)
        return cfg

    def _register(self, m: CheckpointManager) -> None:
        t = self.trainer
        self.tuner = Finetuner(export_module(self.model))  # the model's weights, LoRA adapters included
        m.register("module", "model", self.tuner)
        if self.rt.strategy == "fsdp" and self.rt.world > 1:  # sharded weights are gathered before each save
            if getattr(self.model, "config", {}).get("arch") in (None, "custom"):
                raise ConfigError("train.strategy=fsdp: a module passed from Python cannot be rebuilt for the "
                                  "export; use train.strategy=ddp (or model.arch=diffusers / a built-in arch)")
            m.register("local", "fsdp_gather", GatherBeforeSave(self.tuner, m.shared))
        if self.disc is not None:
            m.register("module", "discriminator", self.disc)
        if self.ema is not None:
            m.register("module", "ema", export_module(self.ema.shadow))
        m.register("shared", "noise_generator", GeneratorState(t.noise.generator))
        if self.rt.scaler is not None:
            m.register("shared", "scaler", self.rt.scaler)
        m.register("local", "epoch_meter", t.metrics.epoch_meter)
        m.register("local", "log_meter", t.metrics.log_meter)

    # ---------------------------------------------------------------------------------- data, dirs
    def data_for(self, stage: Stage) -> DataBundle:
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

    def _run_dir(self, run_dir: Path | None, resume: bool) -> tuple[Path, Any]:
        """Created and locked by the main process; its path (or why it cannot be used) is broadcast, so all ranks
        agree and none waits for a main process that stopped."""
        found: list[Any] = [None]
        lock = None
        if self.rt.is_main:
            cfg = self.cfg
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
                        if self.info.meta:
                            (run_dir / "data_meta.json").write_text(json.dumps(self.info.meta, indent=1))
                    (run_dir / "samples").mkdir(exist_ok=True)
                except OSError as err:
                    lock.release()
                    raise RunDirError(f"run.dir: cannot write into {str(run_dir)!r} ({err.strerror or err})") from None
                found = [str(run_dir)]
            except VaekitError as err:
                found = [err]
        if self.rt.world > 1:
            broadcast_object_list(found)
        if isinstance(found[0], VaekitError):
            raise found[0]
        return Path(found[0]), lock

    # ---------------------------------------------------------------------------------- freezing
    def _module(self, path: str) -> nn.Module:
        root, _, sub = path.partition(".")
        if root == "discriminator":
            if self.disc is None:
                raise ConfigError(f"freeze: {path!r}: this run has no discriminator")
            base, sub_path = self.disc, sub
        else:
            base, sub_path = export_module(self.model), path
            if root in ("encoder", "decoder") and base is self.model:
                base, sub_path = getattr(self.model, root), sub
        try:
            return base.get_submodule(sub_path) if sub_path else base
        except AttributeError:
            names = ", ".join(n for n, _ in export_module(self.model).named_children())
            raise ConfigError(f"freeze: {path!r} is not a submodule of the model (its children: {names})") from None

    def _train_mode(self) -> None:
        """Train mode, except frozen modules, whose norm statistics must not drift."""
        self.model.train()
        if self.disc is not None:
            self.disc.train()
        for path in self.trainer.state.frozen:
            self._module(path).eval()

    def _freeze(self, frozen: list[str]) -> None:
        self.model.requires_grad_(True)
        if self.disc is not None:
            self.disc.requires_grad_(True)
        for path in sorted(frozen):
            self._module(path).requires_grad_(False)

    # ---------------------------------------------------------------------------------- plans
    def plan(self, stage: Stage, resuming: bool) -> Plan:
        cfg, rt, st = stage.cfg, self.rt, self.trainer.state
        data = self.data_for(stage)
        try:  # a resolution/clip length the model cannot take fails here, naming the keys, not mid-step
            self.model.latent_shape_for(tuple(data.info.shape))
        except ValueError as err:
            raise ConfigError(f"stages.{stage.index} ({stage.name}): {err}") from None
        train_loader, val_loader = self._loaders(cfg, data)
        clock = StageClock(stage.spec, math.ceil(len(train_loader) / cfg.train.grad_accum))
        total = clock.limit_steps()
        if not resuming and stage.spec.init_from:
            self._init_from(stage.spec.init_from)
            if self.ema is not None:
                self.ema.copy_from(self.model)  # the average starts from the loaded weights
        if not resuming:
            st.frozen = sorted(stage.frozen_groups(set(st.frozen)))
        self._freeze(st.frozen)
        self._finetune(stage)
        # FSDP replaces the parameters with sharded ones: the optimizer is built on the wrapped model's
        forward = rt.wrap(self.model, compile=cfg.train.compile)
        updates = {}
        enc, dec = self.model.encoder, self.model.decoder
        groups = {"encoder": list(enc.parameters()), "decoder": list(dec.parameters()),
                  "other": list(self.model.parameters())}
        gen = build_update("generator", groups, cfg.optim, total, rt)
        if gen is not None:
            gen.sharded = self.model if rt.strategy == "fsdp" and rt.world > 1 else None
            updates["generator"] = gen
        d_objective = None
        if stage.adversarial and self.disc is not None:
            d_objective = DiscriminatorObjective(cfg.loss).to(rt.device)
            disc = build_update("discriminator", {"discriminator": list(self.disc.parameters())}, cfg.disc_optim,
                                total, rt, start_step=cfg.loss.adversarial.start_step)
            if disc is not None:
                updates["discriminator"] = disc
        # the objective may hold a network (perceptual) whose init draws random numbers: seed it on its own, so
        # it is the same network in a resumed run and the training RNG is untouched
        with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []):
            torch.manual_seed(cfg.run.seed + 104729)
            objective = VAEObjective(cfg.loss).to(rt.device)
        disc_forward = rt.wrap(self.disc) if d_objective is not None else None
        return Plan(stage.name, stage.index, cfg, data, train_loader, val_loader, objective, d_objective, updates,
                    clock, self.model, forward, disc_forward, self._train_mode, lambda s: self._desc(stage, s))

    def _loaders(self, cfg: VaekitConfig, data: DataBundle) -> tuple[Any, Any]:
        if self.rt.world > 1 and not cfg.train.drop_last:
            raise ConfigError(
                "train.drop_last: false is not supported with several processes (a partial last batch would "
                "split unevenly across them); keep the default true"
            )
        train_loader, val_loader = self._batches(data.train, cfg, train=True), self._batches(data.val, cfg, train=False)
        if len(train_loader) == 0:
            batch = cfg.train.batch_size
            raise ConfigError(f"train.batch_size: {batch} is larger than the training set ({data.info.n_train} samples)")
        return train_loader, val_loader

    def _batches(self, source: Any, cfg: VaekitConfig, train: bool) -> Any:
        """This process's batches of ``source``: shuffled and without labels for training, in order for
        validation and test; a user's DataLoader as it is."""
        if isinstance(source, LoaderSource):
            return LoaderBatches(source)
        rt, batch = self.rt, cfg.train.batch_size
        common = {"rank": rt.rank, "world_size": rt.world, "num_workers": cfg.data.num_workers, "seed": cfg.run.seed}
        try:
            if train:
                return BatchLoader(source, batch, shuffle=True, drop_last=cfg.train.drop_last, labels=False, **common)
            return BatchLoader(source, batch, shuffle=False, drop_last=False, **common)
        except ValueError as err:  # e.g. a batch size that the process count does not divide
            raise ConfigError(str(err)) from None

    def _init_from(self, source: str) -> None:
        path = Path(source)
        if path.is_dir():  # a run directory (its export, else its latest checkpoint) or one checkpoint
            latest = ckpt.latest_checkpoint(path / "checkpoints")
            exported = path / "model.safetensors"
            path = exported if exported.is_file() or latest is None else latest / "model.safetensors"
        if not path.is_file():
            raise ConfigError(f"init_from: {source!r} has no model.safetensors")
        try:
            ckpt.load_weights(export_module(self.model), path)
        except VaekitError as err:
            raise ConfigError(f"init_from: {err}") from None
        disc_file = path.with_name("discriminator.safetensors")
        if self.disc is not None and disc_file.is_file():
            ckpt.load_weights(self.disc, disc_file)

    def _desc(self, stage: Stage, st: Any) -> str:
        spec, n = stage.spec, len(self.stages)
        epochs = spec.epochs or spec.max_epochs
        ep = f"Epoch {st.epoch + 1}" + (f"/{epochs}" if epochs else "")
        return f"Stage {spec.name} ({stage.index + 1}/{n}) | {ep}" if n > 1 else ep

    # ---------------------------------------------------------------------------------- run
    def run(self) -> Outcome:
        t, cfg = self.trainer, self.cfg
        # a resume truncates metrics.jsonl/TensorBoard to the checkpoint (to nothing when there was none)
        resumed_at = t.state.step if self.loaded is not None else (-1 if self.resume else None)
        t.tracker = Tracker(self.run_dir, cfg.log, self.rt.is_main, multi_stage=len(self.stages) > 1,
                            config=cfg.model_dump(mode="json"), resume_step=resumed_at,
                            resume_records=t.state.records if self.loaded is not None else None)
        t.metrics.tracker = t.tracker
        verb = f"resuming at step {resumed_at} in" if self.loaded is not None else "run directory:"
        t.console.write(f"{verb} {self.run_dir}")
        t.console.write(f"data: {self.info.description}")
        t.console.write(f"model: {type(export_module(self.model)).__name__}, {count_parameters(self.model):,} parameters")
        if self.rt.is_main and self.loaded is None:
            text = model_summary(export_module(self.model))
            if self.disc is not None:
                text += "\n\ndiscriminator\n" + model_summary(self.disc)
            (self.run_dir / "model.txt").write_text(text + "\n")
        try:
            loaded = self.loaded is not None
            for stage in self.stages[t.state.stage_index:]:
                resuming = loaded and t.state.stage_index == stage.index
                loaded = False
                plan = self.plan(stage, resuming)
                if resuming and t.state.stage_done:
                    limit = plan.clock.limit_steps()
                    if limit is None or limit <= t.state.stage_step:
                        # the next stage is built as right after an uninterrupted stage end: RNG now, no optimizers
                        t.ckpt.register("local", "rng", RNGState())
                        t.ckpt.pending.clear()
                        continue
                    t.state.stage_done = False  # resumed with a longer length (train.max_steps=...): go on
                t.fit(plan, resuming)
            summary = self._finish(plan)
        except RuntimeError as err:
            self.rt.check_collective_failure(err, lambda: ckpt.latest_checkpoint(self.run_dir / "checkpoints"))
            raise
        finally:
            t.console.close()
            t.tracker.close()
            if self.lock is not None:
                self.lock.release()
        return Outcome(self.run_dir, self.cfg, t, list(t.tracker.records), summary)

    def _finish(self, plan: Plan) -> dict[str, Any]:
        """Evaluate the test split, export weights (EMA when enabled), write summary.json and curves.png."""
        t = self.trainer
        test = self._test_metrics(plan)
        full = self._gather_if_sharded()
        t.rt.wait()
        if not self.rt.is_main:
            return {}
        export = export_module(t.eval_model()) if full is None else full
        model_cfg = getattr(t.eval_model(), "config", {})
        meta = {"config": model_cfg, "vaekit_config": _portable(self.cfg)}
        self._export_finetuned(export)
        try:
            ckpt.save_weights(export, self.run_dir / "model.safetensors", metadata=meta)
        except OSError as err:
            raise RunDirError(
                f"cannot write {self.run_dir / 'model.safetensors'} in run directory {str(self.run_dir)!r} "
                f"({err.strerror or err}); the last complete checkpoint is "
                f"{ckpt.latest_checkpoint(self.run_dir / 'checkpoints')}: free space and run "
                f"`vaekit train --resume {self.run_dir}` to export again"
            ) from None
        (self.run_dir / "model_config.json").write_text(json.dumps(model_cfg, indent=1))
        if isinstance(t.eval_model(), DiffusersVAE):
            save_diffusers(export, self.run_dir / "diffusers")
        records = t.tracker.records
        last_val = next((r for r in reversed(records) if r["split"] == "val"), {})
        last_train = next((r for r in reversed(records) if r["split"] == "train" and r.get("kind") == "epoch"), {})
        summary = {
            "run_dir": str(self.run_dir),
            "steps": t.state.step,
            "stages": [s.name for s in self.stages],
            "wall_time_sec": round(t.elapsed(), 2),
            "parameters": count_parameters(self.model),
            "discriminator_parameters": count_parameters(self.disc) if self.disc is not None else 0,
            "final_train": _metrics_only(last_train),
            "final_val": _metrics_only(last_val),
            "test": test,
            "skipped_batches": t.state.skipped_batches,
            "data": self.info.description,
            "checkpoint": str(ckpt.latest_checkpoint(self.run_dir / "checkpoints")),
            "model": str(self.run_dir / "model.safetensors"),
            **self._export_paths(),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if self.cfg.log.plots:
            plot_curves(records, self.run_dir / "curves.png")
        return summary

    def _test_metrics(self, plan: Plan) -> dict[str, float]:
        """The last stage's test split, evaluated once with the final (EMA) weights and that stage's objective;
        {} without one."""
        test = plan.data.test
        if test is None or len(test) == 0:
            return {}
        t = self.trainer
        loader = self._batches(test, plan.cfg, train=False)
        means = t.validator.run(plan, t.state, t.eval_model(), loader=loader)
        t.metrics.write({**t.metrics.where, "step": t.state.step, "epoch": t.state.epoch, "split": "test", **means},
                        t.state)
        return means

    # ---------------------------------------------------------------------------------- finetune
    def _finetune(self, stage: Stage) -> None:
        """The stage's finetune mode: inject / merge LoRA adapters, then leave only its parameters trainable."""
        st = self.trainer.state
        owner = self.stages[st.stage_index]  # the stage the current (or checkpointed) adapters belong to
        self.tuner.apply(stage.cfg.finetune, owner.cfg.finetune, save=lambda: self._save_adapters(owner.name))
        self._freeze(st.frozen)  # adapters injected just now obey the freeze list too
        self.tuner.restrict(self.model, stage.cfg.finetune.mode)

    def _save_adapters(self, stage_name: str) -> None:
        if self.rt.is_main:
            self.tuner.save_adapters(self.run_dir / "lora" / stage_name)

    def _gather_if_sharded(self) -> nn.Module | None:
        """FSDP: the full weights (collective) in a fresh unsharded copy of the module on the main process."""
        if not (self.rt.strategy == "fsdp" and self.rt.world > 1):
            return None
        state = self.tuner.gather()
        self.tuner.gathered = None
        if not self.rt.is_main:
            return None
        config = dict(getattr(self.model, "config", {}))
        from vaekit.models import build_model_from_config

        fresh = export_module(build_model_from_config(config))
        fresh.load_state_dict(state)
        return fresh

    def _export_finetuned(self, export: nn.Module) -> None:
        """Adapters still present at the end: written alone, then merged, so the exports hold plain weights."""
        if self.tuner.lora is not None and export is self.tuner.module:
            self._save_adapters(self.stages[self.trainer.state.stage_index].name)
            self.tuner.merge()

    def _export_paths(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        if (self.run_dir / "diffusers").is_dir():
            paths["diffusers"] = str(self.run_dir / "diffusers")
        if (self.run_dir / "lora").is_dir():
            paths["lora"] = sorted(str(p) for p in (self.run_dir / "lora").iterdir() if p.is_dir())
        return paths


def _portable(cfg: VaekitConfig) -> dict[str, Any]:
    """The config stored in an export: where the run lived (run.dir, run.name) is left out, so identical runs
    give byte-identical ``model.safetensors`` files."""
    tree = cfg.model_dump(mode="json")
    tree["run"] = {"seed": tree["run"]["seed"]}
    return tree


def _metrics_only(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, float) and k != "time"}

