"""The training loop: stages → epochs → optimizer steps, each step a short list of updates.

One optimizer step (``train_step``):
  generator update — for each micro-batch: corrupt input (denoising), forward once, objective, backward (DDP
  gradient sync only on the last micro-batch); keep the detached reconstruction; clip; step; schedule.
  discriminator update (when active) — on those detached reconstructions of the same micro-batches; clip; step.
Then the periodic blocks run in order: log → validate (+ samples) → checkpoint. Host syncs happen only there.

Wrapping order (applied from outside, the model code knows nothing of it): freeze → DDP → torch.compile.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vaekit.config.load import dump_config
from vaekit.config.schema import SchedulerConfig, VaekitConfig
from vaekit.data import ArraySource, BatchLoader, DataBundle, DataError, build_data
from vaekit.engine import checkpoint as ckpt
from vaekit.engine.ema import EMA
from vaekit.engine.optim import Schedule, build_optimizer
from vaekit.engine.state import Meter, NonFiniteWatch, TrainState
from vaekit.errors import ConfigError, NonFiniteLossError
from vaekit.models import build_discriminator, build_model, count_parameters, model_summary
from vaekit.objectives import DiscriminatorObjective, VAEObjective, corrupt, kl_per_element, likelihood_mean
from vaekit.pipeline.stages import Stage, StageClock, resolve_stages
from vaekit.tracking.media import recon_grid, sample_grid
from vaekit.tracking.plots import plot_curves
from vaekit.tracking.tracker import Console, Tracker
from vaekit.utils import set_seed, tune_cpu_allocator


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived: the run saved a checkpoint at the end of the current step and stopped."""


@dataclass
class Update:
    """One update of a step: the parameters it trains, their optimizer, schedule and clipping."""

    name: str
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    params: list[nn.Parameter]
    grad_clip: float | None


@dataclass
class StageRuntime:
    """Everything built for one stage; rebuilt at each stage start (weights carry over)."""

    stage: Stage
    data: DataBundle
    train_loader: BatchLoader
    val_loader: BatchLoader
    objective: VAEObjective
    d_objective: DiscriminatorObjective | None
    generator: Update
    discriminator: Update | None
    clock: StageClock
    model_ddp: nn.Module
    disc_ddp: nn.Module | None
    forward_model: nn.Module


