"""The WordPiece tokenizer of a prepared folder: built from its training sentences by data
preparation and saved in the folder (`tokenizers/wordpiece-<vocab size>/`), so every run and
every rank that trains on the folder uses the same one.

`python -m convirt_fast.prepare ...` builds the default vocabulary size; a run that asks for
another size (model.vocab_size), or a folder prepared by an older version, gets it built on
first use, under a file lock (every rank may call `ensure_tokenizer`; one builds, the others
wait and load it). The vocabulary is a deterministic function of the training sentences
(`train_wordpiece`), so building it twice gives the same tokenizer.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from convirt_fast.io import atomic_folder

DEFAULT_VOCAB_SIZE = 8000


def tokenizer_dir(folder: Path, vocab_size: int) -> Path:
    return Path(folder) / "tokenizers" / f"wordpiece-{vocab_size}"


def build_tokenizer(manifest, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train the WordPiece vocabulary on the sentences of the manifest's train split and save it
    into the prepared folder (atomically: a complete folder renamed into place). Returns its path."""
    from convirt_fast.text import SentenceIndex
    from convirt_fast.text.tokenizer import train_wordpiece

    out = tokenizer_dir(manifest.root, vocab_size)
    index = SentenceIndex.load(manifest.sentence_index_path)
    corpus = (s for r in manifest.split_indices("train") for s in index.sentences(r))
    tokenizer = train_wordpiece(corpus, vocab_size=vocab_size)
    with atomic_folder(out) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return out


def ensure_tokenizer(manifest, vocab_size: int) -> Path:
    """The folder of the prepared data's tokenizer of `vocab_size`, built on first use (locked)."""
    out = tokenizer_dir(manifest.root, vocab_size)
    if (out / "tokenizer.json").is_file():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(out.parent / f".wordpiece-{vocab_size}.lock", "w")
    except OSError as error:
        raise RuntimeError(f"{manifest.root}: no {out.relative_to(manifest.root)} tokenizer and the folder is not "
                           f"writable ({error}); build it where the data can be written: python -m "
                           f"convirt_fast.prepare tokenizer {manifest.root} --vocab-size {vocab_size}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "tokenizer.json").is_file():  # another rank may have built it meanwhile
            build_tokenizer(manifest, vocab_size)
    return out
