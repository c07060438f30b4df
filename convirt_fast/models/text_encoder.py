"""Text encoder f_u: a `transformers` BERT, partly frozen, max-pooled over real tokens.

Two sources, both offline: a pretrained BERT from a local folder (or one already in the local
Hugging Face cache; nothing is downloaded), or a BERT built from the config's sizes with random
weights, whose vocabulary is the tokenizer trained on the corpus.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # transformers takes seconds to import; image-only users never need it
    from transformers import BertModel


def build_bert(*, vocab_size: int, layers: int, hidden: int, heads: int, pad_token_id: int = 0) -> BertModel:
    """A randomly initialised BERT of the given size, without the pooler (ConVIRT max-pools)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,  # BERT's ratio
        max_position_embeddings=512,
        pad_token_id=pad_token_id,
    )
    return BertModel(config, add_pooling_layer=False)


def load_bert(name_or_path: str | Path) -> BertModel:
    """A pretrained BERT from a local folder or the local Hugging Face cache, never the network.

    A `BertForMaskedLM`/`BertForPreTraining` checkpoint (e.g. ClinicalBERT) loads too: its
    `bert.` prefix is stripped by transformers and the heads are ignored. Encoder weights missing
    from the checkpoint (transformers would initialise them randomly and only log it) are an error."""
    from transformers import BertModel

    try:
        with quiet_transformers():  # its load report lists the heads and pooler left out; checked below
            bert, info = BertModel.from_pretrained(
                str(name_or_path), add_pooling_layer=False, local_files_only=True, output_loading_info=True
            )
    except OSError as e:
        raise FileNotFoundError(
            f"{name_or_path}: no BERT found locally (not a folder with config.json and weights, nor in the "
            f"Hugging Face cache); downloads are disabled: save the model with save_pretrained and pass the folder"
        ) from e
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ValueError(
            f"{name_or_path}: the checkpoint does not hold this BERT's weights: "
            f"missing {missing[:8]} ({len(missing)}), wrong shape {mismatched[:8]} ({len(mismatched)})"
        )
    return bert


def bert_from_config(name_or_path: str | Path) -> BertModel:
    """A BERT with the architecture of the pretrained one at `name_or_path` (its config.json, a
    local folder or the local Hugging Face cache) and random weights, without the pooler: for
    weights loaded next from a checkpoint, so the pretrained weights are never read."""
    from transformers import BertConfig, BertModel

    try:
        config = BertConfig.from_pretrained(str(name_or_path), local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"{name_or_path}: no BERT config.json found locally (the run's model.text_encoder); downloads are "
            f"disabled: pass the folder the BERT was saved in (a run's export/text_encoder/ holds its config too)"
        ) from e
    return BertModel(config, add_pooling_layer=False)


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own log below errors for the duration (its load reports: callers check
    the loading info themselves and raise on what matters)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def frozen_modules(bert: BertModel, layers: int) -> list[nn.Module]:
    """The embeddings and the first `layers` transformer layers: what ConVIRT freezes (K = 6 of
    BERT-base's 12). `layers` = 0 freezes nothing, embeddings included: the setting for a BERT
    built from scratch, whose random embeddings are worth nothing frozen."""
    total = len(bert.encoder.layer)
    if not 0 <= layers <= total:
        raise ValueError(f"model.freeze_text_layers={layers} outside 0..{total} (the text encoder's layer count)")
    return [bert.embeddings, *bert.encoder.layer[:layers]] if layers else []


def freeze_bert(bert: BertModel, layers: int) -> None:
    """requires_grad=False on the embeddings and the first `layers` layers. Autograd then records
    nothing below the first trainable layer (its inputs need no grad), so frozen layers cost no
    activation memory and no backward compute."""
    for module in frozen_modules(bert, layers):
        module.requires_grad_(False)


def masked_max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) token vectors, (B, T) mask (1 = real token, 0 = padding) -> (B, H) element-wise
    max over the real tokens (special tokens included, as the paper pools "all output vectors").
    Padding never wins the max; a row without any real token gives zeros, not the dtype minimum."""
    keep = attention_mask.to(torch.bool).unsqueeze(-1)
    pooled = hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).amax(dim=1)
    return torch.where(keep.any(dim=1), pooled, torch.zeros_like(pooled))


@functools.lru_cache(maxsize=None)
def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _prepared_attention_mask(bert: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """The attention mask in the 4-D form the attention implementation uses, where transformers
    takes one ready-made. transformers >= 5 builds masks in `masking_utils`, which first asks
    whether a 2-D mask pads anything (`mask.all()`, a host read: on a GPU, a sync that stalls every
    text forward) and passes a 4-D mask through unchanged. Older versions get the 2-D mask."""
    implementation = getattr(bert.config, "_attn_implementation", None)
    if _transformers_major() < 5 or implementation not in ("sdpa", "eager"):
        return attention_mask
    keep = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T): every query sees the same keys
    if implementation == "sdpa":
        return keep  # boolean, True = attend (scaled_dot_product_attention's convention)
    # eager adds the mask to the scores: in the model's dtype, as transformers builds it
    dtype = bert.get_input_embeddings().weight.dtype
    return torch.zeros(keep.shape, device=keep.device, dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min)


def pooled_text_features(bert: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> (B, H): ConVIRT's text features, the masked max-pool of the BERT's last
    hidden states. The one definition, for training and for every evaluated encoder."""
    mask = _prepared_attention_mask(bert, attention_mask)
    hidden = bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return masked_max_pool(hidden, attention_mask)
