"""The C++ text ops (`convirt_fast._C`), with a clear message when the extension is missing."""

try:
    from convirt_fast import _C
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "convirt_fast._C (the C++ text ops) is not built: install the package with "
        "`pip install -e .` from the repository root (needs a C++17 compiler and CMake)"
    ) from error

IndexFormatError = _C.IndexFormatError
SentenceIndex = _C.SentenceIndex
count_tokens = _C.count_tokens
extract_sections = _C.extract_sections
split_sentences = _C.split_sentences
