"""Models: ResNet image encoder, BERT text encoder, projections, the ConVIRT model, its factory
and the exporters (DESIGN.md section 5)."""

from convirt_fast.models.convirt import ConVIRTModel
from convirt_fast.models.export import (
    IMAGE_PROJECTION_FILE,
    export_image_encoder,
    export_projection,
    export_text_encoder,
    load_projection,
    load_text_encoder,
)
from convirt_fast.models.factory import build_model
from convirt_fast.models.image_encoder import build_image_encoder, image_feature_dim
from convirt_fast.models.projection import Projection
from convirt_fast.models.text_encoder import build_bert, freeze_bert, load_bert, masked_max_pool
from convirt_fast.models.weights import expand_stem, load_image_weights

__all__ = [
    "IMAGE_PROJECTION_FILE",
    "ConVIRTModel",
    "Projection",
    "build_bert",
    "build_image_encoder",
    "build_model",
    "expand_stem",
    "export_image_encoder",
    "export_projection",
    "export_text_encoder",
    "freeze_bert",
    "image_feature_dim",
    "load_bert",
    "load_image_weights",
    "load_projection",
    "load_text_encoder",
    "masked_max_pool",
]
