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

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser of a 64-bit key (the C++ one; any Python int, taken mod 2^64)."""
    return _C.splitmix64(x & _MASK64)


def sample_choice(seed: int, epoch: int, report_id: int, draw: int, count: int) -> int:
    """Which of `count` items the key (seed, epoch, report id, draw) gets: uniform, from its
    64-bit hash. The sentence index draws sentences with it; the study sampler images and
    replacement studies (the C++ one; integers taken mod 2^64)."""
    return _C.sample_choice(seed & _MASK64, epoch & _MASK64, report_id & _MASK64, draw & _MASK64, count)
