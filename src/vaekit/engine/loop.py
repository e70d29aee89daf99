"""The training loop: a plan (one stage) → epochs → optimizer steps, each step a short list of updates.

One optimizer step (``train_step``): the generator update runs the forward once per micro-batch (DDP gradient
sync only on the last one) and keeps the detached reconstructions; then the discriminator update, when active,
trains on those reconstructions of the same micro-batches. The counters advance in one place (``fit``); then
the periodic blocks run — log, validate, checkpoint — each deciding its own cadence. Host syncs happen only there.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from vaekit.config.schema import VaekitConfig
from vaekit.engine.blocks import Blocks
from vaekit.engine.checkpoint import CheckpointManager
from vaekit.engine.metrics import TrainMetrics
from vaekit.engine.noise import GlobalNoise
from vaekit.engine.plan import Plan
from vaekit.engine.runtime import Runtime
from vaekit.engine.signals import StopSignal
from vaekit.engine.state import TrainState
from vaekit.engine.updates import Update
from vaekit.engine.validation import Validator


def epoch_batches(plan: Plan) -> int:
    """Batches in one epoch of the plan: the loader's, or ``train.limit_batches`` when fewer."""
    n, limit = len(plan.train_loader), plan.cfg.train.limit_batches
    return min(n, limit) if limit is not None else n


