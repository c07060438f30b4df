"""The end of every prepare: reports without a usable sentence dropped, the leakage check, then
the sentence index, the rejects file, the manifest and, last, manifest.json (the marker of a
finished prepare), each written atomically."""

from __future__ import annotations

import csv
import datetime as _dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from convirt_fast.data import rejects as R
from convirt_fast.io import file_sha256
from convirt_fast.data.leakage import assert_no_leakage
from convirt_fast.data.manifest import (
    FORMAT,
    MANIFEST_CSV,
    META_JSON,
    REJECTS_CSV,
    SENTENCE_INDEX,
    Study,
    split_counts,
    write_manifest_csv,
    write_meta,
)

MIN_TOKENS = 3  # the paper drops pairs whose text has fewer than 3 tokens


class PrepareError(RuntimeError):
    """Input that a prepare cannot use at all (a missing CSV, missing columns): the message
    names the file and the problem. Per-row problems go to the rejects file instead."""


@dataclass
class PrepareSummary:
    out: Path
    studies: int
    splits: dict[str, int]
    rejects: dict[str, int]
    images_written: int = 0
    images_skipped: int = 0
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items()))
        rej = ", ".join(f"{k} {v}" for k, v in self.rejects.items()) or "none"
        return (
            f"prepared {self.studies} studies in {self.out} ({splits}); "
            f"images written {self.images_written}, already present {self.images_skipped}; "
            f"rejected: {rej}"
        )


class LineCsvReader:
    """csv.DictReader that also tells where each record starts: iterating gives (line, row), line
    the physical 1-based line of the source text where the record begins, quoted multi-line
    fields counted (csv's own line_num is where a record ends). Rows as DictReader makes them:
    extra fields under the key None, missing ones None; empty lines skipped."""

    def __init__(self, lines: Iterable[str], fieldnames: Sequence[str] | None = None) -> None:
        # `lines`: a file opened with newline="" (or io.StringIO(text, newline="")), so that a
        # quoted newline reaches the csv module as it is.
        self.reader = csv.reader(lines)
        self.fieldnames: list[str] | None = list(fieldnames) if fieldnames is not None else next(self.reader, None)

    @property
    def line_num(self) -> int:
        """Lines read so far (the last line of the last record)."""
        return self.reader.line_num

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        names = self.fieldnames or []
        while True:
            start = self.reader.line_num + 1
            try:
                row = next(self.reader)
            except StopIteration:
                return
            if not row:
                continue
            rec = dict(zip(names, row))
            if len(row) > len(names):
                rec[None] = row[len(names):]
            else:
                for k in names[len(row):]:
                    rec[k] = None
            yield start, rec


def _sentence_index_cls():
    from convirt_fast.text import SentenceIndex

    return SentenceIndex


def _origins(studies: Sequence[Study], origins: Sequence[R.Origin] | None) -> list[R.Origin]:
    """Each study's origin for its rejects: the preparer's, else what the study itself holds."""
    if origins is not None:
        return list(origins)
    return [R.Origin(image=R.join_images(s.images), study_id=s.study_id, patient_id=s.patient_id) for s in studies]


def drop_empty_reports(
    studies: list[Study], keys: list, rejects: R.RejectLog, files: Sequence[str], origins: Sequence[R.Origin] | None = None
) -> tuple[list[Study], list]:
    """Reports that are empty or whitespace: rejected before indexing (their own reason).
    `origins[i]`: where study i comes from (R.Origin), for its reject entry."""
    kept, kept_keys = [], []
    for s, k, f, o in zip(studies, keys, files, _origins(studies, origins)):
        if not s.report.strip():
            rejects.add(s.study_id, f, R.EMPTY_REPORT, "report is empty or whitespace", o)
        else:
            kept.append(s)
            kept_keys.append(k)
    return kept, kept_keys


def finalize(
    out: Path,
    studies: list[Study],
    *,
    image_keys: list[Sequence[str]],
    report_files: Sequence[str],
    label_columns: Sequence[str],
    rejects: R.RejectLog,
    source: str,
    params: dict,
    images_written: int = 0,
    images_skipped: int = 0,
    threads: int = 0,
    extra_meta: dict | None = None,
    text: bool = True,
    reject_origins: Sequence[R.Origin] | None = None,
) -> PrepareSummary:
    """Indexes, checks and writes a prepared data set. `image_keys[i]` identifies study i's
    source image files for the leakage check; `report_files[i]` names its report in rejects;
    `reject_origins[i]` (optional) says where study i comes from (table, start line, source image
    paths, ids) for the rejects made here (empty report, no usable sentence); without it the
    entries give the study's ids and output images.
    `text=False`: an image-only evaluation set (RSNA, CheXpert, ...): no report is required and
    no sentence index is written (manifest.json says "text": false)."""
    out = Path(out)
    if not text:
        return _write_prepared(out, studies, image_keys, label_columns, rejects, source, params,
                               images_written, images_skipped, extra_meta)
    origins = _origins(studies, reject_origins)
    files = {s.study_id: (f, o) for s, f, o in zip(studies, report_files, origins)}
    studies, image_keys = drop_empty_reports(studies, image_keys, rejects, report_files, origins)
    SentenceIndex = _sentence_index_cls()
    index = SentenceIndex.build([s.report for s in studies], threads=threads, min_tokens=MIN_TOKENS, sections=True)
    empty = set(index.empty_report_ids())
    if empty:
        for i in sorted(empty):
            f, o = files.get(studies[i].study_id, ("", None))
            rejects.add(
                studies[i].study_id,
                f,
                R.NO_SENTENCE,
                f"no sentence of >= {MIN_TOKENS} tokens in Findings/Impression",
                o,
            )
        studies = [s for i, s in enumerate(studies) if i not in empty]
        image_keys = [k for i, k in enumerate(image_keys) if i not in empty]
        index = SentenceIndex.build([s.report for s in studies], threads=threads, min_tokens=MIN_TOKENS, sections=True)
    return _write_prepared(out, studies, image_keys, label_columns, rejects, source, params, images_written,
                           images_skipped, extra_meta, index)


def _write_prepared(out, studies, image_keys, label_columns, rejects, source, params, images_written,
                    images_skipped, extra_meta, index=None) -> PrepareSummary:
    """The folder's files, manifest.json last (a folder without it is unfinished). `index`: the
    sentence index of a paired set; None for an image-only evaluation set ("text": false)."""
    if not studies:
        raise PrepareError(f"{out}: no study left to prepare; see the rejects ({rejects.counts()})")
    assert_no_leakage(studies, image_keys, what=str(out))
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_JSON
    meta_path.unlink(missing_ok=True)  # from here on the folder is unfinished until rewritten
    if index is not None:
        index.save(str(out / SENTENCE_INDEX))
    rejects.write(out / REJECTS_CSV)
    manifest_sha = write_manifest_csv(out / MANIFEST_CSV, studies, label_columns)
    splits = split_counts(studies)
    meta = {
        "format": FORMAT,
        "source": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "label_columns": list(label_columns),
        "studies": len(studies),
        "splits": splits,
        **({"sentences": index.num_sentences} if index is not None else {"text": False}),
        "rejects": rejects.counts(),
        "manifest": MANIFEST_CSV,
        "manifest_sha256": manifest_sha,
        **({"sentence_index": SENTENCE_INDEX, "sentence_index_sha256": file_sha256(out / SENTENCE_INDEX)}
           if index is not None else {}),
        "rejects_file": REJECTS_CSV,
        **(extra_meta or {}),
    }
    write_meta(meta_path, meta)
    return PrepareSummary(out, len(studies), splits, rejects.counts(), images_written, images_skipped)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
