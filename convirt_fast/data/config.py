"""DataConfig: what a run trains on and how it is loaded (the `data` section of its config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.require import require


@dataclass
class DataConfig:
    """What to train on and how it is loaded (DESIGN.md sections 3-4)."""

    path: str = ""
    """A prepared data folder (python -m convirt_fast.prepare ...) or its manifest.csv; "synthcxr":
    the built-in synthetic set, prepared once into cache_dir. Empty (the mimic presets): must be given."""
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
    """Pairs per rank per micro-batch. The contrastive loss sees one micro-batch of one rank (its
    negatives are the other batch_size - 1 pairs) unless loss.gather, which makes the batch of
    every rank together (batch_size x ranks pairs) one loss; grad_accum never enlarges it."""
    num_workers: int = 8
    """DataLoader workers per rank (decode, sentence sampling, tokenization)."""
    max_length: int = 64
    """Tokens per sentence, [CLS] and [SEP] included; longer sentences are truncated."""
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    """The image transformation t_v (convirt_fast.data.augment.AugmentSpec)."""

    def __post_init__(self) -> None:
        from convirt_fast.data.image_decode import check_decode

        if isinstance(self.augment, dict):
            self.augment = AugmentSpec(**self.augment)
        require(self.batch_size >= 1, "data.batch_size", ">= 1 (>= 2 for the contrastive loss)", self.batch_size)
        require(self.num_workers >= 0, "data.num_workers", ">= 0", self.num_workers)
        require(self.max_length >= 3, "data.max_length", ">= 3 ([CLS], a token, [SEP])", self.max_length)
        require(self.synth_n >= 1 and self.synth_size >= 1, "data.synth_n and data.synth_size", ">= 1",
                 (self.synth_n, self.synth_size))
        if self.backend not in ("auto", "dali", "torch"):
            raise ValueError(f"data.backend must be auto, dali or torch, got {self.backend!r}")
        check_decode(self.decode, self.backend)  # the loader checks the resolved backend the same way
