"""The blocks around the loop's steps: stage begin/end, the periodic log → validate → checkpoint, and the
validation and checkpoint blocks themselves. Each periodic block decides its own cadence; ``Trainer`` (loop.py)
only calls them."""

from __future__ import annotations

import time
from typing import Any

from vaekit.engine.checkpoint import RNGState
from vaekit.engine.signals import TrainingInterrupted
from vaekit.errors import ConfigError


class Blocks:
    """Mixed into ``Trainer``; uses its ``state``, ``metrics``, ``validator``, ``ckpt``, ``console``, ``rt``."""

    state: Any
    metrics: Any
    validator: Any
    ckpt: Any
    console: Any
    rt: Any
    stop: Any
    tracker: Any
    model: Any
    disc: Any
    run_dir: Any
    started: float
    elapsed_before: float = 0.0

    def _begin(self, plan: Any, resuming: bool) -> None:
        """Register the plan's updates (restoring their state on resume), or reset the stage counters."""
        st = self.state
        for name in ("generator", "discriminator"):
            self.ckpt.unregister("shared", name)
        for name, update in plan.updates.items():
            self.ckpt.register("shared", name, update)
        # building the stage (a perceptual network's init, data loaders) may draw from the global RNG: the
        # checkpoint's RNG is restored only now, so the next batch sees exactly the state the checkpoint saw
        self.ckpt.register("local", "rng", RNGState())
        self.ckpt.pending.clear()  # what the resumed stage did not claim belongs to no later stage
        if not resuming:
            st.stage_index, st.stage_name, st.stage_step, st.epoch, st.batch_in_epoch = plan.index, plan.name, 0, 0, 0
            st.stage_done, st.clock = False, {}
            self.metrics.reset()
        plan.clock.load_state_dict(st.clock)
        self._research_checks(plan)
        self.metrics.where = {"stage": plan.name, "stage_index": plan.index}
        if self.ckpt.loaded_from is not None and self.metrics.last_good.startswith("no checkpoint"):
            self.metrics.last_good = f"the last good checkpoint is {self.ckpt.loaded_from}"
        self.metrics.last_log = (time.time(), st.step)
        plan.train_mode()
        self.console.start_stage(plan.describe(st), total=plan.clock.limit_steps(), initial=st.stage_step)

    def _research_checks(self, plan: Any) -> None:
        """Research objectives' needs, checked before the stage's first step: the training set size (β-TCVAE),
        the memory of k·m importance samples (IWAE/MIWAE), pseudo-inputs that the data can support (VampPrior)."""
        info, loss = plan.data.info, plan.cfg.loss
        plan.objective.dataset_size = info.n_train
        prior = getattr(self.model, "prior", None)
        if prior is not None and prior.pseudo.shape[0] > info.n_train:
            raise ConfigError(f"model.prior.pseudo_inputs={prior.pseudo.shape[0]}: more pseudo-inputs than the "
                              f"{info.n_train} training samples; use at most {info.n_train}")
        low, high = info.value_range
        if prior is not None and (low < 0.0 or high > 1.0):
            raise ConfigError(f"model.prior=vampprior: the pseudo-inputs live in [0, 1] but the data spans "
                              f"[{low:g}, {high:g}]; scale the data to [0, 1] or use model.prior.kind=normal")
        if loss.variant in ("iwae", "miwae"):
            from vaekit.objectives.iwae import check_iw_memory

            latent = self.model.latent_shape_for(tuple(info.shape))
            check_iw_memory(self.model, latent, plan.objective.samples, plan.cfg.train.batch_size // self.rt.world,
                            loss.iw.k, loss.iw.m, loss.iw.memory_limit_mb, self.rt.device)

    def _periodic(self, plan: Any, reason: str | None) -> str | None:
        """log → validate → checkpoint after a step; returns why the stage ends, if it does."""
        st, cfg = self.state, plan.cfg
        logged = self.metrics.maybe_log(st, cfg.log.every, cfg.train.batch_size * cfg.train.grad_accum)
        for name, value in (logged or {}).items():
            plan.clock.observe(f"train/{name}", value, st.step)
        self.console.update(1, {k: logged[k] for k in ("loss", "recon", "kl") if k in logged} if logged else None)
        if self.validator.due(plan, st, epoch_end=False):
            self.validate(plan)
        reason = reason or plan.clock.metric_done()
        if reason is None:
            self.save(plan, force=False)
        if reason is None and self.stop.requested(st.step % cfg.log.every == 0):
            self.save(plan, force=True)
            raise TrainingInterrupted(
                f"{self.stop.name}: stopped at step {st.step} with a checkpoint; resume with "
                f"`vaekit train --resume {self.run_dir}`"
            )
        return reason

    def _end(self, plan: Any, reason: str) -> None:
        self.emit("stage_end")
        message = plan.clock.end_message(reason, self.state.step)
        if message:
            self.console.write(message)
        self.metrics.epoch_record(self.state)
        if self.state.last_val_step != self.state.step:
            self.validate(plan)
        self.state.stage_done = True
        self.save(plan, force=True)
        self.console.close()

    def validate(self, plan: Any) -> dict[str, float]:
        """Validation terms (EMA weights when on) → metrics.jsonl, the stage clock, plateau schedules, samples."""
        st, model = self.state, self.eval_model()
        means = self.validator.run(plan, st, model)
        terms = dict(means)
        means.update({k: v for k, v in self.validator.eval_metrics(plan, st, model).items() if k not in means})
        st.last_val_step = st.step
        self.metrics.write({**self.metrics.where, "step": st.step, "epoch": st.epoch, "split": "val", **means}, st)
        self.metrics.check_validation(terms, st)
        for name, value in means.items():
            plan.clock.observe(f"val/{name}", value, st.step)
        if "loss" in means:
            for update in plan.updates.values():
                update.schedule.step_metric(means["loss"])
        if self.rt.is_main:
            keys = ("loss", "recon", "kl", "mse", "active_units", "code_usage", "perplexity")
            shown = " ".join(f"{k}={v:.4g}" for k, v in means.items() if k in keys)
            self.console.write(f"{plan.describe(st)} | step {st.step} | val {shown}")
            if plan.cfg.log.samples:
                self.validator.samples(plan, st, model, self.tracker)
        plan.train_mode()
        return means

    def save(self, plan: Any, force: bool) -> None:
        """Checkpoint the exact position when due (``train.ckpt_every``) or forced (epoch and stage ends, a
        signal). Refuses if a loss or a weight went non-finite, so the checkpoint on disk is always a good one."""
        st, every = self.state, plan.cfg.train.ckpt_every
        if not force and not (every is not None and st.step % every == 0):
            return
        self.metrics.check_finite(st)
        self.metrics.check_weights(self._watched(plan), st)
        st.clock = plan.clock.state_dict()
        self.metrics.fold()
        st.elapsed = self.elapsed()
        path = self.ckpt.save(st.step, st.to_dict())
        if path is not None:
            self.tracker.flush()
            self.metrics.last_good = f"the last good checkpoint is {path}"
        self.rt.wait()

    def _watched(self, plan: Any) -> dict[str, list[tuple[str, Any]]]:
        """What must be finite in a good checkpoint: weights and buffers of every module, optimizer states."""
        named: dict[str, list[tuple[str, Any]]] = {}
        ema = getattr(self, "ema", None)
        for owner, module in (("model", self.model), ("discriminator", self.disc), ("ema", ema.shadow if ema else None)):
            if module is not None:
                named[owner] = [*module.named_parameters(), *module.named_buffers()]
        param_names = {id(p): f"{owner}: {n}" for owner, pairs in named.items() for n, p in pairs}
        for name, update in plan.updates.items():
            named[f"{name} optimizer"] = [
                (f"{key} of {param_names.get(id(param), 'a parameter')}", value)
                for param, per in update.optimizer.state.items() for key, value in per.items()
                if hasattr(value, "is_floating_point")
            ]
        return named

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def eval_model(self) -> Any:
        raise NotImplementedError

    def emit(self, event: str) -> None:
        raise NotImplementedError
