"""A run's typed configuration: the sections of the layers below (ModelConfig in models,
DataConfig in data, LossConfig in loss) and the training layer's own (optim, train). Each field
is documented (the docstring under a field is its --help text) and validated in __post_init__.

The defaults are the paper's recipe, i.e. the mimic-paper preset (`Config() == mimic_paper()`);
the other presets (presets.py) change some fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from convirt_fast.data.config import DataConfig
from convirt_fast.loss import LossConfig
from convirt_fast.models.config import ModelConfig
from convirt_fast.require import require


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    lr: float = 1e-4
    """Peak learning rate (paper: 1e-4)."""
    weight_decay: float = 1e-6
    """Weight decay (paper: 1e-6; decoupled, AdamW, where the paper's Adam adds it to the gradient)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    schedule: str = "plateau"
    """plateau (paper: lr x plateau_factor after plateau_patience validations without improvement)
    or cosine (warmup_steps of linear warm-up, then cosine decay to 0 at train.max_steps)."""
    plateau_patience: int = 5
    """Validations without improvement before the lr is cut (paper: 5)."""
    plateau_factor: float = 0.5
    """Factor applied to the lr on a plateau (paper: 0.5)."""
    warmup_steps: int = 0
    """Linear warm-up steps (both schedules)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; None: no clipping."""

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"optim.schedule must be plateau or cosine, got {self.schedule!r}")
        require(self.lr > 0 and math.isfinite(self.lr), "optim.lr", "finite and > 0", self.lr)
        require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        require(0 < self.plateau_factor < 1, "optim.plateau_factor", "in (0, 1)", self.plateau_factor)
        require(self.plateau_patience >= 1, "optim.plateau_patience", ">= 1", self.plateau_patience)
        require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                 "two values in [0, 1)", self.betas)
        require(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", "None or > 0", self.grad_clip)


@dataclass
class TrainConfig:
    """The run: length, parallelism, precision, checkpoints, logging."""

    max_steps: int = 1_000_000
    """Optimizer steps (the paper stops by max_validations first)."""
    val_every: int = 5000
    """Validation loss every this many steps (paper: 5,000)."""
    max_validations: int | None = 200
    """Stop after this many validations (paper: 200); None: only max_steps stops."""
    log_every: int = 10
    """Metrics line every this many steps."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (note: the contrastive loss sees one micro-batch at a time)."""
    parallel: str = "auto"
    """auto (ddp when several ranks, else none), ddp, fsdp (FSDP2 fully_shard) or none."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."""
    compile: bool = False
    """torch.compile the encoders."""
    on_nonfinite: str = "stop"
    """A NaN/inf loss: stop (naming the step and study ids) or skip (drop the batch, count it)."""
    seed: int = 0
    """Seed of data order, augmentation, sentence sampling and initialisation."""
    out_dir: str = "runs"
    """Runs are written to out_dir/run_name."""
    run_name: str | None = None
    """Run folder name; None: <preset>-<date>-<time> (under torchrun: when torchrun started, so every
    restart attempt of --max-restarts finds and resumes it; with a chosen --rdzv_id: <preset>-<id>)."""
    resume: str | None = "auto"
    """auto: continue the run folder's last checkpoint if there is one; a checkpoint path; or None."""
    checkpoint_every: int = 5000
    """Write the last checkpoint every this many steps (best is written on improvement)."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the tensorboard package)."""
    evaluate: bool = True
    """After training, evaluate retrieval on the data set's retrieval split when it has one."""
    progress: bool = True
    """Progress bar on rank 0."""

    def __post_init__(self) -> None:
        checks = {
            "parallel": ("auto", "ddp", "fsdp", "none"),
            "precision": ("auto", "bf16", "fp32"),
            "on_nonfinite": ("stop", "skip"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("max_steps", "val_every", "log_every", "grad_accum", "checkpoint_every"):
            require(getattr(self, name) >= 1, f"train.{name}", ">= 1", getattr(self, name))
        require(self.max_validations is None or self.max_validations >= 1, "train.max_validations",
                 "None or >= 1", self.max_validations)


@dataclass
class Config:
    """A whole run. `python -m convirt_fast.train --help` lists every field."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "mimic-paper"
    """The preset these values started from."""

    def __post_init__(self) -> None:
        # One pair per step leaves the contrastive loss no negative: it is exactly 0 and nothing is
        # learned. With loss.gather the other ranks' pairs are the negatives (the trainer checks
        # the global batch, which needs the number of ranks).
        if self.data.batch_size < 2 and not self.loss.gather:
            raise ValueError(f"data.batch_size must be >= 2 for the contrastive loss (each pair's negatives are the "
                             f"batch's other pairs; with 1 the loss is 0 and nothing is learned; paper: 32), "
                             f"got {self.data.batch_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The inverse of to_dict (a run's config.json, a checkpoint's config). Unknown sections or
        fields (a config of another version) are refused, all of them named."""
        types = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig,
                 "train": TrainConfig}
        missing = [s for s in types if not isinstance(d.get(s), dict)]
        if missing:
            raise ValueError(f"config: sections missing: {missing}")
        unknown = [k for k in d if k not in types and k != "preset"]
        for s, t in types.items():
            unknown += [f"{s}.{k}" for k in d[s] if k not in {f.name for f in dataclasses.fields(t)}]
        if unknown:
            raise ValueError(f"config: unknown fields {unknown} (written by another version of convirt_fast?)")
        return cls(**{s: t(**d[s]) for s, t in types.items()}, preset=d.get("preset", "custom"))
