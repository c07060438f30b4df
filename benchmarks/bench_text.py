"""Text ops: sentence-index build and sentence sampling, C++ against the Python reference.

    pytest benchmarks/bench_text.py --benchmark-only

The corpus is the real IU reports (../shared/data/iu-reports) repeated to CONVIRT_BENCH_REPORTS
reports (default 200,000), or generated report text where that folder is absent. Each C++ case
records its speed-up over the reference case measured in the same run (`extra_info`).
Targets (DESIGN.md section 2): build >= 20x the reference on one thread; sampling a batch of 256
in under 20 microseconds.
"""

import csv
import os
import random
from pathlib import Path

import pytest

from convirt_fast import text as native
from convirt_fast.text import reference

NUM_REPORTS = int(os.environ.get("CONVIRT_BENCH_REPORTS", "200000"))
BATCH = 256
IU_REPORTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu-reports" / "reports.csv"

_medians: dict[str, float] = {}


def _base_reports() -> tuple[list[str], str]:
    if IU_REPORTS.exists():
        with open(IU_REPORTS, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        reports = []
        for row in rows:
            parts = [f"{h}: {row[k]}" for k, h in (("indication", "INDICATION"), ("comparison", "COMPARISON"),
                                                  ("findings", "FINDINGS"), ("impression", "IMPRESSION")) if row[k].strip()]
            reports.append("\n\n".join(parts))
        return reports, "iu-reports"
    rng = random.Random(0)
    sentences = ["The heart size is normal.", "There is no pleural effusion or pneumothorax.",
                 "Mild bibasilar atelectasis, e.g. at the left base, approx. 2.5 cm.",
                 "1. No acute cardiopulmonary process.", "Dr. ___ was notified at 10 a.m."]
    return [f"INDICATION: ___ with cough.\n\nFINDINGS: {' '.join(rng.choices(sentences, k=5))}\n\n"
            f"IMPRESSION: {rng.choice(sentences)}" for _ in range(2000)], "generated"


@pytest.fixture(scope="module")
def corpus():
    base, source = _base_reports()
    reports = (base * (NUM_REPORTS // len(base) + 1))[:NUM_REPORTS]
    return reports, source


def _record(benchmark, name: str, baseline: str | None, **info) -> None:
    median = benchmark.stats.stats.median
    _medians[name] = median
    benchmark.extra_info.update(info)
    if baseline and baseline in _medians:
        benchmark.extra_info[f"speedup_vs_{baseline}"] = round(_medians[baseline] / median, 2)


# Reference first: the C++ cases read its median from `_medians`.
@pytest.mark.parametrize("provider, threads", [("reference", 1), ("cpp", 1), ("cpp", 2)])
def test_index_build(benchmark, corpus, provider, threads):
    reports, source = corpus
    if provider == "reference":
        index = benchmark.pedantic(reference.SentenceIndex.build, args=(reports,), rounds=1, iterations=1)
    else:
        index = benchmark.pedantic(native.SentenceIndex.build, args=(reports,), kwargs={"threads": threads},
                                   rounds=3, iterations=1)
    name = f"build_{provider}_{threads}"
    _record(benchmark, name, "build_reference_1" if provider == "cpp" else None, reports=len(reports),
            sentences=index.num_sentences, corpus=source, threads=threads,
            reports_per_s=round(len(reports) / benchmark.stats.stats.median))


@pytest.fixture(scope="module")
def indexes(corpus):
    reports, _ = corpus
    return {"cpp": native.SentenceIndex.build(reports), "reference": reference.SentenceIndex.build(reports[:20000])}


@pytest.mark.parametrize("provider, method", [("reference", "sample"), ("cpp", "sample"), ("cpp", "sample_ids")])
def test_sample_batch(benchmark, indexes, provider, method):
    index = indexes[provider]
    empty = set(index.empty_report_ids())
    rng = random.Random(0)
    candidates = [i for i in range(len(index)) if i not in empty]
    batch = rng.sample(candidates, BATCH)
    epochs = iter(range(10**9))  # a new epoch per call: no caching can help
    sample = getattr(index, method)
    benchmark(lambda: sample(batch, seed=0, epoch=next(epochs)))
    _record(benchmark, f"{method}_{provider}", "sample_reference" if provider == "cpp" else None,
            batch=BATCH, microseconds=round(benchmark.stats.stats.median * 1e6, 2))
