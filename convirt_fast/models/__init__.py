"""Models: ResNet image encoder, BERT text encoder, projections, the ConVIRT model, its factory,
the exporters and `load_pretrained` (DESIGN.md section 5)."""

from convirt_fast.models.convirt import ConVIRTModel
from convirt_fast.models.export import (
    EXPORT_INFO_FILE,
    IMAGE_ENCODER_FILE,
    IMAGE_PROJECTION_FILE,
    TEXT_ENCODER_DIR,
    export_image_encoder,
    export_model,
    export_projection,
    export_text_encoder,
    load_projection,
    load_text_encoder,
    read_export_info,
)
from convirt_fast.models.factory import build_image_model, build_model, model_from_checkpoint
from convirt_fast.models.image_encoder import build_image_encoder, image_feature_dim
from convirt_fast.models.pretrained import EvalTransform, Pretrained, load_pretrained
from convirt_fast.models.projection import Projection
from convirt_fast.models.text_encoder import build_bert, freeze_bert, load_bert, masked_max_pool
from convirt_fast.models.weights import expand_stem, load_image_weights

__all__ = [
    "EXPORT_INFO_FILE",
    "IMAGE_ENCODER_FILE",
    "IMAGE_PROJECTION_FILE",
    "TEXT_ENCODER_DIR",
    "ConVIRTModel",
    "EvalTransform",
    "Pretrained",
    "Projection",
    "build_bert",
    "build_image_encoder",
    "build_image_model",
    "build_model",
    "expand_stem",
    "export_image_encoder",
    "export_model",
    "export_projection",
    "export_text_encoder",
    "freeze_bert",
    "image_feature_dim",
    "load_bert",
    "load_image_weights",
    "load_pretrained",
    "load_projection",
    "load_text_encoder",
    "masked_max_pool",
    "model_from_checkpoint",
    "read_export_info",
]
