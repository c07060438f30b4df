"""The Trainer owns the loop: data, model, parallelism, optimizer, schedule, validation,
checkpoints, logging, and the final evaluation and export. `train.py` only builds the config."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from convirt_fast.checkpoint import Checkpointer, CheckpointError, check_compatible, load_checkpoint
from convirt_fast.config import Config
from convirt_fast.data.source import data_path
from convirt_fast.distributed import all_gather_objects, barrier, broadcast_object, init_distributed, mean_across_ranks
from convirt_fast.loss import ConVIRTLoss
from convirt_fast.parallel import gradient_sync, resolve_parallel, unwrap, wrap_model
from convirt_fast.run_log import RunLog, plot_losses
from convirt_fast.schedule import LRSchedule
from convirt_fast.step_window import StepWindow
from convirt_fast.throughput import peak_flops, utilisation


class NonFiniteLoss(RuntimeError):
    """A NaN or inf loss with train.on_nonfinite=stop; names the step and the studies."""


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _default_run_name(preset: str) -> str:
    """<preset>-<date>-<time>, the same in every restart attempt of one torchrun launch
    (`--max-restarts`), so that train.resume=auto finds the last attempt's checkpoint: under
    torchrun the time is when the torchrun process (this one's parent) started. A rendezvous id
    the user chose (`--rdzv_id`, the same on every node) names the run instead, <preset>-<id>, so a
    relaunch with that id continues it; torchrun's own ids (a fresh uuid per launch, or "none")
    do not."""
    import os
    import uuid

    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:  # not under torchrun
        return f"{preset}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        uuid.UUID(run_id)
        chosen = False  # drawn by torchrun (--standalone, or no --rdzv_id on one node)
    except ValueError:
        chosen = run_id != "none"
    if chosen:
        return f"{preset}-{run_id}"
    try:  # /proc/<pid>/stat field 22: start time in clock ticks after boot (/proc/stat btime)
        ticks = int(Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        started = datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        started = datetime.now()
    return f"{preset}-{started:%Y%m%d-%H%M%S}"


class Trainer:
    def __init__(self, cfg: Config):
        from convirt_fast.data.loader import ConVIRTLoader
        from convirt_fast.data.manifest import load_manifest
        from convirt_fast.models import build_model

        self.cfg = cfg
        self.info = info = init_distributed()
        self.device = info.device
        if cfg.data.batch_size * info.world_size < 2:  # config.py checks the rest; this needs the ranks
            raise ValueError(f"data.batch_size={cfg.data.batch_size} on {info.world_size} rank(s) with loss.gather: "
                             f"a global batch of one pair has no negatives; use data.batch_size >= 2 or more ranks")
        if self.device.type == "cuda":
            # Fixed input sizes (every batch is batch_size x output_size^2): let cuDNN pick the
            # fastest convolution algorithms once, as every competent CNN training script does.
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        random.seed(cfg.train.seed + info.rank)
        self.run_dir = self._run_dir()
        self.manifest = load_manifest(data_path(cfg.data, cfg.train.seed, progress=info.is_main and cfg.train.progress))
        self.tokenizer = self._tokenizer()
        self.model, _ = build_model(cfg.model, tokenizer=self.tokenizer)
        self.model.to(self.device)
        use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.parallel = resolve_parallel(cfg.train.parallel, info)
        self.train_model = wrap_model(self.model, self.parallel, info, self.autocast_dtype)
        if cfg.train.compile:
            self.model.image_encoder.compile()
            self.model.text_encoder.compile()
        self.loss_fn = ConVIRTLoss(cfg.loss.tau, cfg.loss.lam, cfg.loss.learnable_tau, cfg.loss.gather,
                                   backend=cfg.loss.backend).to(self.device)
        params = [p for p in self.train_model.parameters() if p.requires_grad] + list(self.loss_fn.parameters())
        # Fused AdamW (CUDA and CPU): one kernel for every parameter, and it takes `found_inf`, a
        # device flag that skips the update without the host ever reading it (train_step).
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                           weight_decay=cfg.optim.weight_decay, fused=True)
        self.schedule = LRSchedule(cfg.optim.lr, cfg.optim.schedule, cfg.train.max_steps, cfg.optim.warmup_steps,
                                   cfg.optim.plateau_patience, cfg.optim.plateau_factor)
        common = dict(batch_size=cfg.data.batch_size, augment=cfg.data.augment, backend=cfg.data.backend,
                      device=self.device, num_workers=cfg.data.num_workers, seed=cfg.train.seed, rank=info.rank,
                      world_size=info.world_size, max_length=cfg.data.max_length, decode=cfg.data.decode)
        self.loader = ConVIRTLoader(self.manifest, self.tokenizer, split="train", **common)
        self.val_loader = self._validation_loader(ConVIRTLoader, common)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints")
        self.step = 0
        self.validations = 0
        self.skipped_nonfinite = 0
        self.best_val = math.inf
        self.window = StepWindow()
        self.loss_input_dtype: torch.dtype | None = None  # seen by _loss, logged once
        self._halted = torch.zeros((), device=self.device)  # on_nonfinite=stop: set from a bad step on
        self.flops_per_step: int | None = None  # counted on this process's first step
        self.peak_flops = peak_flops(self.device, self.autocast_dtype)
        resumed = self._maybe_resume()
        self.log = RunLog(self.run_dir, enabled=info.is_main, tensorboard=cfg.train.tensorboard,
                          resume_step=self.step if resumed else None)

    # -- setup ---------------------------------------------------------------------------------

    def _run_dir(self) -> Path:
        cfg = self.cfg
        name = cfg.train.run_name or broadcast_object(_default_run_name(cfg.preset))
        run_dir = Path(cfg.train.out_dir) / name
        if self.info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        barrier()
        return run_dir

    def _tokenizer(self):
        """A local tokenizer, or one trained on the training sentences (by rank 0, saved in the run)."""
        from transformers import AutoTokenizer

        from convirt_fast.text import SentenceIndex
        from convirt_fast.text.tokenizer import load_tokenizer, train_wordpiece

        if self.cfg.model.text_encoder:
            return load_tokenizer(self.cfg.model.text_encoder)
        folder = self.run_dir / "tokenizer"
        if self.info.is_main and not (folder / "tokenizer.json").exists():
            index = SentenceIndex.load(self.manifest.sentence_index_path)
            train_rows = self.manifest.split_indices("train")
            corpus = (s for r in train_rows for s in index.sentences(r))
            train_wordpiece(corpus, vocab_size=self.cfg.model.vocab_size).save_pretrained(str(folder))
        barrier()
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def _validation_loader(self, loader_cls, common):
        """Held-out pairs with the evaluation transform and a fixed sentence draw (epoch 0), so
        every validation sees the same batches; full batches only (the loss depends on N)."""
        if len(self.manifest.split_indices("validate")) < self.cfg.data.batch_size * self.info.world_size:
            return None
        return loader_cls(self.manifest, self.tokenizer, split="validate", train=False, drop_last=True, **common)

    # -- checkpoints ---------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.train_model, self.optimizer, options=options)

    def save(self, *, best: bool = False) -> None:
        model_state, optim_state = self._full_state()  # collective
        rng = all_gather_objects(_rng_state())
        if self.info.is_main:
            self.checkpointer.save({
                "step": self.step, "config": self.cfg.to_dict(), "model": model_state, "optimizer": optim_state,
                "loss": self.loss_fn.state_dict(), "schedule": self.schedule.state_dict(),
                "loader": self.loader.state_dict(), "rng": rng, "validations": self.validations,
                "best_val": self.best_val, "skipped_nonfinite": self.skipped_nonfinite,
            }, best=best)
        barrier()

    def _maybe_resume(self) -> bool:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        resume = self.cfg.train.resume
        if resume is None:
            return False
        path = self.checkpointer.last if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            return False
        state = load_checkpoint(path)
        check_compatible(path, state["config"]["model"], self.cfg.to_dict()["model"],
                         saved_state=state["model"], current_state=self.model.state_dict())
        if state["loader"].get("world_size") != self.info.world_size:
            raise CheckpointError(f"{path}: saved with {state['loader'].get('world_size')} ranks, resuming with "
                                  f"{self.info.world_size}: exact resume needs the same number of ranks")
        try:
            set_state_dict(self.train_model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"{path}: does not fit this model/optimizer: {error}") from None
        self.loss_fn.load_state_dict(state["loss"])
        self.schedule.load_state_dict(state["schedule"])
        self.loader.load_state_dict(state["loader"])
        self.step, self.validations = int(state["step"]), int(state["validations"])
        self.best_val, self.skipped_nonfinite = float(state["best_val"]), int(state["skipped_nonfinite"])
        _set_rng_state(state["rng"][self.info.rank])
        if self.info.is_main:
            print(f"resumed from {path} at step {self.step}")
        return True

    # -- the loop ------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _loss(self, batch) -> torch.Tensor:
        with self._autocast():
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
        """One optimizer step over `grad_accum` micro-batches, without one host read.

        The loss and a non-finite flag stay on the device (self.window; read every log_every steps
        by `flush`). The flag is set by a non-finite loss or gradient norm on any rank (all-reduced,
        so every rank agrees) and handed to the fused AdamW as `found_inf`: the update is then
        skipped on the device, parameters and optimizer state left as they were. With
        train.on_nonfinite=stop the flag stays set until the next flush raises (naming the step and
        its studies), so no later step changes the weights; with skip the steps are counted there."""
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
        if self.flops_per_step is None:
            self.flops_per_step = counter.get_total_flops()
            self._log_loss_path()
        bad = (~torch.isfinite(loss_sum)).float()
        if self.info.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # a device-side collective: no host wait
            for p in self.loss_fn.parameters():  # the temperature lives outside DDP/FSDP
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.info.world_size
        bad = torch.maximum(bad, self._nonfinite_gradients())
        if self.cfg.train.on_nonfinite == "stop":
            bad = self._halted = torch.maximum(bad, self._halted)
        self.optimizer.found_inf = bad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.record(self.step, loss_sum / len(micro_batches), bad, [b["rows"] for b in micro_batches])

    def _nonfinite_gradients(self) -> torch.Tensor:
        """1.0 when some gradient is inf/nan (a finite loss can still overflow in the backward),
        from the global gradient norm, which optim.grad_clip clips by; the same on every rank."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.cfg.optim.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(norm, "full_tensor"):  # FSDP2: a norm over sharded gradients (an all-reduce)
            norm = norm.full_tensor()
        return (~torch.isfinite(norm)).float()

    def _log_loss_path(self) -> None:
        """Once per process: the dtype the projections reach the loss in, and the loss backend."""
        from convirt_fast.kernels.convirt_loss import resolve_backend

        record = {"loss_input_dtype": str(self.loss_input_dtype).replace("torch.", ""),
                  "loss_backend": resolve_backend(self.loss_fn.backend, self.device),
                  "flops_per_step": self.flops_per_step, "peak_flops": self.peak_flops}
        self.log.log(self.step, "setup", **record)
        if self.info.is_main and self.cfg.train.progress:
            print(f"loss: {record['loss_input_dtype']} projections into the {record['loss_backend']} backend "
                  f"(fp32 inside); {self.flops_per_step / 1e9:.1f} GFLOP per step on each rank (counted)")

    def flush(self, window_start: float) -> dict | None:
        """Read the steps since the last flush (one host read: it waits for their GPU work),
        apply train.on_nonfinite and log them, timed from `window_start` (time.perf_counter) to
        the end of the read. Returns the record (None when there was nothing to read)."""
        if not len(self.window):
            return None
        tau = self.loss_fn.tau
        w = self.window.read(extra=[tau] if isinstance(tau, torch.Tensor) else [])
        seconds = time.perf_counter() - window_start
        self.skipped_nonfinite += w.steps - w.finite_steps
        if w.first_nonfinite is not None and self.cfg.train.on_nonfinite == "stop":
            step, loss, rows = w.first_nonfinite
            studies = [self.manifest.studies[r].study_id for r in rows]
            raise NonFiniteLoss(f"non-finite loss or gradient at step {step} (rank {self.info.rank} loss {loss}); "
                                f"studies of this rank's batch: {studies}")
        pairs = w.steps * self.cfg.data.batch_size * self.info.world_size * self.cfg.train.grad_accum
        mfu = utilisation(self.flops_per_step, w.steps, seconds, self.peak_flops)
        record = {"loss": w.mean_loss, "lr": self.schedule.lr(self.step - 1),
                  "pairs_per_s": round(pairs / max(seconds, 1e-9), 1), "step_ms": round(1000 * seconds / w.steps, 2),
                  "mfu": None if mfu is None else round(mfu, 4), "tau": w.extra[0] if w.extra else tau,
                  "epoch": self.loader.epoch, "skipped_nonfinite": self.skipped_nonfinite}
        if w.finite_steps:
            self.log.log(self.step, "train", **record)
        return record

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_loader is None:
            return None
        self.val_loader.epoch, self.val_loader.position = 0, 0
        self.train_model.eval()
        total, count = torch.zeros((), device=self.device), 0
        for batch in self.val_loader:
            total += self._loss(batch).float()
            count += 1
        self.train_model.train()
        return mean_across_ranks(total.item() / count, self.device)

    def fit(self) -> dict:
        cfg, info = self.cfg, self.info
        pairs_per_step = cfg.data.batch_size * info.world_size * cfg.train.grad_accum
        bar = None
        if info.is_main and cfg.train.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        batches = self.batches()
        window_start, start_step, started = time.perf_counter(), self.step, time.perf_counter()
        stopped_by = "max_steps"

        def flush():  # the window's host read, its log line and progress-bar figures
            record = self.flush(window_start)
            if bar is not None and record is not None:
                mfu = f", mfu={100 * record['mfu']:.1f}%" if record["mfu"] is not None else ""
                bar.set_postfix_str(f"loss={record['loss']:.3f}, pairs/s={record['pairs_per_s']:.0f}, "
                                    f"{record['step_ms']:.0f} ms/step{mfu}")

        while self.step < cfg.train.max_steps:
            micro = [next(batches) for _ in range(cfg.train.grad_accum)]
            first = self.flops_per_step is None  # this process's first step: compilation, autotuning,
            self.train_step(micro)               # cuDNN's search, the FLOP count; logged on its own
            self.step += 1
            if bar is not None:
                bar.update(1)
            validating = self.step % cfg.train.val_every == 0
            saving = validating or self.step % cfg.train.checkpoint_every == 0
            if first or self.step % cfg.train.log_every == 0 or saving:
                flush()  # before a checkpoint too: it must hold exact counts, and a stop comes first
                window_start = time.perf_counter()
            if validating:
                val = self.validate()
                improved = False
                if val is not None:
                    self.validations += 1
                    improved = self.schedule.validation(val)
                    self.best_val = min(self.best_val, val)
                    self.log.log(self.step, "validation", loss=val, best=self.best_val, lr_scale=self.schedule.scale)
                    if bar is not None:
                        bar.write(f"step {self.step}: validation loss {val:.4f} (best {self.best_val:.4f})")
                self.save(best=improved)
                if cfg.train.max_validations and self.validations >= cfg.train.max_validations:
                    stopped_by = "max_validations"
                    break
            elif saving:
                self.save()
            if saving:
                window_start = time.perf_counter()  # validation and checkpoint time is not step time
        flush()
        if bar is not None:
            bar.close()
        if self.step % cfg.train.val_every and self.step % cfg.train.checkpoint_every:
            self.save()
        seconds = time.perf_counter() - started
        mfu = utilisation(self.flops_per_step, self.step - start_step, seconds, self.peak_flops)
        return {"steps": self.step, "steps_this_run": self.step - start_step, "seconds": round(seconds, 1),
                "pairs_per_s": round((self.step - start_step) * pairs_per_step / max(seconds, 1e-9), 1),
                "mfu": None if mfu is None else round(mfu, 4),
                "best_validation_loss": None if math.isinf(self.best_val) else round(self.best_val, 4),
                "skipped_nonfinite": self.skipped_nonfinite, "replaced_images": sum(self.loader.replaced.values()),
                "decode_fallbacks": sum(self.loader.decode_fallbacks.values()),
                "stopped_by": stopped_by, "world_size": info.world_size, "parallel": self.parallel}

    # -- the end -------------------------------------------------------------------------------

    def finish(self, summary: dict) -> dict:
        """Best weights back in, retrieval evaluation, exports, plot, summary (rank 0 writes)."""
        from convirt_fast.eval.retrieval import evaluate_retrieval
        from convirt_fast.models import IMAGE_PROJECTION_FILE, export_image_encoder, export_projection, export_text_encoder

        if self.checkpointer.best.exists():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            best = load_checkpoint(self.checkpointer.best)
            set_model_state_dict(self.train_model, best["model"], options=StateDictOptions(full_state_dict=True))
            summary["evaluated_checkpoint"] = f"best (step {best['step']})"
        else:
            summary["evaluated_checkpoint"] = f"last (step {self.step})"
        model_state, _ = self._full_state()
        if not self.info.is_main:
            barrier()
            return summary
        # Rank 0 evaluates and exports an unsharded copy of the model.
        from convirt_fast.models import build_model

        model, _ = build_model(self.cfg.model, tokenizer=self.tokenizer)
        model.load_state_dict(model_state)
        model.to(self.device).eval()
        if self.cfg.train.evaluate:
            result = evaluate_retrieval(model, self.manifest, self.tokenizer, device=self.device,
                                        spec=self.cfg.data.augment, max_length=self.cfg.data.max_length)
            if result is not None:
                summary["retrieval"] = result
                (self.run_dir / "retrieval.json").write_text(json.dumps(result, indent=2))
        export_dir = self.run_dir / "export"
        export_image_encoder(model, export_dir / "image_encoder.safetensors")
        export_projection(model.image_projection, export_dir / IMAGE_PROJECTION_FILE)
        export_text_encoder(model, self.tokenizer, export_dir / "text_encoder")
        plot = plot_losses(self.log.records(), self.run_dir / "loss.png")
        summary["run_dir"] = str(self.run_dir)
        summary["files"] = {"config": "config.json", "metrics": "metrics.jsonl", "checkpoints": "checkpoints/",
                            "image_encoder": "export/image_encoder.safetensors",
                            "image_projection": f"export/{IMAGE_PROJECTION_FILE}", "text_encoder": "export/text_encoder/",
                            **({"loss_plot": "loss.png"} if plot else {}),
                            **({"retrieval": "retrieval.json"} if "retrieval" in summary else {})}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.log.close()
        barrier()
        return summary


def format_summary(summary: dict) -> str:
    lines = ["", "=" * 72, "convirt_fast run summary", "=" * 72,
             f"steps {summary['steps']} ({summary['steps_this_run']} this run) in {summary['seconds']} s, "
             f"{summary['pairs_per_s']} pairs/s"
             + (f" (MFU {100 * summary['mfu']:.1f}%)" if summary.get("mfu") is not None else "")
             + f", {summary['world_size']} rank(s), parallel={summary['parallel']}",
             f"best validation loss: {summary['best_validation_loss']}; stopped by {summary['stopped_by']}; "
             f"evaluated: {summary.get('evaluated_checkpoint')}"]
    if summary["skipped_nonfinite"] or summary["replaced_images"] or summary.get("decode_fallbacks"):
        lines.append(f"skipped non-finite steps: {summary['skipped_nonfinite']}; "
                     f"unreadable images replaced: {summary['replaced_images']}; "
                     f"batches redone with CPU decoding: {summary.get('decode_fallbacks', 0)}")
    if "retrieval" in summary:
        r = summary["retrieval"]
        lines.append(f"retrieval over {r['candidates']} candidates (chance {r['chance']}):")
        for task in ("image_to_image", "text_to_image"):
            if task in r:
                o = r[task]["overall"]
                lines.append(f"  {task.replace('_', ' ')}: " + ", ".join(f"{k} {v:.3f}" for k, v in o.items()))
    if "run_dir" in summary:
        lines.append(f"run folder: {summary['run_dir']}")
        lines.extend(f"  {name}: {path}" for name, path in summary["files"].items())
    lines.append("=" * 72)
    return "\n".join(lines)
