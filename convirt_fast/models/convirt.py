"""ConVIRTModel: the two encoders and their projections (PAPER.md "Method").

    images (B, 1, H, W) float, normalised -> ResNet -> (B, C_v) -> g_v -> v (B, d)
    input_ids, attention_mask (B, T)      -> BERT -> max-pool -> (B, C_u) -> g_u -> u (B, d)

Projections are returned unnormalised; the loss normalises them.

One class for training and for everything evaluated or loaded afterwards. The text side (BERT,
g_u, tokenizer) and the image projection g_v are optional: a model built from an exported image
encoder alone, or a randomly initialised baseline, is image-only (`has_text` False), and its
`encode_image` is then the pooled features themselves, so it still ranks images.

Frozen text layers (embeddings + first K) are kept in eval mode even while the model trains
(see `train`): they are a fixed function, so their dropout would only add noise to the
trainable layers' input, and keeping it off makes their output identical in training and
evaluation (the paper does not say; HF's default would leave it on).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn
from torchvision.models.resnet import ResNet

from convirt_fast.models.projection import Projection
from convirt_fast.models.text_encoder import freeze_bert, frozen_modules, pooled_text_features

if TYPE_CHECKING:
    from transformers import BertModel

DEFAULT_MAX_LENGTH = 64
"""Tokens per text ([CLS] and [SEP] included) when no run says otherwise (DataConfig's default)."""


class ConVIRTModel(nn.Module):
    """Image encoder f_v, optional image projection g_v, optional text side (f_u, g_u, tokenizer).

    name: how reports call it (a run's folder name, "random (resnet18)", ...). tokenizer and
    max_length: what `tokenize` and `encode_text(texts)` use to turn strings into tokens."""

    def __init__(
        self,
        image_encoder: ResNet,
        text_encoder: BertModel | None = None,
        image_projection: Projection | None = None,
        text_projection: Projection | None = None,
        *,
        tokenizer: Any | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        name: str = "convirt",
        freeze_text_layers: int = 0,
        channels_last: bool = False,
    ):
        super().__init__()
        if (text_encoder is None) != (text_projection is None):
            raise ValueError("ConVIRTModel: text_encoder and text_projection come together (both or neither)")
        if text_encoder is not None and image_projection is None:
            raise ValueError("ConVIRTModel: a text side needs the image projection (the shared space it maps into)")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = image_projection
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name
        self.freeze_text_layers = freeze_text_layers if text_encoder is not None else 0
        self.channels_last = channels_last
        if text_encoder is not None:
            freeze_bert(text_encoder, freeze_text_layers)
        if channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)
        self.train()  # puts the frozen layers in eval mode

    def train(self, mode: bool = True) -> "ConVIRTModel":
        super().train(mode)
        if self.text_encoder is not None:
            for module in frozen_modules(self.text_encoder, self.freeze_text_layers):
                module.eval()
        return self

    @property
    def has_text(self) -> bool:
        """Whether text can be embedded into the image projections' space (text->image
        retrieval, zero-shot): a text encoder, its projection, the image projection and a tokenizer."""
        return self.text_encoder is not None and self.tokenizer is not None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- images --------------------------------------------------------------------------------

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C_v) pooled ResNet features (before the projection; the linear
        probe's and fine-tuning's input)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # no copy if already so
        return self.image_encoder(images)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> v (B, d), the image projection; an image-only model without one
        returns the pooled features (B, C_v)."""
        features = self.image_features(images)
        return self.image_projection(features) if self.image_projection is not None else features

    def fresh_image_encoder(self) -> nn.Module:
        """A trainable copy of the image encoder (fine-tuning starts from it)."""
        return copy.deepcopy(self.image_encoder).train().requires_grad_(True)

    # -- text ----------------------------------------------------------------------------------

    def _require_text(self) -> None:
        if self.text_encoder is None:
            raise RuntimeError(f"{self.name}: this model has no text side (an image encoder only)")

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask) (B, T) on the model's device, padded to the
        longest and truncated to `max_length` tokens, as training tokenized its sentences."""
        self._require_text()
        if self.tokenizer is None:
            raise RuntimeError(f"{self.name}: no tokenizer attached; pass input_ids and attention_mask instead")
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        device = self.device
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) -> (B, C_u) max-pooled BERT token vectors (before the projection)."""
        self._require_text()
        return pooled_text_features(self.text_encoder, input_ids, attention_mask)

    def encode_text(self, input_ids: torch.Tensor | str | Sequence[str],
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T), (B, T) -> u (B, d). Strings work too: `encode_text(["No effusion.", ...])`
        tokenizes them with the model's tokenizer first (`tokenize`)."""
        if attention_mask is None:
            if isinstance(input_ids, torch.Tensor):
                raise TypeError("encode_text: pass input_ids with their attention_mask, or a list of strings")
            input_ids, attention_mask = self.tokenize(input_ids)
        return self.text_projection(self.text_features(input_ids, attention_mask))

    # -- training ------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"image": v, "text": u, "image_features", "text_features"} (pre-projection)."""
        image_features = self.image_features(images)
        text_features = self.text_features(input_ids, attention_mask)
        return {
            "image": self.image_projection(image_features),
            "text": self.text_projection(text_features),
            "image_features": image_features,
            "text_features": text_features,
        }