class Trainer(Blocks):
    """Runs plans on one model (and discriminator) with one EMA, RNG, noise stream, meters and checkpoints."""

    def __init__(self, cfg: VaekitConfig, runtime: Runtime, model: nn.Module, disc: nn.Module | None,
                 ema: Any, ckpt: CheckpointManager, tracker: Any, console: Any, run_dir: Any) -> None:
        self.cfg, self.rt, self.model, self.disc, self.ema = cfg, runtime, model, disc, ema
        self.ckpt, self.tracker, self.console, self.run_dir = ckpt, tracker, console, run_dir
        self.state = TrainState()
        self.noise = GlobalNoise(cfg.run.seed + 1, runtime.device, runtime.rank, runtime.world)
        self.metrics = TrainMetrics(runtime, cfg.train.nan_policy, cfg.train.nan_skip_limit)
        self.validator = Validator(runtime, run_dir)
        self.stop = StopSignal(runtime)
        self.started = time.time()
        self.skip_policy = cfg.train.nan_policy == "skip" and runtime.scaler is None
        self.hooks: list[Any] = []
        """Observers called as ``hook(event, state)`` at "epoch_start", "epoch_end" (its last step done) and
        "stage_end" (before the stage's final validation); e.g. a benchmark's timer. They must not train."""

    def emit(self, event: str) -> None:
        for hook in self.hooks:
            hook(event, self.state)

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, plan: Plan, resuming: bool) -> None:
        """Train ``plan`` from the current state to its end (its length or its transition)."""
        st = self.state
        self._begin(plan, resuming)
        limit, accum = plan.clock.limit_steps(), plan.cfg.train.grad_accum
        reason = None
        with self.stop:
            while reason is None:
                plan.train_loader.set_epoch(st.epoch)
                self.emit("epoch_start")
                micro, n = [], epoch_batches(plan)
                for batch in plan.train_loader.iter_from(st.batch_in_epoch):
                    if st.batch_in_epoch >= n:  # train.limit_batches: the rest of the epoch is skipped
                        break
                    micro.append(batch)
                    st.batch_in_epoch += 1
                    if len(micro) < accum and st.batch_in_epoch < n:
                        continue
                    self.train_step(plan, micro)
                    micro = []
                    st.step += 1  # the counters advance here, and only here
                    st.stage_step += 1
                    reason = self._periodic(plan, "length" if limit is not None and st.stage_step >= limit else None)
                    if reason is not None:
                        break
                if reason is None:  # the epoch ended
                    self.emit("epoch_end")
                    self.metrics.epoch_record(st)
                    # not twice at one step: a finished run extended by --resume starts at an epoch whose last
                    # step the stage end already validated
                    if self.validator.due(plan, st, epoch_end=True) and st.last_val_step != st.step:
                        self.validate(plan)
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                    reason = plan.clock.metric_done() or plan.clock.epochs_done(st.epoch)
                    if reason is None:
                        self.save(plan, force=True)
                        self.console.set_description(plan.describe(st))
            self._end(plan, reason)

    def train_step(self, plan: Plan, batches: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step of every active update over ``batches`` (the micro-batches of the accumulation)."""
        cfg, rt, step = plan.cfg, self.rt, self.state.step
        n, log_now = len(batches), (step + 1) % cfg.log.every == 0
        gen, disc = plan.updates.get("generator"), plan.updates.get("discriminator")
        adv_on = plan.d_objective is not None and step >= cfg.loss.adversarial.start_step
        # the decoder's last weight serves only the adaptive adversarial weight (None when the decoder is frozen)
        last_layer = self.model.last_layer if adv_on and gen is not None else None
        last_layer = last_layer if last_layer is not None and last_layer.requires_grad else None
        fakes = []
        for i, batch in enumerate(batches):  # generator: forward once per micro-batch
            x = batch["x"].to(rt.device, non_blocking=True)
            latent = self.model.latent_shape_for(tuple(x.shape[1:]))
            samples = getattr(plan.objective, "samples", 1)  # IWAE/MIWAE: S posterior samples per input
            x_in, noise = self.noise.draw(x, (samples, *latent) if samples > 1 else latent, cfg.loss.denoise)
            with rt.no_sync(plan.forward if gen else None, i == n - 1), rt.autocast():
                out = plan.forward(x_in, noise=noise)
                loss, terms = plan.objective(x, out, step, discriminator=self.disc if adv_on else None,
                                             last_layer=last_layer, detailed=log_now)
            if gen is not None:
                rt.backward(loss / n if n > 1 else loss)
            self.metrics.record(step, terms, x.shape[0])
            if adv_on:
                # raw likelihood parameters (the d-objective maps them); FactorVAE's latent discriminator reads z
                fakes.append(getattr(out, getattr(plan.d_objective, "reads", "recon")).detach())
        extra = self._apply(gen, log_now, "")
        if adv_on and disc is not None:  # discriminator: the same micro-batches' detached reconstructions
            disc.optimizer.zero_grad(set_to_none=True)  # the generator's backward reached it: not its own loss
            for i, (batch, fake) in enumerate(zip(batches, fakes, strict=True)):
                real = batch["x"].to(rt.device, non_blocking=True)
                with rt.no_sync(plan.disc_forward, i == n - 1), rt.autocast():
                    d_loss, d_terms = plan.d_objective(real, fake, step, plan.disc_forward)
                rt.backward(d_loss / n if n > 1 else d_loss)
                self.metrics.record(step, d_terms, real.shape[0])
            extra |= self._apply(disc, log_now, "disc_")
        self._ema(step + 1)
        if log_now and extra:
            self.metrics.extra(extra)

    # -------------------------------------------------------------------------------- step helpers
    def _apply(self, update: Update | None, log_now: bool, prefix: str) -> dict[str, torch.Tensor]:
        if update is None:
            return {}
        lr = update.schedule.get_lr() if log_now else 0.0  # the learning rate this step used
        norm, skipped = update.step(self.rt, want_norm=log_now, skip_nonfinite=self.skip_policy)
        self.state.skipped_batches += int(skipped)
        if not log_now:
            return {}
        return {f"{prefix}lr": torch.tensor(lr)} | ({f"{prefix}grad_norm": norm} if norm is not None else {})

    def _ema(self, done: int) -> None:
        if self.ema is None:
            return
        ema = self.cfg.train.ema
        if done == ema.start_step:
            self.ema.copy_from(self.model)
        elif done > ema.start_step and done % ema.every == 0:
            self.ema.update(self.model)

    def eval_model(self) -> nn.Module:
        """The EMA weights once the average has started, else the live model."""
        if self.ema is not None and self.state.step >= self.cfg.train.ema.start_step:
            return self.ema.shadow
        return self.model
