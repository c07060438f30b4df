"""Report text ops: section extraction, sentence splitting, and the sentence index.

The functions here are the C++ implementations (`convirt_fast._C`, built from `csrc/`);
`convirt_fast.text.reference` holds the pure-Python reference with identical output.
"""

from convirt_fast.text.ops import (
    IndexFormatError,
    SentenceIndex,
    count_tokens,
    extract_sections,
    split_sentences,
)

__all__ = ["IndexFormatError", "SentenceIndex", "count_tokens", "extract_sections", "split_sentences"]
