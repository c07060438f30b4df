"""build_model: the ConVIRT model and its tokenizer from a `ModelConfig`.

Image transforms are the data pipeline's (`convirt_fast.data`), not built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from convirt_fast.config import ModelConfig
from convirt_fast.models.convirt import ConVIRTModel
from convirt_fast.models.image_encoder import build_image_encoder, image_feature_dim
from convirt_fast.models.projection import Projection
from convirt_fast.models.text_encoder import build_bert, load_bert
from convirt_fast.models.weights import load_image_weights


def _pretrained_tokenizer(name_or_path: str):
    """The tokenizer beside a pretrained BERT: a local folder, or the local Hugging Face cache."""
    from convirt_fast.text.tokenizer import load_tokenizer

    if Path(name_or_path).is_dir():
        return load_tokenizer(name_or_path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, use_fast=True, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(f"{name_or_path}: no tokenizer found locally (downloads are disabled)") from e


def build_model(
    cfg: ModelConfig, *, tokenizer: Any | None = None, corpus: Iterable[str] | None = None
) -> tuple[ConVIRTModel, Any]:
    """(model, tokenizer) for `cfg`. Nothing is downloaded.

    Text side: cfg.text_encoder set -> that pretrained BERT (a local folder, or a hub id already
    in the local cache) and, unless `tokenizer` is given, the tokenizer saved with it.
    cfg.text_encoder None -> a BERT of cfg.text_* sizes with random weights whose vocabulary is
    `tokenizer`, or one trained on `corpus` (WordPiece, cfg.vocab_size) when none is given.
    A given tokenizer always wins (e.g. the one saved in a checkpoint being resumed)."""
    from convirt_fast.text.tokenizer import train_wordpiece

    if cfg.text_encoder is not None:
        text_encoder = load_bert(cfg.text_encoder)
        if tokenizer is None:
            tokenizer = _pretrained_tokenizer(cfg.text_encoder)
        rows = text_encoder.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise ValueError(
                f"{cfg.text_encoder}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only {rows}"
            )
    else:
        if tokenizer is None:
            if corpus is None:
                raise ValueError("build_model: model.text_encoder is None, so a tokenizer or a corpus to train one on is needed")
            tokenizer = train_wordpiece(corpus, vocab_size=cfg.vocab_size)
        text_encoder = build_bert(
            vocab_size=len(tokenizer),
            layers=cfg.text_layers,
            hidden=cfg.text_hidden,
            heads=cfg.text_heads,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )

    image_encoder = build_image_encoder(cfg.image_encoder, in_channels=1)
    if cfg.image_weights is not None:
        load_image_weights(image_encoder, cfg.image_weights)

    def projection(in_features: int) -> Projection:
        return Projection(in_features, cfg.projection_dim, hidden=cfg.projection_hidden, kind=cfg.projection)

    model = ConVIRTModel(
        image_encoder,
        text_encoder,
        projection(image_feature_dim(image_encoder)),
        projection(text_encoder.config.hidden_size),
        freeze_text_layers=cfg.freeze_text_layers,
        channels_last=cfg.channels_last,
    )
    return model, tokenizer
