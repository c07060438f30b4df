"""ModelConfig: the two encoders and their projections (the `model` section of a run's config)."""

from __future__ import annotations

from dataclasses import dataclass

from convirt_fast.require import require


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
            require(getattr(self, name) >= 1, f"model.{name}", ">= 1", getattr(self, name))
        require(self.projection_hidden is None or self.projection_hidden >= 1, "model.projection_hidden",
                 "None or >= 1", self.projection_hidden)
        require(self.text_hidden % self.text_heads == 0, "model.text_hidden",
                 f"divisible by model.text_heads={self.text_heads}", self.text_hidden)
        if not 0 <= self.freeze_text_layers <= self.text_layers and self.text_encoder is None:
            raise ValueError(f"model.freeze_text_layers={self.freeze_text_layers} outside 0..text_layers={self.text_layers}")
