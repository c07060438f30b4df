"""Tokenizers: load a Hugging Face one from a local folder, or train a WordPiece one on the corpus.

Nothing is downloaded at run time: the offline default is a BERT-style WordPiece vocabulary
trained on the training sentences themselves (seconds for a few hundred thousand sentences).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A saved tokenizer's vocabulary is one of these (fast: tokenizer.json; WordPiece: vocab.txt; BPE:
# vocab.json; SentencePiece: the .model files). Without one, transformers >= 5 builds an empty
# tokenizer from the model's config.json and every word becomes [UNK]: refused instead.
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
               "tokenizer.model")


def train_wordpiece(sentences: Iterable[str], *, vocab_size: int = 8000, lowercase: bool = True,
                    min_frequency: int = 2):
    """A BERT-style (uncased by default) WordPiece `PreTrainedTokenizerFast` for `sentences`.

    The vocabulary is built deterministically: the special tokens, every character seen (alone
    and as a "##" continuation, so no word is ever [UNK]), then whole words by frequency (ties
    by spelling) up to `vocab_size`. (The `tokenizers` WordPiece trainer breaks frequency ties
    by hash-map order, so the same corpus gave different vocabularies from run to run; report
    language is a small closed vocabulary, for which whole words plus characters suffice.)
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    for sentence in sentences:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)))
    chars = sorted({c for w in words for c in w})
    vocab_list = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    taken = set(vocab_list)
    for word, count in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab_list) >= vocab_size or count < min_frequency:
            break
        if word not in taken:
            vocab_list.append(word)
            taken.add(word)
    tokenizer = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab_list)}, unk_token="[UNK]",
                                           continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", do_lower_case=lowercase,
    )


def load_tokenizer(path: str | Path):
    """A fast tokenizer from a local folder (e.g. a saved ClinicalBERT); never the hub. A folder
    without a tokenizer (a model saved alone) is refused, naming it and the files looked for."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer folder not found (hub downloads are disabled; pass a local folder)")
    if not any((path / name).is_file() for name in VOCAB_FILES):
        raise FileNotFoundError(
            f"{path}: no tokenizer in this folder (none of {', '.join(VOCAB_FILES)}); the model was saved without "
            f"its tokenizer: save it there too (tokenizer.save_pretrained('{path}'))")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: the tokenizer in this folder cannot be loaded: {e}") from e
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ValueError(f"{path}: the tokenizer has no vocabulary beyond its {len(tokenizer)} special tokens")
    return tokenizer
