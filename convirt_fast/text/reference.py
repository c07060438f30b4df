"""Pure-Python reference of the C++ text ops (`convirt_fast._C`), output identical by contract.

Tests compare the two on generated and real text; benchmarks measure the C++ speed-up against
this module. It favours being obviously correct over being fast, but it is not slowed on purpose.

All decisions look at ASCII characters only (whitespace, letters, digits, punctuation), so the
C++ code, which walks UTF-8 bytes, and this code, which walks code points, agree on any text:
a non-ASCII character is never whitespace, never a letter of a header and always word content.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

# ----------------------------------------------------------------------------------------------
# Character classes (ASCII only, see the module docstring).

WHITESPACE = " \t\n\r\f\v"
_HORIZONTAL_WHITESPACE = " \t\r\f\v"
# Characters allowed between the words of a header ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION").
_HEADER_SEPARATORS = " \t/&-"
# Closing characters that may follow a full stop before the sentence really ends: 'clear.)'.
_CLOSERS = ")]\"'"
# At most this many words in a header: longer all-caps lines are text, not headers.
MAX_HEADER_WORDS = 6


def _is_ws(c: str) -> bool:
    return c in WHITESPACE


def _is_alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _is_alnum(c: str) -> bool:
    return _is_alpha(c) or _is_digit(c)


def _upper(s: str) -> str:
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in s)


def _lower(s: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def _strip(s: str) -> str:
    return s.strip(WHITESPACE)


# ----------------------------------------------------------------------------------------------
# Section extraction.

#: Sections kept for training (PAPER.md: Findings and Impression).
KEPT_SECTIONS = frozenset(
    {
        "FINDINGS",
        "FINDING",
        "IMPRESSION",
        "IMPRESSIONS",
        "FINDINGS AND IMPRESSION",
        "FINDINGS AND IMPRESSIONS",
        "FINDINGS IMPRESSION",  # written "FINDINGS/IMPRESSION"
        "CONCLUSION",
        "CONCLUSIONS",
    }
)
#: Known header boilerplate: never kept, also not by the fallback.
BOILERPLATE_SECTIONS = frozenset(
    {
        "EXAMINATION",
        "EXAM",
        "TYPE OF EXAMINATION",
        "INDICATION",
        "INDICATIONS",
        "HISTORY",
        "CLINICAL HISTORY",
        "CLINICAL INFORMATION",
        "CLINICAL INDICATION",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "TECHNIQUE",
        "COMPARISON",
        "COMPARISONS",
        "NOTIFICATION",
        "RECOMMENDATION",
        "RECOMMENDATIONS",
        "WET READ",
        "PROCEDURE",
        "ADDENDUM",
    }
)
_FINAL_REPORT_LINE = "FINAL REPORT"


def _match_header(text: str, p: int) -> tuple[list[str], int] | None:
    """Words of a header candidate starting at p (a letter), and the index after its colon."""
    n = len(text)
    words: list[str] = []
    i = p
    while True:
        j = i
        while j < n and _is_alpha(text[j]):
            j += 1
        words.append(text[i:j])
        k = j
        while k < n and text[k] in _HEADER_SEPARATORS:
            k += 1
        if k < n and text[k] == ":":
            return words, k + 1
        if k > j and k < n and _is_alpha(text[k]) and len(words) < MAX_HEADER_WORDS:
            i = k
            continue
        return None


def _at_line_start(text: str, p: int) -> bool:
    i = p - 1
    while i >= 0 and text[i] in _HORIZONTAL_WHITESPACE:
        i -= 1
    return i < 0 or text[i] == "\n"


def _is_header(words: list[str], line_start: bool) -> tuple[str, bool]:
    """(normalised name, whether it is a header). See `find_headers` for the rules."""
    name = " ".join(_upper(w) for w in words)
    all_caps = all(not ("a" <= c <= "z") for w in words for c in w)
    if name in KEPT_SECTIONS:
        return name, True
    if name in BOILERPLATE_SECTIONS:
        return name, line_start or all_caps
    letters = sum(len(w) for w in words)
    return name, line_start and all_caps and letters >= 3


def find_headers(text: str) -> list[tuple[str, int, int]]:
    """Section headers as (normalised name, start of header, start of body).

    A header is 1-6 words of ASCII letters joined by spaces, '/', '&' or '-', then a colon,
    starting at a word boundary. It counts as a header when it is
    - a kept section (FINDINGS, IMPRESSION, FINDINGS AND IMPRESSION, ...), in any case, anywhere:
      "findings: ... impression: ..." on one line works;
    - a known boilerplate section (INDICATION, COMPARISON, ...) at the start of a line in any
      case, or anywhere when written in capitals (so "no change since the prior exam:" inside a
      finding does not cut it);
    - any other all-capitals name of 3+ letters at the start of a line ("PA AND LATERAL CHEST:").
    """
    headers = []
    n = len(text)
    p = 0
    while p < n:
        c = text[p]
        if _is_alpha(c) and (p == 0 or not _is_alnum(text[p - 1])):
            match = _match_header(text, p)
            if match is not None:
                name, is_header = _is_header(match[0], _at_line_start(text, p))
                if is_header:
                    headers.append((name, p, match[1]))
                    p = match[1]
                    continue
            # Not a header here: the next candidate is the next word.
            while p < n and _is_alpha(text[p]):
                p += 1
            continue
        p += 1
    return headers


def _drop_final_report_lines(text: str) -> str:
    lines = text.split("\n")
    return "\n".join(line for line in lines if _upper(_strip(line)) != _FINAL_REPORT_LINE)


def extract_sections(report: str) -> str:
    """The Findings and Impression sections of a radiology report, joined by a blank line.

    Header rules: `find_headers`. When the report has a kept section, only kept sections are
    returned, stripped, in document order (possibly "" when they are empty). When it has none,
    the fallback keeps what is not header boilerplate: the text before the first header (without
    a "FINAL REPORT" title line) and the bodies of unknown sections; a report with no headers
    at all comes back whole, stripped.
    """
    headers = find_headers(report)
    bodies = []
    for k, (name, _, body_start) in enumerate(headers):
        body_end = headers[k + 1][1] if k + 1 < len(headers) else len(report)
        bodies.append((name, _strip(report[body_start:body_end])))
    kept = [body for name, body in bodies if name in KEPT_SECTIONS]
    if not any(name in KEPT_SECTIONS for name, _ in bodies):
        preamble_end = headers[0][1] if headers else len(report)
        kept = [_strip(_drop_final_report_lines(report[:preamble_end]))]
        kept += [body for name, body in bodies if name not in BOILERPLATE_SECTIONS]
    return "\n\n".join(body for body in kept if body)


# ----------------------------------------------------------------------------------------------
# Sentence splitting.

#: Tokens (lower-case, without their final '.') after which a full stop does not end a sentence.
ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "approx", "vs", "dr", "mr", "mrs", "ms", "st", "fig", "cf", "incl", "a.m", "p.m"}
)
# A list marker is 1-2 digits and '.' or ')', then whitespace: "1. ", "2) ".
_MAX_MARKER_DIGITS = 2


def _is_placeholder(core: str) -> bool:
    """De-identification marks stand for removed words: "XXXX" (IU) ("___" has no letters)."""
    return len(core) >= 3 and all(c == "X" for c in core)


def _counts_as_token(token: str) -> bool:
    has_content = any(_is_alnum(c) or ord(c) >= 128 for c in token)
    if not has_content:
        return False
    start, end = 0, len(token)
    while start < end and ord(token[start]) < 128 and not _is_alnum(token[start]):
        start += 1
    while end > start and ord(token[end - 1]) < 128 and not _is_alnum(token[end - 1]):
        end -= 1
    return not _is_placeholder(token[start:end])


def _ws_tokens(text: str) -> list[str]:
    tokens, start = [], None
    for i, c in enumerate(text):
        if _is_ws(c):
            if start is not None:
                tokens.append(text[start:i])
                start = None
        elif start is None:
            start = i
    if start is not None:
        tokens.append(text[start:])
    return tokens


def count_tokens(sentence: str) -> int:
    """Words that carry content: whitespace-separated pieces with a letter, a digit or a
    non-ASCII character, de-identification placeholders ("___", "XXXX") excluded."""
    return sum(_counts_as_token(t) for t in _ws_tokens(sentence))


def _collapse_whitespace(text: str) -> str:
    return " ".join(_ws_tokens(text))


def _list_marker_at(text: str, p: int) -> tuple[int, int] | None:
    """(number, end) of a list marker "12. " / "3) " at p, or None."""
    n = len(text)
    j = p
    while j < n and j - p < _MAX_MARKER_DIGITS + 1 and _is_digit(text[j]):
        j += 1
    digits = j - p
    if digits == 0 or digits > _MAX_MARKER_DIGITS:
        return None
    if j < n and text[j] in ".)" and (j + 1 == n or _is_ws(text[j + 1])):
        return int(text[p:j]), j + 1
    return None


def _is_blank_line_break(text: str, p: int) -> bool:
    """True at a '\\n' followed by an empty (or whitespace-only) line."""
    j = p + 1
    n = len(text)
    while j < n and text[j] in _HORIZONTAL_WHITESPACE:
        j += 1
    return j < n and text[j] == "\n"


def split_sentences(text: str) -> list[str]:
    """Sentences of report text, whitespace collapsed, each with at least one counted token.

    A sentence ends at '.', '!' or '?' followed (after optional closing brackets or quotes) by
    whitespace or the end, except a full stop after an abbreviation ("e.g.", "approx.", "Dr.");
    decimals ("2.5 cm") never end one since no whitespace follows their point. A blank line ends
    a sentence (it ends a section). List markers ("1. ", "2) ") end the sentence before them and
    are dropped; one is recognised at the start of a sentence or of a line, or inside a sentence
    when it continues the current list's numbering ("1. Opacity 2. No effusion"). Single line
    breaks are wrapping, not boundaries. The minimum-token filter (PAPER.md: 3) belongs to the
    sentence index, not to this function.
    """
    sentences: list[str] = []
    n = len(text)
    start = 0  # where the current sentence's text begins
    list_number = 0  # last list marker's number since the last blank line; 0: no list
    last_content = -1  # position of the last non-whitespace character stepped over

    def emit(end: int) -> None:
        sentence = _collapse_whitespace(text[start:end])
        if sentence and count_tokens(sentence) > 0:
            sentences.append(sentence)

    p = 0
    while p < n:
        c = text[p]
        if c == "\n" and _is_blank_line_break(text, p):
            emit(p)
            start = p + 1
            list_number = 0
            p += 1
            continue
        if _is_digit(c) and (p == 0 or _is_ws(text[p - 1])):
            marker = _list_marker_at(text, p)
            if marker is not None:
                number, end = marker
                sentence_empty = last_content < start
                if sentence_empty or _at_line_start(text, p) or (list_number and number == list_number + 1):
                    emit(p)
                    start = end
                    list_number = number
                    p = end
                    continue
        if c in ".!?":
            j = p + 1
            while j < n and text[j] in _CLOSERS:
                j += 1
            if j == n or _is_ws(text[j]):
                if c == "." and _is_abbreviation(text, start, p):
                    last_content = p
                    p += 1
                    continue
                emit(j)
                start = j
                p = j
                continue
        if not _is_ws(c):
            last_content = p
        p += 1
    emit(n)
    return sentences


def _is_abbreviation(text: str, start: int, dot: int) -> bool:
    """Whether the token ending at the full stop `dot` is an abbreviation."""
    i = dot
    while i > start and not _is_ws(text[i - 1]):
        i -= 1
    while i < dot and text[i] in "([\"'":
        i += 1
    return _lower(text[i:dot]) in ABBREVIATIONS


# ----------------------------------------------------------------------------------------------
# Sampling: a pure function of (seed, epoch, report id, draw).

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_choice(seed: int, epoch: int, report_id: int, draw: int, count: int) -> int:
    """Which of `count` sentences a report gets: uniform, from the 64-bit hash of its key."""
    key = splitmix64(seed & _MASK64)
    key = splitmix64(key ^ (epoch & _MASK64))
    key = splitmix64(key ^ (report_id & _MASK64))
    key = splitmix64(key ^ (draw & _MASK64))
    return (key * count) >> 64


# ----------------------------------------------------------------------------------------------
# The sentence index and its file format (shared with C++; see csrc/sentence_index.h).

MAGIC = b"CVXSIDX\0"
VERSION = 1
# magic, version, min_tokens, num_reports, num_sentences, text_bytes, text_checksum
_HEADER = struct.Struct("<8sIIQQQQ")


def fnv1a64(data: bytes | memoryview) -> int:
    h = 0xCBF29CE484222325
    for b in bytes(data):
        h = ((h ^ b) * 0x100000001B3) & _MASK64
    return h


class IndexFormatError(ValueError):
    """A sentence index file that is not one, or is truncated or corrupt."""


class SentenceIndex:
    """Report -> sentences, in CSR layout: sentence spans in one UTF-8 buffer.

    `report_offsets[r]:report_offsets[r+1]` are report r's sentences; `sentence_offsets[s]:
    sentence_offsets[s+1]` is sentence s's byte span in `text`.
    """

    def __init__(self, report_offsets: Sequence[int], sentence_offsets: Sequence[int], text: bytes | memoryview, min_tokens: int):
        self.report_offsets = report_offsets
        self.sentence_offsets = sentence_offsets
        self.text = text
        self.min_tokens = min_tokens
        self._mmap = None

    @classmethod
    def build(cls, reports: Iterable[str], *, threads: int = 0, min_tokens: int = 3, sections: bool = True) -> "SentenceIndex":
        """Index `reports`: sections extracted (if `sections`), split, sentences with fewer than
        `min_tokens` counted tokens dropped. `threads` is accepted for API parity and ignored."""
        del threads
        report_offsets, sentence_offsets = [0], [0]
        chunks: list[bytes] = []
        size = 0
        for report in reports:
            text = extract_sections(report) if sections else report
            for sentence in split_sentences(text):
                if count_tokens(sentence) < min_tokens:
                    continue
                encoded = sentence.encode("utf-8")
                chunks.append(encoded)
                size += len(encoded)
                sentence_offsets.append(size)
            report_offsets.append(len(sentence_offsets) - 1)
        return cls(report_offsets, sentence_offsets, b"".join(chunks), min_tokens)

    def __len__(self) -> int:
        return len(self.report_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    def _check_report(self, report_id: int) -> int:
        if not 0 <= report_id < len(self):
            raise IndexError(f"report id {report_id} out of range for an index of {len(self)} reports")
        return report_id

    def _sentence(self, s: int) -> str:
        return bytes(self.text[self.sentence_offsets[s] : self.sentence_offsets[s + 1]]).decode("utf-8")

    def sentences(self, report_id: int) -> list[str]:
        r = self._check_report(report_id)
        return [self._sentence(s) for s in range(self.report_offsets[r], self.report_offsets[r + 1])]

    def empty_report_ids(self) -> list[int]:
        """Reports left with no sentence (to drop, and count, before training)."""
        return [r for r in range(len(self)) if self.report_offsets[r] == self.report_offsets[r + 1]]

    def sample_ids(self, report_ids: Iterable[int], *, seed: int, epoch: int, draw: int = 0) -> list[int]:
        """Global sentence ids, one per report id (see `sample`)."""
        out = []
        for report_id in report_ids:
            r = self._check_report(report_id)
            first, count = self.report_offsets[r], self.report_offsets[r + 1] - self.report_offsets[r]
            if count == 0:
                raise ValueError(f"report {r} has no sentence to sample (see empty_report_ids())")
            out.append(first + sample_choice(seed, epoch, r, draw, count))
        return out

    def sample(self, report_ids: Iterable[int], *, seed: int, epoch: int, draw: int = 0) -> list[str]:
        """One sentence per report id, uniform over its sentences, a pure function of (seed,
        epoch, report id, draw): independent of batch order, rank and worker count."""
        return [self._sentence(s) for s in self.sample_ids(report_ids, seed=seed, epoch=epoch, draw=draw)]

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file, then rename)."""
        path = Path(path)
        text = bytes(self.text)
        header = _HEADER.pack(MAGIC, VERSION, self.min_tokens, len(self), self.num_sentences, len(text), fnv1a64(text))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(struct.pack(f"<{len(self.report_offsets)}q", *self.report_offsets))
                f.write(struct.pack(f"<{len(self.sentence_offsets)}q", *self.sentence_offsets))
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = False) -> "SentenceIndex":
        """Memory-map an index file. Sizes and offsets are validated; `verify` also checks the
        text checksum (which reads the whole file)."""
        path = Path(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                raise IndexFormatError(f"{path}: not a sentence index (truncated: {size} bytes, header needs {_HEADER.size})")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapped)
        magic, version, min_tokens, num_reports, num_sentences, text_bytes, checksum = _HEADER.unpack_from(view, 0)
        if magic != MAGIC:
            raise IndexFormatError(f"{path}: not a sentence index (bad magic {magic!r})")
        if version != VERSION:
            raise IndexFormatError(f"{path}: sentence index version {version}, this build reads {VERSION}")
        expected = _HEADER.size + 8 * (num_reports + 1) + 8 * (num_sentences + 1) + text_bytes
        if size != expected:
            state = "truncated" if size < expected else "has trailing bytes"
            raise IndexFormatError(f"{path}: sentence index {state}: {size} bytes, header says {expected}")
        r0 = _HEADER.size
        s0 = r0 + 8 * (num_reports + 1)
        t0 = s0 + 8 * (num_sentences + 1)
        report_offsets = view[r0:s0].cast("q")
        sentence_offsets = view[s0:t0].cast("q")
        text = view[t0:]
        _check_offsets(path, "report", report_offsets, num_sentences)
        _check_offsets(path, "sentence", sentence_offsets, text_bytes)
        if verify and fnv1a64(text) != checksum:
            raise IndexFormatError(f"{path}: sentence index text checksum mismatch (corrupt file)")
        index = cls(report_offsets, sentence_offsets, text, min_tokens)
        index._mmap = mapped
        return index


def _check_offsets(path: Path, what: str, offsets: memoryview, last: int) -> None:
    if offsets[0] != 0 or offsets[len(offsets) - 1] != last:
        raise IndexFormatError(f"{path}: corrupt sentence index ({what} offsets do not span 0..{last})")
    previous = 0
    for value in offsets:
        if value < previous:
            raise IndexFormatError(f"{path}: corrupt sentence index ({what} offsets decrease)")
        previous = value
