"""Typed configuration: nested dataclasses, each field documented (the docstring under a field
is its --help text), validated in __post_init__.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from convirt_fast.data.augment import AugmentSpec


def _require(ok: bool, name: str, rule: str, value) -> None:
    """Refuse a bad value naming the field (section.field), the rule and what was given."""
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


@dataclass
class ModelConfig:
    """The two encoders and their projections (DESIGN.md section 5)."""

    image_encoder: str = "resnet50"
    """Any torchvision ResNet by name: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, ..."""
    image_weights: str | None = None
    """Local weights for the image encoder: a torchvision state dict (.pth/.pt) or .safetensors;
    three-channel stems are summed to one channel. None: random init (nothing is downloaded)."""
    text_encoder: str | None = None
    """A local Hugging Face BERT folder (e.g. ClinicalBERT). None: a BERT built from the text_*
    fields below, with a WordPiece tokenizer trained on the corpus."""
    text_layers: int = 12
    """Layers of the BERT built when text_encoder is None."""
    text_hidden: int = 768
    """Hidden size of the built BERT."""
    text_heads: int = 12
    """Attention heads of the built BERT."""
    vocab_size: int = 8000
    """Vocabulary of the tokenizer trained on the corpus (when text_encoder is None)."""
    freeze_text_layers: int = 6
    """Embeddings and this many first transformer layers are frozen (paper: 6 of BERT-base's 12);
    0 freezes nothing (for a BERT trained from scratch)."""
    projection: str = "mlp"
    """mlp (Linear -> ReLU -> Linear, the paper) or linear (the paper's ablation)."""
    projection_hidden: int | None = None
    """Hidden width of the MLP projections (paper: not stated); None: the encoder's output width."""
    projection_dim: int = 512
    """Output width d of both projections (paper: 512)."""
    channels_last: bool = True
    """Run the image encoder in channels_last memory format (faster convolutions on GPUs)."""

    def __post_init__(self) -> None:
        if self.projection not in ("mlp", "linear"):
            raise ValueError(f"model.projection must be mlp or linear, got {self.projection!r}")
        for name in ("projection_dim", "text_layers", "text_hidden", "text_heads", "vocab_size"):
            _require(getattr(self, name) >= 1, f"model.{name}", ">= 1", getattr(self, name))
        _require(self.projection_hidden is None or self.projection_hidden >= 1, "model.projection_hidden",
                 "None or >= 1", self.projection_hidden)
        _require(self.text_hidden % self.text_heads == 0, "model.text_hidden",
                 f"divisible by model.text_heads={self.text_heads}", self.text_hidden)
        if not 0 <= self.freeze_text_layers <= self.text_layers and self.text_encoder is None:
            raise ValueError(f"model.freeze_text_layers={self.freeze_text_layers} outside 0..text_layers={self.text_layers}")


@dataclass
class DataConfig:
    """What to train on and how it is loaded (DESIGN.md sections 3-4)."""

    path: str = "synthcxr"
    """A prepared data folder (python -m convirt_fast.prepare ...) or its manifest.csv; "synthcxr":
    the built-in synthetic set, prepared once into cache_dir."""
    synth_n: int = 4000
    """SynthCXR training + validation studies (when path is synthcxr)."""
    synth_size: int = 256
    """SynthCXR image side, pixels."""
    cache_dir: str | None = None
    """Where SynthCXR is prepared; None: $CONVIRT_CACHE or ~/.cache/convirt_fast."""
    backend: str = "auto"
    """Augmentation backend: auto (DALI on a GPU when installed, else torch), dali or torch."""
    decode: str = "auto"
    """Where the torch backend decodes JPEGs: cpu (PIL in the DataLoader workers), gpu (workers
    read the bytes, the batch is decoded on the GPU by torchvision's batched nvJPEG; PNGs and
    16-bit images are still decoded in the workers) or auto (gpu with the torch backend on CUDA
    when torchvision can decode there, else cpu). gpu without CUDA is an error, not a fallback.
    DALI decodes by itself."""
    batch_size: int = 32
    """Pairs per rank per step (global batch = batch_size x ranks x grad_accum)."""
    num_workers: int = 2
    """DataLoader workers per rank (decode, sentence sampling, tokenization)."""
    max_length: int = 64
    """Tokens per sentence, [CLS] and [SEP] included; longer sentences are truncated."""
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    """The image transformation t_v (convirt_fast.data.augment.AugmentSpec)."""

    def __post_init__(self) -> None:
        from convirt_fast.data.image_decode import check_decode

        if isinstance(self.augment, dict):
            self.augment = AugmentSpec(**self.augment)
        _require(self.batch_size >= 1, "data.batch_size", ">= 1 (>= 2 for the contrastive loss)", self.batch_size)
        _require(self.num_workers >= 0, "data.num_workers", ">= 0", self.num_workers)
        _require(self.max_length >= 3, "data.max_length", ">= 3 ([CLS], a token, [SEP])", self.max_length)
        _require(self.synth_n >= 1 and self.synth_size >= 1, "data.synth_n and data.synth_size", ">= 1",
                 (self.synth_n, self.synth_size))
        if self.backend not in ("auto", "dali", "torch"):
            raise ValueError(f"data.backend must be auto, dali or torch, got {self.backend!r}")
        check_decode(self.decode, self.backend)  # the loader checks the resolved backend the same way


@dataclass
class LossConfig:
    """The contrastive loss (PAPER.md "Loss"; convirt_fast.ConVIRTLoss)."""

    tau: float = 0.1
    """Temperature (initial value when learnable)."""
    lam: float = 0.75
    """Weight of the image->text direction; 1 - lam weighs text->image."""
    learnable_tau: bool = False
    """Learn the temperature (as CLIP does)."""
    gather: bool = False
    """Global batch: negatives from every rank (all-gather), exact global-batch gradients."""
    backend: str = "auto"
    """auto (Triton on CUDA, chunked torch otherwise), triton or torch."""

    def __post_init__(self) -> None:
        from convirt_fast.kernels.convirt_loss import BACKENDS

        _require(self.tau > 0 and math.isfinite(self.tau), "loss.tau", "finite, tau > 0", self.tau)
        _require(0 <= self.lam <= 1, "loss.lam", "in [0, 1]", self.lam)
        _require(self.backend in BACKENDS, "loss.backend", f"one of {BACKENDS}", self.backend)


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
        _require(self.lr > 0 and math.isfinite(self.lr), "optim.lr", "finite and > 0", self.lr)
        _require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        _require(0 < self.plateau_factor < 1, "optim.plateau_factor", "in (0, 1)", self.plateau_factor)
        _require(self.plateau_patience >= 1, "optim.plateau_patience", ">= 1", self.plateau_patience)
        _require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                 "two values in [0, 1)", self.betas)
        _require(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", "None or > 0", self.grad_clip)


@dataclass
class TrainConfig:
    """The run: length, parallelism, precision, checkpoints, logging."""

    max_steps: int = 1000
    """Optimizer steps."""
    val_every: int = 200
    """Validation loss every this many steps (paper: 5,000)."""
    max_validations: int | None = None
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
    checkpoint_every: int = 200
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
            _require(getattr(self, name) >= 1, f"train.{name}", ">= 1", getattr(self, name))
        _require(self.max_validations is None or self.max_validations >= 1, "train.max_validations",
                 "None or >= 1", self.max_validations)


@dataclass
class Config:
    """A whole run. `python -m convirt_fast.train --help` lists every field."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "cpu-default"
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
