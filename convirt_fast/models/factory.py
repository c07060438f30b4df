"""build_model: the ConVIRT model and its tokenizer from a `ModelConfig`; model_from_checkpoint:
the model of a run checkpoint; build_image_model: an image-only model (evaluation baselines).

Image transforms are the data pipeline's (`convirt_fast.data`), not built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from convirt_fast.models.config import ModelConfig
from convirt_fast.models.convirt import DEFAULT_MAX_LENGTH, ConVIRTModel
from convirt_fast.models.image_encoder import build_image_encoder, image_feature_dim
from convirt_fast.models.projection import Projection
from convirt_fast.models.text_encoder import bert_from_config, build_bert, load_bert
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
    cfg: ModelConfig,
    *,
    tokenizer: Any | None = None,
    corpus: Iterable[str] | None = None,
    weights: bool = True,
    text_config: str | Path | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    name: str = "convirt",
) -> tuple[ConVIRTModel, Any]:
    """(model, tokenizer) for `cfg`, the tokenizer also attached as `model.tokenizer`. Nothing is
    downloaded.

    Text side: cfg.text_encoder set -> that pretrained BERT (a local folder, or a hub id already
    in the local cache) and, unless `tokenizer` is given, the tokenizer saved with it.
    cfg.text_encoder None -> a BERT of cfg.text_* sizes with random weights whose vocabulary is
    `tokenizer`, or one trained on `corpus` (WordPiece, cfg.vocab_size) when none is given.
    A given tokenizer always wins (e.g. the one saved in a checkpoint being resumed).

    weights=False: the architecture only, for a state dict loaded next (`model_from_checkpoint`):
    cfg.image_weights is not read, and a pretrained BERT is built from its config.json alone
    (from `text_config`, a folder or hub id, default cfg.text_encoder), not from its weights."""
    from convirt_fast.text.tokenizer import train_wordpiece

    if cfg.text_encoder is not None:
        source = cfg.text_encoder if weights or text_config is None else str(text_config)
        text_encoder = load_bert(source) if weights else bert_from_config(source)
        if tokenizer is None:
            tokenizer = _pretrained_tokenizer(source)
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

    image_encoder = _image_encoder(cfg, weights=weights)
    model = ConVIRTModel(
        image_encoder,
        text_encoder,
        _projection(cfg, image_feature_dim(image_encoder)),
        _projection(cfg, text_encoder.config.hidden_size),
        tokenizer=tokenizer,
        max_length=max_length,
        name=name,
        freeze_text_layers=cfg.freeze_text_layers,
        channels_last=cfg.channels_last,
    )
    return model, tokenizer


def build_image_model(cfg: ModelConfig, *, projection: bool = False, name: str | None = None) -> ConVIRTModel:
    """An image-only ConVIRTModel: cfg.image_encoder, with cfg.image_weights loaded when set
    (else random init), and a fresh image projection when `projection`. The baselines the
    evaluation compares against (`evaluate --init random|PATH`)."""
    image_encoder = _image_encoder(cfg, weights=True)
    return ConVIRTModel(
        image_encoder,
        image_projection=_projection(cfg, image_feature_dim(image_encoder)) if projection else None,
        name=name or cfg.image_encoder,
        channels_last=cfg.channels_last,
    )


def model_from_checkpoint(
    state: Mapping[str, Any],
    tokenizer: Any | None = None,
    *,
    text_config: str | Path | None = None,
    name: str = "convirt",
    source: str = "checkpoint",
) -> ConVIRTModel:
    """The model of a run checkpoint (a dict from `convirt_fast.io.load_checkpoint`: its
    "config" section model and data.max_length, its "model" weights), in eval mode, on the CPU.

    Built once and loaded strictly; pretrained weights named in the config (image_weights, a
    pretrained BERT's weights) are not read, the checkpoint overwrites them anyway (see
    build_model's weights=False; `text_config` is where the pretrained BERT's config.json is,
    default the config's text_encoder). tokenizer: the run's (its folder's tokenizer/); None
    loads the pretrained BERT's own, and is an error for a BERT trained from scratch."""
    cfg = model_config(state["config"], source)
    max_length = int((state["config"].get("data") or {}).get("max_length", DEFAULT_MAX_LENGTH))
    if tokenizer is None and cfg.text_encoder is None:
        raise ValueError(f"{source}: the run trained its own tokenizer; pass it (the run folder's tokenizer/)")
    model, _ = build_model(cfg, tokenizer=tokenizer, weights=False, text_config=text_config, max_length=max_length,
                           name=name)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not fit the model of its own config: {error}") from None
    return model.eval()


def model_config(config: Mapping[str, Any], source: str = "config") -> ModelConfig:
    """The ModelConfig of a run's config dict (config.json, a checkpoint's "config")."""
    try:
        return ModelConfig(**config["model"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source}: not a convirt_fast run config (model section: {error})") from None


def _image_encoder(cfg: ModelConfig, *, weights: bool):
    image_encoder = build_image_encoder(cfg.image_encoder, in_channels=1)
    if weights and cfg.image_weights is not None:
        load_image_weights(image_encoder, cfg.image_weights)
    return image_encoder


def _projection(cfg: ModelConfig, in_features: int) -> Projection:
    return Projection(in_features, cfg.projection_dim, hidden=cfg.projection_hidden, kind=cfg.projection)
