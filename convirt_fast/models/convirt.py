"""ConVIRTModel: the two encoders and their projections (PAPER.md "Method").

    images (B, 1, H, W) float, normalised -> ResNet -> (B, C_v) -> g_v -> v (B, d)
    input_ids, attention_mask (B, T)      -> BERT -> max-pool -> (B, C_u) -> g_u -> u (B, d)

Projections are returned unnormalised; the loss normalises them.

Frozen text layers (embeddings + first K) are kept in eval mode even while the model trains
(see `train`): they are a fixed function, so their dropout would only add noise to the
trainable layers' input, and keeping it off makes their output identical in training and
evaluation (the paper does not say; HF's default would leave it on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.models.resnet import ResNet

from convirt_fast.models.projection import Projection
from convirt_fast.models.text_encoder import freeze_bert, frozen_modules, pooled_text_features

if TYPE_CHECKING:
    from transformers import BertModel


class ConVIRTModel(nn.Module):
    def __init__(
        self,
        image_encoder: ResNet,
        text_encoder: BertModel,
        image_projection: Projection,
        text_projection: Projection,
        *,
        freeze_text_layers: int = 0,
        channels_last: bool = False,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = image_projection
        self.text_projection = text_projection
        self.freeze_text_layers = freeze_text_layers
        self.channels_last = channels_last
        freeze_bert(text_encoder, freeze_text_layers)
        if channels_last:
            self.image_encoder.to(memory_format=torch.channels_last)
        self.train()  # puts the frozen layers in eval mode

    def train(self, mode: bool = True) -> "ConVIRTModel":
        super().train(mode)
        for module in frozen_modules(self.text_encoder, self.freeze_text_layers):
            module.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, C_v) pooled ResNet features (before the projection)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # no copy if already so
        return self.image_encoder(images)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) -> (B, C_u) max-pooled BERT token vectors (before the projection)."""
        return pooled_text_features(self.text_encoder, input_ids, attention_mask)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> v (B, d)."""
        return self.image_projection(self.image_features(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) -> u (B, d)."""
        return self.text_projection(self.text_features(input_ids, attention_mask))

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