class Trainer:
    def __init__(
        self,
        cfg: VaekitConfig,
        arrays: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        resume: bool = False,
    ):
        self.cfg = cfg
        self.arrays = arrays
        self.stages = resolve_stages(cfg)
        # Accelerate only sets up a CPU process group (gloo) when told the run is on the CPU.
        cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        # Accelerate keeps its state in a process-wide singleton that refuses a second precision; a later run in
        # the same Python process (a notebook, a sweep) gets a fresh one. The process group is left alone.
        AcceleratorState._reset_state(reset_partial_state=False)
        if cfg.train.precision == "fp16" and not torch.cuda.is_available():
            # Accelerate would silently train in fp32; say so instead
            raise ConfigError("train.precision: 'fp16' needs a CUDA GPU; use 'bf16' (or 'no') on this machine")
        self.accelerator = Accelerator(mixed_precision=cfg.train.precision, cpu=cpu_ddp)
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.device.type == "cuda" and not cfg.train.deterministic:
            torch.backends.cudnn.benchmark = True  # shapes are fixed within a stage: let cuDNN pick kernels
        if self.device.type == "cpu":
            tune_cpu_allocator()  # keep freed activation memory in the heap between steps
        self.state = TrainState()
        self._data_cache: dict[str, DataBundle] = {}
        self._start_time = time.time()

        # Model and discriminator: built once from the first stage's config, seeded, identical on every rank.
        set_seed(cfg.run.seed, deterministic=cfg.train.deterministic)
        first = self.stages[0]
        self.info = self._data_for(first).info
        self.disc: nn.Module | None = None
        try:  # a model that cannot take this data names the keys to change
            self.model = build_model(cfg.model, self.info.shape, cfg.loss.recon).to(self.device)
            adv_stage = next((s for s in self.stages if s.adversarial), None)
            if adv_stage is not None:
                adv = adv_stage.cfg.loss.adversarial
                self.disc = build_discriminator(adv.discriminator, self.info.shape).to(self.device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        # the run directory only once data and model are known to work: a bad config leaves nothing behind
        self.run_dir = self._make_run_dir(run_dir, resume)
        self.ckpt_dir = self.run_dir / "checkpoints"
        ema_cfg = cfg.train.ema
        self.ema = EMA(self.model, ema_cfg.decay) if ema_cfg.enabled else None
        # The latent noise and the input corruption are drawn for the *global* batch from one generator shared by
        # all processes, each taking its slice: N processes then train exactly like one with the same batch.
        self.noise_gen = torch.Generator(device=self.device).manual_seed(cfg.run.seed + 1)
        self.watch = NonFiniteWatch(self.device)
        self.tracker: Tracker | None = None
        self.console = Console(self.is_main, cfg.log.progress)
        # loss terms: each step adds to `window`; at a log/epoch/checkpoint boundary it is folded into both
        self.window = Meter()
        self.epoch_meter = Meter()
        self.log_meter = Meter()
        self._autocast = self.accelerator.autocast if cfg.train.precision != "no" else nullcontext
        self._checkpoint: dict[str, Any] | None = None
        self._elapsed_before = 0.0
        self._last_log = (self._start_time, 0)
        self._last_val_step = -1

    # ------------------------------------------------------------------------------------ setup
    def _make_run_dir(self, run_dir: Path | None, resume: bool) -> Path:
        """The run directory, created by the main process; its path is broadcast so all ranks agree."""
        path = [None]
        if self.is_main:
            if run_dir is None:
                run_dir = self._new_run_dir()
            if not resume and run_dir.exists() and any(run_dir.iterdir()):
                trained = ckpt.latest_checkpoint(run_dir / "checkpoints") is not None
                if trained and not self.cfg.run.overwrite:
                    raise ConfigError(
                        f"run.name: run directory {str(run_dir)!r} already holds a run; resume it with "
                        f"`vaekit train --resume {run_dir}`, choose another run.name, or set run.overwrite=true"
                    )
                if not (run_dir / "config.yaml").is_file():
                    raise ConfigError(f"run.name: {str(run_dir)!r} exists and is not a vaekit run directory")
                shutil.rmtree(run_dir)  # a run that never checkpointed (it failed early), or overwrite=true
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "samples").mkdir(exist_ok=True)
            if not resume:
                (run_dir / "config.yaml").write_text(dump_config(self.cfg))
            path = [str(run_dir)]
        if self.world > 1:
            broadcast_object_list(path)
        return Path(path[0])

    def _new_run_dir(self) -> Path:
        root = Path(self.cfg.run.dir)
        if self.cfg.run.name:
            return root / self.cfg.run.name
        base = f"{self.cfg.data.source}-{self.cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
        candidate, i = root / base, 1
        while candidate.exists():
            candidate, i = root / f"{base}-{i}", i + 1
        return candidate

    def _data_for(self, stage: Stage) -> DataBundle:
        key = json.dumps(stage.cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._data_cache:
            self._data_cache.clear()  # one stage's data in memory at a time
            try:
                data = build_data(stage.cfg.data, stage.cfg.run.seed, self.arrays)
            except DataError:
                raise
            except ValueError as err:  # a data setting that cannot work; the message names the key
                raise ConfigError(str(err)) from None
            self._data_cache[key] = self._to_device(data)
        return self._data_cache[key]

    def _to_device(self, data: DataBundle) -> DataBundle:
        """In-memory data that fit in a quarter of the free GPU memory move there once: batches are then
        gathered on the GPU, with no per-step host-to-device copy."""
        if self.device.type != "cuda":
            return data
        sources = [s for s in (data.train, data.val) if isinstance(s, ArraySource)]
        nbytes = sum(s.x.numel() * s.x.element_size() for s in sources)
        if nbytes and nbytes < 0.25 * torch.cuda.mem_get_info(self.device)[0]:
            train = data.train.to(self.device) if isinstance(data.train, ArraySource) else data.train
            val = data.val.to(self.device) if isinstance(data.val, ArraySource) else data.val
            return DataBundle(train, val, data.info)
        return data

    def _groups(self) -> dict[str, nn.Module]:
        groups = {"encoder": self.model.encoder, "decoder": self.model.decoder}
        if self.disc is not None:
            groups["discriminator"] = self.disc
        return groups

    def _resolve_module(self, path: str) -> nn.Module:
        root, _, sub = path.partition(".")
        groups = self._groups()
        if root not in groups:
            raise ConfigError(f"freeze: {path!r} names no module group; this run has {', '.join(groups)}")
        try:
            return groups[root].get_submodule(sub) if sub else groups[root]
        except AttributeError:
            raise ConfigError(f"freeze: {path!r} is not a submodule of {root}") from None

    def _apply_freezing(self, frozen: set[str]) -> None:
        self.model.requires_grad_(True)
        if self.disc is not None:
            self.disc.requires_grad_(True)
        for path in sorted(frozen):
            self._resolve_module(path).requires_grad_(False)

    def _train_mode(self) -> None:
        """Train mode, except frozen modules, whose norm statistics must not drift."""
        self.model.train()
        if self.disc is not None:
            self.disc.train()
        for path in self.state.frozen:
            self._resolve_module(path).eval()

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world == 1 or not any(p.requires_grad for p in module.parameters()):
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def _build_stage(self, stage: Stage, resuming: bool) -> StageRuntime:
        cfg = stage.cfg
        data = self._data_for(stage)
        try:  # a resolution/clip length the model cannot take fails here, naming the keys, not mid-step
            self.model.latent_shape_for(tuple(data.info.shape))
        except ValueError as err:
            raise ConfigError(f"stages.{stage.index} ({stage.name}): {err}") from None
        batch, seed = cfg.train.batch_size, cfg.run.seed
        if self.world > 1 and not cfg.train.drop_last:
            raise ConfigError(
                "train.drop_last: false is not supported with several processes (a partial last batch would "
                "split unevenly across them); keep the default true"
            )
        common = {"rank": self.rank, "world_size": self.world, "num_workers": cfg.data.num_workers}
        try:
            train_loader = BatchLoader(
                data.train, batch, shuffle=True, drop_last=cfg.train.drop_last, seed=seed, labels=False, **common
            )
            val_loader = BatchLoader(data.val, batch, shuffle=False, drop_last=False, seed=seed, **common)
        except ValueError as err:  # e.g. a batch size that the process count does not divide
            raise ConfigError(str(err)) from None
        if len(train_loader) == 0:
            raise ConfigError(
                f"train.batch_size: {batch} is larger than the training set ({data.info.n_train} samples)"
            )
        steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)
        clock = StageClock(stage.spec, steps_per_epoch)
        total = clock.limit_steps()

        if not resuming and stage.spec.init_from:
            self._init_from(stage.spec.init_from)
            if self.ema is not None:
                self.ema.copy_from(self.model)  # the average starts from the loaded weights
        if not resuming:
            self.state.frozen = sorted(stage.frozen_groups(set(self.state.frozen)))
        self._apply_freezing(set(self.state.frozen))

        gen_groups = {
            "encoder": [p for p in self.model.encoder.parameters() if p.requires_grad],
            "decoder": [p for p in self.model.decoder.parameters() if p.requires_grad],
        }
        grouped = {id(p) for ps in gen_groups.values() for p in ps}
        gen_groups["other"] = [p for p in self.model.parameters() if p.requires_grad and id(p) not in grouped]
        gen_params = [p for ps in gen_groups.values() for p in ps]
        generator = None
        if gen_params:
            if not cfg.optim.group_lr:  # one group: one fused update instead of one per group
                gen_groups = {"autoencoder": [p for ps in gen_groups.values() for p in ps]}
            opt = self._prepare_optimizer(build_optimizer(gen_groups, cfg.optim))
            generator = Update("generator", opt, Schedule(opt, cfg.optim.scheduler, total), gen_params, cfg.optim.grad_clip)

        discriminator, d_objective = None, None
        if stage.adversarial and self.disc is not None:
            d_params = [p for p in self.disc.parameters() if p.requires_grad]
            d_objective = DiscriminatorObjective(cfg.loss).to(self.device)
            if d_params:
                opt = self._prepare_optimizer(build_optimizer({"discriminator": d_params}, cfg.disc_optim))
                discriminator = Update(
                    "discriminator", opt, Schedule(opt, cfg.disc_optim.scheduler, total), d_params,
                    cfg.disc_optim.grad_clip,
                )
        if generator is None:  # only the discriminator trains: the generator update still runs its forward
            none = SchedulerConfig(name="none")
            generator = Update("generator", _NoOptimizer(), Schedule(_NoOptimizer(), none, None), [], None)

        # the objective may hold a network (perceptual) whose init draws random numbers: seed it on its own, so
        # it is the same network in a resumed run and the training RNG is untouched
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.run.seed + 104729)
            objective = VAEObjective(cfg.loss).to(self.device)
        model_ddp = self._wrap(self.model)
        disc_ddp = self._wrap(self.disc) if self.disc is not None and stage.adversarial else None
        forward_model = torch.compile(model_ddp) if cfg.train.compile else model_ddp
        return StageRuntime(
            stage=stage,
            data=data,
            train_loader=train_loader,
            val_loader=val_loader,
            objective=objective,
            d_objective=d_objective,
            generator=generator,
            discriminator=discriminator,
            clock=clock,
            model_ddp=model_ddp,
            disc_ddp=disc_ddp,
            forward_model=forward_model,
        )

    def _prepare_optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """fp16 needs Accelerate's wrapper (it runs the grad scaler); otherwise the plain optimizer is used, as
        the wrapper only adds per-step overhead."""
        if self.accelerator.scaler is None:
            return opt
        return self.accelerator.prepare_optimizer(opt, device_placement=False)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator.scaler is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)  # scales the loss for fp16

    def _init_from(self, source: str) -> None:
        path = Path(source)
        if path.is_dir():  # a run directory (its export, else its latest checkpoint) or one checkpoint
            latest = ckpt.latest_checkpoint(path / "checkpoints")
            exported = path / "model.safetensors"
            path = exported if exported.is_file() or latest is None else latest / "model.safetensors"
        if not path.is_file():
            raise ConfigError(f"init_from: {source!r} has no model.safetensors")
        ckpt.load_weights(self.model, path)
        disc_file = path.with_name("discriminator.safetensors")
        if self.disc is not None and disc_file.is_file():
            ckpt.load_weights(self.disc, disc_file)

    # -------------------------------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        """Run every stage from the current state to the end; returns the final state."""
        resumed_at = self.state.step if self._checkpoint is not None else None
        self.tracker = Tracker(
            self.run_dir,
            self.cfg.log,
            self.is_main,
            multi_stage=len(self.stages) > 1,
            config=self.cfg.model_dump(mode="json"),
            resume_step=resumed_at,
        )
        verb = f"resuming at step {resumed_at} in" if resumed_at is not None else "run directory:"
        self.console.write(f"{verb} {self.run_dir}")
        self.console.write(f"data: {self.info.description}")
        self.console.write(f"model: {self.cfg.model.arch}, {count_parameters(self.model):,} parameters")
        if self.is_main and resumed_at is None:
            text = model_summary(self.model)
            if self.disc is not None:
                text += "\n\ndiscriminator\n" + model_summary(self.disc)
            (self.run_dir / "model.txt").write_text(text + "\n")
        previous = self._catch_signals()
        try:
            for stage in self.stages[self.state.stage_index :]:
                resuming = self._checkpoint is not None and self.state.stage_index == stage.index
                if resuming and self.state.stage_done:
                    self._checkpoint = None
                    continue
                self._run_stage(stage, resuming)
            self._finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.console.close()
            self.tracker.close()
        return self.state

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT/SIGTERM (Ctrl-C, a preempted job) end the run cleanly at the next step boundary with a
        checkpoint; a second signal interrupts at once."""
        self._signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _stop_requested(self, log_step: bool) -> bool:
        """Whether a signal asked to stop; with several processes they agree on logging steps (one sync)."""
        if self.world == 1:
            return self._signal is not None
        if not log_step:
            return False
        flag = torch.tensor(float(self._signal is not None), device=self.device)
        return self.accelerator.reduce(flag, reduction="sum").item() > 0

    def _run_stage(self, stage: Stage, resuming: bool) -> None:
        rt = self._build_stage(stage, resuming)
        st = self.state
        if resuming:
            self._restore_optim(rt)
            # building the stage (a perceptual network's init, data loaders) may draw from the global RNG:
            # restore it again so the next batch sees exactly the state the checkpoint saw
            ckpt.set_rng_state(self._checkpoint["rng"]["rng"])
        else:
            st.stage_index, st.stage_name, st.stage_step, st.epoch, st.batch_in_epoch = stage.index, stage.name, 0, 0, 0
            st.stage_done, st.clock = False, {}
            self.epoch_meter.reset()
            self.log_meter.reset()
            self.window.reset()
        rt.clock.load_state_dict(st.clock)
        self._checkpoint = None
        self._train_mode()
        limit = rt.clock.limit_steps()
        accum = stage.cfg.train.grad_accum
        self.console.start_stage(self._desc(rt), total=limit, initial=st.stage_step)
        reason = None
        while reason is None:
            rt.train_loader.set_epoch(st.epoch)
            micro: list[dict[str, torch.Tensor]] = []
            n_batches = len(rt.train_loader)
            for batch in rt.train_loader.iter_from(st.batch_in_epoch):
                micro.append(batch)
                st.batch_in_epoch += 1
                if len(micro) < accum and st.batch_in_epoch < n_batches:
                    continue
                self.train_step(rt, micro)
                micro = []
                reason = self._after_step(rt, limit)
                if reason is not None:
                    break
            if reason is None:  # the epoch ended
                reason = self._after_epoch(rt)
        self._end_stage(rt, reason)

    def _desc(self, rt: StageRuntime) -> str:
        spec, n = rt.stage.spec, len(self.stages)
        epochs = spec.epochs or spec.max_epochs
        ep = f"Epoch {self.state.epoch + 1}" + (f"/{epochs}" if epochs else "")
        return f"Stage {spec.name} ({rt.stage.index + 1}/{n}) | {ep}" if n > 1 else ep

    def train_step(self, rt: StageRuntime, batches: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step of every active update over ``batches`` (the micro-batches of the accumulation)."""
        cfg, acc, step = rt.stage.cfg, self.accelerator, self.state.step
        n = len(batches)
        log_now = (step + 1) % cfg.log.every == 0
        adv_on = rt.d_objective is not None and step >= cfg.loss.adversarial.start_step
        gen, disc = rt.generator, rt.discriminator

        # generator update: forward once per micro-batch, keep detached reconstructions for the discriminator
        last_layer = self.model.last_layer if self.model.last_layer.requires_grad else None
        fakes = []
        for i, batch in enumerate(batches):
            x = batch["x"].to(self.device, non_blocking=True)
            x_in, noise = self._noise(x, cfg)
            sync = nullcontext() if i == n - 1 else acc.no_sync(rt.model_ddp)
            with sync, self._autocast():
                out = rt.forward_model(x_in, noise=noise)
                loss, terms = rt.objective(
                    x,
                    out,
                    step,
                    discriminator=self.disc if adv_on else None,
                    last_layer=last_layer,
                    detailed=log_now,
                )
            if gen.params:
                self._backward(loss / n if n > 1 else loss)
            self._record(step, terms, x.shape[0])
            if adv_on:
                fakes.append(out.recon.detach())  # raw likelihood parameters; the d-objective maps them
        lr = gen.schedule.get_lr() if log_now else 0.0  # the learning rate this step used
        gen_norm = self._optimizer_step(gen, log_now)

        # discriminator update: detached reconstructions of the same batch, its own optimizer
        d_norm = None
        if adv_on and disc is not None:
            # The generator's backward also reached the discriminator (through the raw module, outside DDP):
            # those gradients are not the discriminator's loss, so they are dropped before its own backward.
            disc.optimizer.zero_grad(set_to_none=True)
            for i, (batch, fake) in enumerate(zip(batches, fakes, strict=True)):
                real = batch["x"].to(self.device, non_blocking=True)
                sync = nullcontext() if i == n - 1 else acc.no_sync(rt.disc_ddp)
                with sync, self._autocast():
                    d_loss, d_terms = rt.d_objective(real, fake, step, rt.disc_ddp)
                self._backward(d_loss / n if n > 1 else d_loss)
                self._record(step, d_terms, real.shape[0])
            d_norm = self._optimizer_step(disc, log_now)

        if self.ema is not None:
            ema = cfg.train.ema
            if step + 1 == ema.start_step:
                self.ema.copy_from(self.model)
            elif step + 1 > ema.start_step and (step + 1) % ema.every == 0:
                self.ema.update(self.model)
        if log_now:
            extra = {"lr": torch.tensor(lr)}
            if gen_norm is not None:
                extra["grad_norm"] = gen_norm
            if disc is not None and adv_on:
                extra["disc_lr"] = torch.tensor(disc.schedule.get_lr())
                if d_norm is not None:
                    extra["disc_grad_norm"] = d_norm
            keys = tuple(extra)
            self.window.add(keys, torch.stack([v.float().to(self.device) for v in extra.values()]))

    def _noise(self, x: torch.Tensor, cfg: VaekitConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted input, latent noise) for this rank's slice, drawn for the global batch."""
        b, lo = x.shape[0], self.rank * x.shape[0]
        global_b = b * self.world  # drop_last is required with several processes: equal slices
        den, g, dev = cfg.loss.denoise, self.noise_gen, self.device
        x_in = x
        if den.noise_std > 0 or den.mask_rate > 0:
            full = (global_b, *x.shape[1:])
            gauss = torch.randn(full, generator=g, device=dev)[lo : lo + b] if den.noise_std > 0 else None
            keep = torch.rand(full, generator=g, device=dev)[lo : lo + b] >= den.mask_rate if den.mask_rate > 0 else None
            x_in = corrupt(x, den.noise_std, den.mask_rate, noise=gauss, keep=keep)
        latent = self.model.latent_shape_for(tuple(x.shape[1:]))
        noise = torch.randn((global_b, *latent), generator=g, device=dev)
        return x_in, noise if self.world == 1 else noise[lo : lo + b]

    def _record(self, step: int, terms: dict[str, torch.Tensor], count: int) -> None:
        values = torch.stack(list(terms.values()))  # the objectives return detached fp32 0-d terms
        if self.cfg.train.nan_policy == "skip" and self.accelerator.scaler is None and not bool(torch.isfinite(values).all()):
            return  # a skipped batch is counted, not averaged in (this policy syncs every step)
        self.watch.observe(step, values)
        self.window.add(tuple(terms), values, count)

    def _fold(self) -> None:
        """Move the step window's sums into the logging and epoch meters."""
        if self.window:
            self.log_meter.merge(self.window)
            self.epoch_meter.merge(self.window)
            self.window.reset()

    def _optimizer_step(self, update: Update, log_now: bool) -> torch.Tensor | None:
        """Clip (the norm is only computed when clipping or logging), step, zero, advance the schedule."""
        norm = None
        if update.params and (update.grad_clip is not None or log_now):
            self.accelerator.unscale_gradients(optimizer=update.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(update.params, update.grad_clip or math.inf)
        # under fp16 the grad scaler already skips steps with non-finite gradients (and must see every step)
        skip_policy = self.cfg.train.nan_policy == "skip" and self.accelerator.scaler is None
        if skip_policy and update.params and not self._grads_finite(update):
            self.state.skipped_batches += 1  # documented: this policy syncs with the host every step
            update.optimizer.zero_grad(set_to_none=True)
            return norm
        update.optimizer.step()
        update.optimizer.zero_grad(set_to_none=True)
        if not getattr(update.optimizer, "step_was_skipped", False):  # fp16 overflow: the step did not happen
            update.schedule.step()
        return norm

    @staticmethod
    def _grads_finite(update: Update) -> bool:
        grads = [p.grad for p in update.params if p.grad is not None]
        return bool(torch.isfinite(torch.stack([g.float().norm() for g in grads])).all()) if grads else True

    # ------------------------------------------------------------------------- periodic blocks
    def _after_step(self, rt: StageRuntime, limit: int | None) -> str | None:
        """log → validate → checkpoint; returns why the stage ends, if it does."""
        st, cfg = self.state, rt.stage.cfg
        st.step += 1
        st.stage_step += 1
        reason = None
        if limit is not None and st.stage_step >= limit:
            reason = "length"
        logged = None
        if st.step % cfg.log.every == 0:
            logged = self._log_train(rt)
            for name, value in logged.items():
                rt.clock.observe(f"train/{name}", value)
            self.console.update(1, {k: logged[k] for k in ("loss", "recon", "kl") if k in logged})
        else:
            self.console.update(1)
        if cfg.train.val_every is not None and st.step % cfg.train.val_every == 0:
            self._validate(rt)
        if reason is None:
            done = rt.clock.metric_done()
            if done is not None:
                reason = done
        if reason is None and cfg.train.ckpt_every is not None and st.step % cfg.train.ckpt_every == 0:
            self._save(rt)
        if reason is None and self._stop_requested(st.step % cfg.log.every == 0):
            self._save(rt)
            name = signal.Signals(self._signal).name if self._signal else "a signal"
            raise TrainingInterrupted(
                f"{name}: stopped at step {st.step} with a checkpoint; resume with `vaekit train --resume {self.run_dir}`"
            )
        return reason

    def _after_epoch(self, rt: StageRuntime) -> str | None:
        st = self.state
        self._epoch_record(rt)
        if rt.stage.cfg.train.val_every is None:
            self._validate(rt)
        st.epoch += 1
        st.batch_in_epoch = 0
        reason = rt.clock.metric_done()
        spec = rt.stage.spec
        for epochs in (spec.epochs, spec.max_epochs):
            if reason is None and epochs is not None and st.epoch >= epochs:
                reason = "length"
        if reason is None:
            self._save(rt)
            self.console.set_description(self._desc(rt))
        return reason

    def _end_stage(self, rt: StageRuntime, reason: str) -> None:
        st, spec = self.state, rt.stage.spec
        if reason == "length" and (spec.metric is not None or spec.plateau_window is not None):
            if spec.epochs is None and spec.steps is None:
                self.console.write(
                    f"warning: stage {spec.name!r} hit its safety limit before {spec.metric!r} met its transition"
                )
        elif reason != "length":
            self.console.write(f"stage {spec.name!r} ends at step {st.step}: {reason}")
        self._fold()
        if self.epoch_meter:
            self._epoch_record(rt)
        if self._last_val_step != st.step:
            self._validate(rt)
        st.stage_done = True
        self._save(rt)
        self.console.close()

    def _log_train(self, rt: StageRuntime) -> dict[str, float]:
        self._check_finite()
        now = time.time()
        self._fold()
        means = self.log_meter.means(self.accelerator.reduce)
        self.log_meter.reset()
        last = self._last_log
        st = self.state
        means["samples_per_sec"] = (
            (st.step - last[1]) * rt.stage.cfg.train.batch_size * rt.stage.cfg.train.grad_accum / max(now - last[0], 1e-9)
        )
        self._last_log = (now, st.step)
        self.tracker.log({**self._where(rt, "train"), **means})
        return means

    def _epoch_record(self, rt: StageRuntime) -> None:
        self._fold()
        means = self.epoch_meter.means(self.accelerator.reduce)
        self.epoch_meter.reset()
        record = {**self._where(rt, "train"), "kind": "epoch", **means}
        self.state.history.append(record)

    def _where(self, rt: StageRuntime, split: str) -> dict[str, Any]:
        st = self.state
        return {"step": st.step, "epoch": st.epoch, "stage": rt.stage.name, "stage_index": rt.stage.index, "split": split}

    def _check_finite(self) -> None:
        """Raise (on every process) if any process saw a non-finite loss term. One host sync."""
        first = self.watch.first_bad()
        flag = (first >= 0).float()
        if self.world > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0 and self.cfg.train.nan_policy == "stop":
            step = int(first.item())
            recent = {**self.log_meter.means(), **self.window.means()}  # NaN/Inf persist in these sums
            names = sorted(k for k, v in recent.items() if not math.isfinite(v)) or ["(on another process)"]
            step = step if step >= 0 else self.state.step - 1
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            kept = f"; the last good checkpoint is {last}" if last else "; no checkpoint had been written yet"
            raise NonFiniteLossError(f"non-finite loss at step {step + 1} in term(s) {', '.join(names)}{kept}")

    def eval_model(self) -> nn.Module:
        """The EMA weights once the average has started, else the live model."""
        if self.ema is not None and self.state.step >= self.cfg.train.ema.start_step:
            return self.ema.shadow
        return self.model

    def _check_weights_finite(self) -> None:
        """A finite loss can still come with an overflowing gradient step: check the weights too (one sync)."""
        modules = [m for m in (self.model, self.disc) if m is not None]
        ok = torch.stack([torch.isfinite(p).all() for m in modules for p in m.parameters()]).all()
        if self.world > 1:
            ok = self.accelerator.reduce((~ok).float(), reduction="sum") == 0
        if not bool(ok):
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            kept = f"; the last good checkpoint is {last}" if last else "; no checkpoint had been written yet"
            raise NonFiniteLossError(f"non-finite weights after step {self.state.step}{kept}")

    @torch.no_grad()
    def _validate(self, rt: StageRuntime) -> dict[str, float]:
        """Loss terms over the validation set (clean inputs, EMA weights when enabled), reduced over processes;
        active units; sample grids. Uses its own seeded RNG so training randomness is untouched."""
        cfg = rt.stage.cfg
        model = self.eval_model()
        model.eval()
        meter = Meter()
        latent = self.model.latent_shape_for(tuple(rt.data.info.shape))
        channels = latent[0]
        # per latent element, summed over samples: posterior mean, its square, KL, count
        mom = torch.zeros(4, math.prod(latent), device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        # Validation noise: its own generator, drawn for the global batch like training's, so validation does
        # not touch the training RNG and N processes report what one would.
        gen = torch.Generator(device=self.device).manual_seed(cfg.run.seed + 7919)
        n_val, batch_size = len(rt.data.val), cfg.train.batch_size
        with torch.random.fork_rng(devices=devices):
            for i, batch in enumerate(rt.val_loader.iter_from(0)):
                if cfg.train.val_batches is not None and i >= cfg.train.val_batches:
                    break
                x = batch["x"].to(self.device)
                global_b = min(batch_size, n_val - i * batch_size)
                sizes = [len(c) for c in torch.tensor_split(torch.arange(global_b), self.world)]
                lo = sum(sizes[: self.rank])
                noise = torch.randn((global_b, *latent), generator=gen, device=self.device)[lo : lo + x.shape[0]]
                if x.shape[0] == 0:  # the last batch split over processes can leave one empty
                    continue
                with self._autocast():
                    out = model(x, noise=noise)
                    _, terms = rt.objective(x, out, self.state.step)
                meter.add(tuple(terms), torch.stack([t.float() for t in terms.values()]), x.shape[0])
                m = out.mean.float().flatten(1)  # (B, C·P)
                kl = kl_per_element(out.mean, out.logvar).flatten(1)
                mom += torch.stack([m.sum(0), (m * m).sum(0), kl.sum(0), torch.full_like(m[0], m.shape[0])])
        means = meter.means(self.accelerator.reduce)
        mom = self.accelerator.reduce(mom, reduction="sum") if self.world > 1 else mom
        if mom[3, 0] > 0:
            # a latent dimension is a channel (spatial latents: averaged over positions), as in objectives.kl
            n = mom[3]
            var = (mom[1] / n - (mom[0] / n) ** 2).view(channels, -1).mean(1)
            kl_dim = (mom[2] / n).view(channels, -1).mean(1) * (mom.shape[1] // channels)  # nats per dim
            stats = torch.stack([(var > 0.01).sum().float(), kl_dim.mean(), kl_dim.max()]).tolist()
            means.update(zip(("active_units", "kl_dim_mean", "kl_dim_max"), stats, strict=True))
        record = {**self._where(rt, "val"), **means}
        self._last_val_step = self.state.step
        self.tracker.log(record)
        self.state.history.append(record)
        for name, value in means.items():
            rt.clock.observe(f"val/{name}", value)
        if "loss" in means:
            rt.generator.schedule.step_metric(means["loss"])
            if rt.discriminator is not None:
                rt.discriminator.schedule.step_metric(means["loss"])
        if self.is_main:
            shown = " ".join(f"{k}={v:.4g}" for k, v in means.items() if k in ("loss", "recon", "kl", "mse", "active_units"))
            self.console.write(f"{self._desc(rt)} | step {self.state.step} | val {shown}")
            if cfg.log.samples:
                self._samples(rt, model)
        self._train_mode()
        return means

    def _samples(self, rt: StageRuntime, model: nn.Module) -> None:
        cfg, st = rt.stage.cfg, self.state
        n = min(cfg.log.num_samples, len(rt.data.val))
        if n == 0:
            return
        x = rt.data.val.get_batch(torch.arange(n))["x"] if hasattr(rt.data.val, "get_batch") else torch.stack(
            [rt.data.val[i]["x"] for i in range(n)]
        )
        x = x.to(self.device)
        kind = cfg.loss.recon
        with self._autocast():
            recon = likelihood_mean(kind, model(x, sample_posterior=False).recon).float()
            gen = torch.Generator(device=self.device).manual_seed(cfg.run.seed)
            prior = likelihood_mean(kind, model.sample(n, generator=gen, input_shape=tuple(x.shape[1:]))).float()
        modality = rt.data.info.modality
        stem = f"{rt.stage.name}_{rt.stage.index:03d}_{st.epoch:03d}_{st.step:06d}"
        from torchvision.utils import save_image

        for kind_name, img in (("recon", recon_grid(x, recon, modality)), ("prior", sample_grid(prior, modality))):
            save_image(img, self.run_dir / "samples" / f"{stem}-{kind_name}.png")
            self.tracker.image(f"samples/{kind_name}", img, st.step)

    # ------------------------------------------------------------------------------ checkpoints
    def _save(self, rt: StageRuntime) -> None:
        """Checkpoint the exact position (after the blocks of this step ran). Refuses if a loss or a weight went
        non-finite, so the checkpoint on disk is always a good one."""
        self._check_finite()
        self._check_weights_finite()
        st = self.state
        st.clock = rt.clock.state_dict()
        self._fold()
        # the meters hold this process's partial sums: they are saved per process, beside its RNG state
        st.elapsed = self._elapsed()
        local = {
            "rng": ckpt.rng_state(),
            "epoch_meter": self.epoch_meter.state_dict(),
            "log_meter": self.log_meter.state_dict(),
        }
        rngs = gather_object([local]) if self.world > 1 else [local]
        if self.is_main:
            modules = {"model": self.model}
            if self.disc is not None:
                modules["discriminator"] = self.disc
            if self.ema is not None:
                modules["ema"] = self.ema.shadow
            optim = {
                "generator": rt.generator.optimizer.state_dict(),
                "generator_schedule": rt.generator.schedule.state_dict(),
                "noise_generator": self.noise_gen.get_state(),
            }
            if rt.discriminator is not None:
                optim["discriminator"] = rt.discriminator.optimizer.state_dict()
                optim["discriminator_schedule"] = rt.discriminator.schedule.state_dict()
            if self.accelerator.scaler is not None:
                optim["scaler"] = self.accelerator.scaler.state_dict()
            ckpt.save_checkpoint(
                self.ckpt_dir, st.step, modules, optim, st.to_dict(), rngs, self.cfg.train.keep_last
            )
            self.tracker.flush()
        self.accelerator.wait_for_everyone()

    def load(self, path: Path) -> None:
        """Restore weights, RNG and position from a checkpoint directory (optimizers follow at stage build)."""
        data = ckpt.load_checkpoint(path, self.rank)
        self.state = TrainState.from_dict(data["state"])
        ckpt.load_weights(self.model, data["weights"]["model"])
        if self.disc is not None and "discriminator" in data["weights"]:
            ckpt.load_weights(self.disc, data["weights"]["discriminator"])
        if self.ema is not None and "ema" in data["weights"]:
            ckpt.load_weights(self.ema.shadow, data["weights"]["ema"])
        self.noise_gen.set_state(data["optim"]["noise_generator"])
        if "scaler" in data["optim"] and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(data["optim"]["scaler"])
        ckpt.set_rng_state(data["rng"]["rng"])
        self.epoch_meter.load_state_dict(data["rng"]["epoch_meter"], self.device)
        self.log_meter.load_state_dict(data["rng"]["log_meter"], self.device)
        self._checkpoint = data
        self._elapsed_before = self.state.elapsed
        self._start_time = time.time()
        self._last_log = (self._start_time, self.state.step)

    def _restore_optim(self, rt: StageRuntime) -> None:
        optim = self._checkpoint["optim"] if self._checkpoint else {}
        if "generator" in optim and rt.generator.params:
            rt.generator.optimizer.load_state_dict(optim["generator"])
            rt.generator.schedule.load_state_dict(optim["generator_schedule"])
        if rt.discriminator is not None and "discriminator" in optim:
            rt.discriminator.optimizer.load_state_dict(optim["discriminator"])
            rt.discriminator.schedule.load_state_dict(optim["discriminator_schedule"])

    # ------------------------------------------------------------------------------------- end
    def _elapsed(self) -> float:
        return self._elapsed_before + time.time() - self._start_time

    def _finish(self) -> None:
        """Export weights (EMA when enabled), write summary.json and curves.png."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        export = self.eval_model()
        meta = {"config": json.dumps(export.config), "vaekit_config": json.dumps(self.cfg.model_dump(mode="json"))}
        ckpt.save_weights(export, self.run_dir / "model.safetensors", metadata=meta)
        (self.run_dir / "model_config.json").write_text(json.dumps(export.config, indent=1))
        last_val = next((r for r in reversed(self.state.history) if r["split"] == "val"), {})
        last_train = next((r for r in reversed(self.state.history) if r["split"] == "train"), {})
        summary = {
            "run_dir": str(self.run_dir),
            "steps": self.state.step,
            "stages": [s.name for s in self.stages],
            "wall_time_sec": round(self._elapsed(), 2),
            "parameters": count_parameters(self.model),
            "discriminator_parameters": count_parameters(self.disc) if self.disc is not None else 0,
            "final_train": _metrics_only(last_train),
            "final_val": _metrics_only(last_val),
            "skipped_batches": self.state.skipped_batches,
            "data": self.info.description,
            "checkpoint": str(ckpt.latest_checkpoint(self.ckpt_dir)),
            "model": str(self.run_dir / "model.safetensors"),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if self.cfg.log.plots:
            plot_curves(self.tracker.records or _read_jsonl(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png")


class _NoOptimizer(torch.optim.Optimizer):
    """Stands in when every autoencoder group is frozen (only the discriminator trains)."""

    def __init__(self) -> None:
        self.param_groups = [{"lr": 0.0, "params": []}]
        self.state = {}

    def step(self, closure=None) -> None:  # noqa: ANN001
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}


def _metrics_only(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, float)}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
