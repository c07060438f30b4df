"""The training loop: steps, validation, checkpoints at their cadence. Everything around it lives
elsewhere: the run folder (run_folder.py), the tokenizer (prepared with the data,
prepare/tokenizer.py), the model (models), parallelism (parallel.py), what a checkpoint holds
(checkpoint.py), logging (run_log.py) and what happens after training (post_train.py)."""

from __future__ import annotations

import contextlib
import math
import random
import time

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from convirt_fast.checkpoint import Checkpointer, ModelState, OptimizerState, RNGState, TrainProgress
from convirt_fast.config import Config
from convirt_fast.data.manifest import load_manifest
from convirt_fast.data.pipeline import build_loaders
from convirt_fast.distributed import init_distributed, mean_across_ranks
from convirt_fast.kernels.convirt_loss import resolve_backend
from convirt_fast.loss import ConVIRTLoss
from convirt_fast.models import build_model
from convirt_fast.parallel import average_outside_gradients, gradient_sync, nonfinite_gradients, parallelize
from convirt_fast.prepare.source import data_path
from convirt_fast.run_folder import run_dir, run_tokenizer
from convirt_fast.run_log import ProgressBar, RunLog
from convirt_fast.schedule import LRSchedule, build_optimizer
from convirt_fast.step_window import NonFiniteLoss, StepWindow
from convirt_fast.throughput import peak_flops, step_rates


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg, self.info = cfg, (info := init_distributed())
        self.device = info.device
        if cfg.data.batch_size * info.world_size < 2:  # config.py checks the rest; this needs the ranks
            raise ValueError(f"data.batch_size={cfg.data.batch_size} on {info.world_size} rank(s) with loss.gather: "
                             f"a global batch of one pair has no negatives; use data.batch_size >= 2 or more ranks")
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        random.seed(cfg.train.seed + info.rank)
        self.run_dir = run_dir(cfg, info.is_main)
        self.manifest = load_manifest(data_path(cfg.data, cfg.train.seed, progress=info.is_main and cfg.train.progress))
        self.tokenizer = run_tokenizer(self.run_dir, cfg.model, self.manifest, info.is_main)
        self.model, _ = build_model(cfg.model, tokenizer=self.tokenizer)
        self.train_model, self.parallel, self.autocast_dtype = parallelize(self.model, cfg.train, info)
        self.loss_fn = ConVIRTLoss(cfg.loss.tau, cfg.loss.lam, cfg.loss.learnable_tau, cfg.loss.gather,
                                   backend=cfg.loss.backend).to(self.device)
        self.optimizer = build_optimizer([p for p in self.train_model.parameters() if p.requires_grad]
                                         + list(self.loss_fn.parameters()), cfg.optim)
        self.schedule = LRSchedule.from_config(cfg.optim, cfg.train.max_steps)
        self.loader, self.val_loader = build_loaders(self.manifest, self.tokenizer, cfg.data, seed=cfg.train.seed,
                                                     device=self.device, rank=info.rank, world_size=info.world_size)
        self.progress = TrainProgress()
        self.checkpointer = Checkpointer(
            self.run_dir / "checkpoints", is_main=info.is_main, model=ModelState(self.train_model),
            optimizer=OptimizerState(self.train_model, self.optimizer), loss=self.loss_fn, schedule=self.schedule,
            loader=self.loader, rng=RNGState(info.rank), progress=self.progress)
        self.window = StepWindow()
        self.loss_input_dtype: torch.dtype | None = None  # seen by _loss, logged once
        self._halted = torch.zeros((), device=self.device)  # on_nonfinite=stop: set from a bad step on
        self.flops_per_step: int | None = None  # counted on this process's first step
        self.peak_flops = peak_flops(self.device, self.autocast_dtype)
        resumed = self.checkpointer.resume(cfg.train.resume, cfg.to_dict()["model"], self.model.state_dict(),
                                           world_size=info.world_size)
        self.log = RunLog(self.run_dir, enabled=info.is_main, tensorboard=cfg.train.tensorboard,
                          resume_step=self.step if resumed else None)

    @property
    def step(self) -> int:
        return self.progress.step

    def save(self, *, best: bool = False) -> None:
        self.checkpointer.save(self.step, self.cfg.to_dict(), best=best)

    # -- the loop ------------------------------------------------------------------------------

    def _loss(self, batch) -> torch.Tensor:
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            out = self.train_model(batch["images"], batch["input_ids"], batch["attention_mask"])
        # Under bf16 autocast the projections reach the loss in bf16: its GEMMs run on bf16 tensor
        # cores, and it normalises and accumulates in fp32 inside (no .float() copy here).
        self.loss_input_dtype = out["image"].dtype  # metadata: reading it costs no device sync
        return self.loss_fn(out["image"], out["text"])

    def batches(self):
        """Micro-batches forever: epochs roll over; the loader keeps its position for resume."""
        while True:
            yield from self.loader

    def train_step(self, micro_batches) -> None:
        """One optimizer step over `grad_accum` micro-batches, without one host read: the loss and
        a non-finite flag stay on the device (self.window, read by `flush`). The flag (a non-finite
        loss or gradient norm on any rank) goes to the fused AdamW as `found_inf`, which then skips
        the update on the device; with on_nonfinite=stop it stays set until `flush` raises, so no
        later step changes the weights; with skip the steps are counted there."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(self.step)
        counter = FlopCounterMode(display=False) if self.flops_per_step is None else contextlib.nullcontext()
        loss_sum = torch.zeros((), device=self.device)
        with counter:
            for i, batch in enumerate(micro_batches):
                with gradient_sync(self.train_model, i == len(micro_batches) - 1):
                    loss = self._loss(batch)
                    (loss / len(micro_batches)).backward()
                loss_sum += loss.detach()
        if self.flops_per_step is None:  # once per process: the loss path and the FLOPs counted
            self.flops_per_step = counter.get_total_flops()
            self.log.setup(self.step, loss_input_dtype=str(self.loss_input_dtype).replace("torch.", ""),
                           loss_backend=resolve_backend(self.loss_fn.backend, self.device),
                           flops_per_step=self.flops_per_step, peak_flops=self.peak_flops,
                           show=self.info.is_main and self.cfg.train.progress)
        bad = (~torch.isfinite(loss_sum)).float()
        if self.info.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # a device-side collective: no host wait
            average_outside_gradients(self.loss_fn.parameters(), self.info.world_size)
        bad = torch.maximum(bad, nonfinite_gradients(self.optimizer, self.cfg.optim.grad_clip))
        if self.cfg.train.on_nonfinite == "stop":
            bad = self._halted = torch.maximum(bad, self._halted)
        self.optimizer.found_inf = bad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.record(self.step, loss_sum / len(micro_batches), bad, [b["rows"] for b in micro_batches])

    def flush(self, window_start: float) -> dict | None:
        """Read the steps since the last flush (one host read: it waits for their GPU work),
        apply train.on_nonfinite and log them, timed from `window_start` (time.perf_counter) to
        the end of the read. Returns the record (None when there was nothing to read)."""
        if not len(self.window):
            return None
        tau = self.loss_fn.tau
        w = self.window.read(extra=[tau] if isinstance(tau, torch.Tensor) else [])
        seconds = time.perf_counter() - window_start
        self.progress.skipped_nonfinite += w.steps - w.finite_steps
        if w.first_nonfinite is not None and self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLoss.at(w.first_nonfinite, self.info.rank, self.manifest.studies)
        record = {"loss": w.mean_loss, "lr": self.schedule.lr(self.step - 1), **self._rates(w.steps, seconds),
                  "step_ms": round(1000 * seconds / w.steps, 2), "tau": w.extra[0] if w.extra else tau,
                  "epoch": self.loader.epoch, "skipped_nonfinite": self.progress.skipped_nonfinite}
        if w.finite_steps:
            self.log.log(self.step, "train", **record)
        return record

    def _rates(self, steps: int, seconds: float) -> dict:
        pairs = steps * self.cfg.data.batch_size * self.info.world_size * self.cfg.train.grad_accum
        return step_rates(pairs, steps, seconds, self.flops_per_step, self.peak_flops)

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_loader is None:
            return None
        self.val_loader.set_epoch(0)
        self.train_model.eval()
        total, count = torch.zeros((), device=self.device), 0
        for batch in self.val_loader:
            total += self._loss(batch).float()
            count += 1
        self.train_model.train()
        return mean_across_ranks(total.item() / count, self.device)

    def _validate_and_save(self, bar: ProgressBar) -> bool:
        """Validate, record the loss (the schedule keeps the best), write last.pt (and best.pt on
        a new best). True when max_validations is reached."""
        improved, val = False, self.validate()
        if val is not None:
            self.progress.validations += 1
            improved = self.schedule.validation(val)
            self.log.log(self.step, "validation", loss=val, best=self.schedule.best, lr_scale=self.schedule.scale)
            bar.write(f"step {self.step}: validation loss {val:.4f} (best {self.schedule.best:.4f})")
        self.save(best=improved)
        limit = self.cfg.train.max_validations
        return bool(limit) and self.progress.validations >= limit

    def fit(self) -> dict:
        cfg, info = self.cfg, self.info
        bar = ProgressBar(cfg.train.max_steps, self.step, enabled=info.is_main and cfg.train.progress)
        batches = self.batches()
        window_start, start_step, started = time.perf_counter(), self.step, time.perf_counter()
        stopped_by = "max_steps"
        while self.step < cfg.train.max_steps:
            first = self.flops_per_step is None  # this process's first step: compilation, autotuning,
            self.train_step([next(batches) for _ in range(cfg.train.grad_accum)])  # cuDNN, the FLOP count:
            self.progress.step += 1                                                # logged on its own
            bar.update()
            validating = self.step % cfg.train.val_every == 0
            saving = validating or self.step % cfg.train.checkpoint_every == 0
            if first or self.step % cfg.train.log_every == 0 or saving:
                bar.show(self.flush(window_start))  # before a checkpoint too: it must hold exact counts
                window_start = time.perf_counter()
            if validating and self._validate_and_save(bar):
                stopped_by = "max_validations"
                break
            if saving:
                if not validating:
                    self.save()
                window_start = time.perf_counter()  # validation and checkpoint time is not step time
        bar.show(self.flush(window_start))
        bar.close()
        self.log.close()
        if self.step % cfg.train.val_every and self.step % cfg.train.checkpoint_every:
            self.save()
        seconds = time.perf_counter() - started
        return {"steps": self.step, "steps_this_run": self.step - start_step, "seconds": round(seconds, 1),
                **self._rates(self.step - start_step, seconds),
                "best_validation_loss": None if math.isinf(self.schedule.best) else round(self.schedule.best, 4),
                "skipped_nonfinite": self.progress.skipped_nonfinite,
                "replaced_images": sum(self.loader.replaced.values()),
                "decode_fallbacks": sum(self.loader.decode_fallbacks.values()),
                "stopped_by": stopped_by, "world_size": info.world_size, "parallel": self.parallel}

