"""The C++ text ops against their pure-Python reference, and their behaviour on report text."""

import csv
import random
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convirt_fast import text as native
from convirt_fast.text import reference

IMPLEMENTATIONS = [pytest.param(native, id="cpp"), pytest.param(reference, id="reference")]

# Pieces of report language, headers and traps, for generated text.
FRAGMENTS = [
    "FINDINGS:", "IMPRESSION:", "findings:", "Impression :", "FINDINGS AND IMPRESSION:",
    "FINDINGS/IMPRESSION:", "INDICATION:", "COMPARISON:", "exam:", "EXAM:", "FINAL REPORT",
    "PA AND LATERAL CHEST:", "Wet read:", "The", "lungs", "are", "clear", "heart", "size",
    "is", "normal", "no", "pneumothorax", "2.5", "cm", "0.5", "e.g.", "i.e.", "approx.", "Dr.",
    "a.m.", "___", "XXXX", "1.", "2.", "3)", "12.", "123.", ".", "...", "!", "?", ")", "(", '"',
    "'", "\n", "\n\n", " \n \n", "\r\n", "\t", "  ", "é", "肺", "—", "\u00a0", "\u2028", ":",
    "/", "-", "&", "5", "C7.", "etc.",
]

fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=60
).flatmap(lambda parts: st.lists(st.sampled_from(["", " ", "\n"]), min_size=len(parts), max_size=len(parts)).map(
    lambda seps: "".join(p + s for p, s in zip(parts, seps))
))


def iu_reports(shared_data):
    """Real IU X-ray reports composed into MIMIC-style text (see shared/data/README.md)."""
    path = shared_data / "iu-reports" / "reports.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    reports = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parts = [f"{h}: {row[k]}" for k, h in
                     (("indication", "INDICATION"), ("comparison", "COMPARISON"),
                      ("findings", "FINDINGS"), ("impression", "IMPRESSION")) if row[k].strip()]
            reports.append("\n\n".join(parts))
    return reports


# ----------------------------------------------------------------------------------------------
# C++ == reference


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fragment_text)
def test_identical_on_generated_text(text):
    assert native.extract_sections(text) == reference.extract_sections(text)
    assert native.split_sentences(text) == reference.split_sentences(text)
    assert native.count_tokens(text) == reference.count_tokens(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_identical_on_arbitrary_unicode(text):
    assert native.extract_sections(text) == reference.extract_sections(text)
    assert native.split_sentences(text) == reference.split_sentences(text)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragment_text, max_size=12), st.integers(0, 4), st.integers(1, 3))
def test_identical_index_files(tmp_path_factory, reports, min_tokens, threads):
    folder = tmp_path_factory.mktemp("index")
    native.SentenceIndex.build(reports, threads=threads, min_tokens=min_tokens).save(folder / "c.idx")
    reference.SentenceIndex.build(reports, min_tokens=min_tokens).save(folder / "r.idx")
    assert (folder / "c.idx").read_bytes() == (folder / "r.idx").read_bytes()


def test_identical_on_real_reports(shared_data, tmp_path):
    reports = iu_reports(shared_data)
    assert len(reports) > 1000
    for report in reports:
        extracted = native.extract_sections(report)
        assert extracted == reference.extract_sections(report)
        assert native.split_sentences(extracted) == reference.split_sentences(extracted)
    native.SentenceIndex.build(reports, threads=2).save(tmp_path / "c.idx")
    reference.SentenceIndex.build(reports).save(tmp_path / "r.idx")
    assert (tmp_path / "c.idx").read_bytes() == (tmp_path / "r.idx").read_bytes()


def test_real_reports_give_real_sentences(shared_data):
    reports = iu_reports(shared_data)
    index = native.SentenceIndex.build(reports)
    # Most IU reports have findings or an impression; each gives a few sentences.
    assert len(index.empty_report_ids()) < 0.05 * len(reports)
    assert 2.0 < index.num_sentences / len(reports) < 10.0
    for r in random.Random(0).sample(range(len(reports)), 50):
        for sentence in index.sentences(r):
            assert native.count_tokens(sentence) >= 3
            assert not sentence.startswith(("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"))


# ----------------------------------------------------------------------------------------------
# Behaviour, on both implementations

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
class TestBehaviour:
    def test_mimic_layout(self, impl):
        assert impl.extract_sections(MIMIC_REPORT) == (
            "There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral\n"
            " nodular opacities that most likely represent nipple shadows.\n\n"
            "No acute cardiopulmonary process."
        )

    @pytest.mark.parametrize("report, expected", [
        ("FINDINGS: Lungs clear. IMPRESSION: Normal.", "Lungs clear.\n\nNormal."),
        ("findings: lungs clear.\nimpression: normal.", "lungs clear.\n\nnormal."),
        ("Findings : lungs clear.", "lungs clear."),
        ("INDICATION: x\nFINDINGS AND IMPRESSION: No change.", "No change."),
        ("INDICATION: x\nFINDINGS/IMPRESSION: No change.", "No change."),
        ("CONCLUSION: Stable.", "Stable."),
        ("FINDINGS: The heart is normal.\nNOTIFICATION: called Dr. ___.", "The heart is normal."),
    ])
    def test_sections(self, impl, report, expected):
        assert impl.extract_sections(report) == expected

    @pytest.mark.parametrize("report, expected", [
        # No findings or impression: the text after header boilerplate.
        ("FINAL REPORT\nINDICATION: cough\nCOMPARISON: none\nPA AND LATERAL CHEST: Lungs clear.", "Lungs clear."),
        ("Heart size is normal. Lungs are clear.", "Heart size is normal. Lungs are clear."),
        ("Pt with cough.\nTECHNIQUE: PA view.", "Pt with cough."),
        ("INDICATION: cough\nCOMPARISON: none", ""),
        ("", ""),
        ("   \n\t  ", ""),
        # A lower-case boilerplate word mid-sentence is not a header.
        ("Unchanged since the prior exam: stable.", "Unchanged since the prior exam: stable."),
    ])
    def test_fallback(self, impl, report, expected):
        assert impl.extract_sections(report) == expected

    @pytest.mark.parametrize("text, expected", [
        ("", []),
        ("  \n\t ", []),
        ("A 2.5 cm nodule. No effusion.", ["A 2.5 cm nodule.", "No effusion."]),
        ("Opacity, e.g. atelectasis, approx. 3 cm, i.e. small. Next.", ["Opacity, e.g. atelectasis, approx. 3 cm, i.e. small.", "Next."]),
        ("Dr. ___ was notified at 10 a.m. on ___ by phone. Done.", ["Dr. ___ was notified at 10 a.m. on ___ by phone.", "Done."]),
        ("1. Left lower lobe opacity. 2. Small effusion.", ["Left lower lobe opacity.", "Small effusion."]),
        ("1. Opacity\n2. Effusion\n3. Cardiomegaly", ["Opacity", "Effusion", "Cardiomegaly"]),
        ("1) Opacity 2) Effusion", ["Opacity", "Effusion"]),
        ("Fractures of ribs 5 and 6. Heart normal.", ["Fractures of ribs 5 and 6.", "Heart normal."]),
        ("Lungs are\n   clear without\nopacity", ["Lungs are clear without opacity"]),
        ("Lungs clear\n\nHeart normal", ["Lungs clear", "Heart normal"]),
        ("No pneumothorax!  Really?  Yes.   ", ["No pneumothorax!", "Really?", "Yes."]),
        ("(See prior.) Stable.", ["(See prior.)", "Stable."]),
        ("XXXX XXXX. The XXXX is normal.", ["The XXXX is normal."]),
        ("Épanchement pleural gauche. 胸水あり。", ["Épanchement pleural gauche.", "胸水あり。"]),
        ("___. ___", []),
    ])
    def test_split(self, impl, text, expected):
        assert impl.split_sentences(text) == expected

    @pytest.mark.parametrize("sentence, tokens", [
        ("", 0), ("No effusion.", 2), ("Dr. ___ was paged.", 3), ("XXXX XXXX normal.", 1),
        ("A 2.5 cm nodule.", 4), ("- , .", 0), ("Épanchement", 1),
    ])
    def test_count_tokens(self, impl, sentence, tokens):
        assert impl.count_tokens(sentence) == tokens

    def test_one_megabyte_report(self, impl):
        sentence = "The heart size is normal and there is no effusion at 2.5 cm. "
        body = sentence * (1_000_000 // len(sentence) + 1)
        report = f"INDICATION: x\nFINDINGS: {body}\nIMPRESSION: Normal chest radiograph."
        extracted = impl.extract_sections(report)
        assert len(extracted) > 1_000_000
        sentences = impl.split_sentences(extracted)
        assert len(sentences) == body.count(". ") + 1
        assert sentences[-1] == "Normal chest radiograph."

    def test_index_minimum_tokens_and_empty_reports(self, impl):
        reports = ["FINDINGS: The heart is normal. Lungs clear.", "", "   ", "IMPRESSION: No acute process.",
                   "FINDINGS: ___. XXXX."]
        index = impl.SentenceIndex.build(reports, min_tokens=3)
        assert len(index) == 5
        assert index.sentences(0) == ["The heart is normal."]  # "Lungs clear." has 2 tokens
        assert index.sentences(3) == ["No acute process."]
        assert list(index.empty_report_ids()) == [1, 2, 4]
        with pytest.raises(ValueError, match="no sentence"):
            index.sample([1], seed=0, epoch=0)
        with pytest.raises(IndexError, match="out of range"):
            index.sentences(5)
        with pytest.raises(IndexError, match="out of range"):
            index.sample([-1], seed=0, epoch=0)

    def test_index_without_section_extraction(self, impl):
        index = impl.SentenceIndex.build(["INDICATION: chest pain today. The lungs are clear."], sections=False)
        assert index.sentences(0) == ["INDICATION: chest pain today.", "The lungs are clear."]


# ----------------------------------------------------------------------------------------------
# Sampling


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(1)
    words = ["lungs", "heart", "clear", "normal", "effusion", "opacity", "stable", "mild", "no", "left"]
    reports = []
    for r in range(300):
        n = rng.randint(1, 7)
        reports.append("FINDINGS: " + " ".join(f"Sentence {r} {s} " + " ".join(rng.choices(words, k=3)) + "." for s in range(n)))
    return reports


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_sampling_is_a_pure_function(impl, corpus):
    index = impl.SentenceIndex.build(corpus)
    ids = list(range(len(corpus)))
    first = index.sample(ids, seed=7, epoch=3)
    assert index.sample(ids, seed=7, epoch=3) == first
    # Independent of batch order...
    order = ids[:]
    random.Random(0).shuffle(order)
    assert index.sample(order, seed=7, epoch=3) == [first[i] for i in order]
    # ...and of how ids are split across ranks and batches.
    shards = [ids[rank::3] for rank in range(3)]
    by_rank = {i: s for shard in shards for i, s in zip(shard, index.sample(shard, seed=7, epoch=3))}
    assert [by_rank[i] for i in ids] == first
    # Each choice is one of the report's own sentences.
    for i in ids:
        assert first[i] in index.sentences(i)
    # Another epoch, seed or draw gives other choices for reports with several sentences.
    multi = [i for i in ids if len(index.sentences(i)) > 1]
    for other in (dict(seed=7, epoch=4), dict(seed=8, epoch=3), dict(seed=7, epoch=3, draw=1)):
        again = index.sample(multi, **other)
        assert sum(a != first[i] for a, i in zip(again, multi)) > len(multi) // 4


def test_sampling_is_uniform(corpus):
    from scipy.stats import chisquare

    index = native.SentenceIndex.build(corpus)
    counts = {i: len(index.sentences(i)) for i in range(len(index))}
    report = max(counts, key=counts.get)
    k = counts[report]
    draws = Counter(int(s) for epoch in range(20_000) for s in index.sample_ids([report], seed=11, epoch=epoch))
    observed = [draws[s] for s in sorted(draws)]
    assert len(observed) == k
    assert chisquare(observed).pvalue > 1e-3
    # Across reports in one epoch too: the chosen position within each report is uniform.
    positions = Counter()
    four = [i for i in range(len(index)) if counts[i] == 4]
    for epoch in range(40):
        for i, sentence in zip(four, index.sample(four, seed=5, epoch=epoch)):
            positions[index.sentences(i).index(sentence)] += 1
    assert chisquare([positions[j] for j in range(4)]).pvalue > 1e-3


def test_sample_ids_match_reference(corpus):
    c, r = native.SentenceIndex.build(corpus), reference.SentenceIndex.build(corpus)
    ids = list(range(len(corpus))) * 3
    for seed, epoch, draw in [(0, 0, 0), (-5, 2**40, 3), (2**62, -1, -7)]:
        assert list(c.sample_ids(ids, seed=seed, epoch=epoch, draw=draw)) == r.sample_ids(ids, seed=seed, epoch=epoch, draw=draw)


def test_sample_accepts_arrays(corpus):
    import numpy as np

    index = native.SentenceIndex.build(corpus)
    ids = [3, 1, 4, 1, 5]
    assert index.sample(np.array(ids), seed=1, epoch=2) == index.sample(ids, seed=1, epoch=2)
    assert index.sample(tuple(ids), seed=1, epoch=2) == index.sample(ids, seed=1, epoch=2)
    with pytest.raises(TypeError):
        index.sample(["a"], seed=1, epoch=2)
    with pytest.raises(TypeError, match="expected str"):
        native.SentenceIndex.build(["ok", 3])


def test_threads_do_not_change_the_index(corpus, tmp_path):
    for threads in (1, 2, 5, 0):
        native.SentenceIndex.build(corpus, threads=threads).save(tmp_path / f"{threads}.idx")
    blobs = {p.read_bytes() for p in tmp_path.glob("*.idx")}
    assert len(blobs) == 1


def test_build_releases_the_gil(corpus):
    reports = corpus * 400
    start = time.perf_counter()
    native.SentenceIndex.build(reports, threads=1)
    assert time.perf_counter() - start > 0.05, "corpus too small to observe the GIL"

    def longest_pause_during_build() -> tuple[float, float]:
        """While another thread builds, this one keeps running: its longest pause stays far
        below the build time (with the GIL held it would be the whole build)."""
        worker = threading.Thread(target=native.SentenceIndex.build, args=(reports,), kwargs={"threads": 1})
        longest_pause, started = 0.0, time.perf_counter()
        last = started
        worker.start()
        while worker.is_alive():
            now = time.perf_counter()
            longest_pause, last = max(longest_pause, now - last), now
        return longest_pause, time.perf_counter() - started

    # A build holding the GIL fails every attempt; on a loaded 2-core CI machine the OS may
    # deschedule this thread once for a long slice, so one clean attempt of three is the bar.
    attempts = []
    for _ in range(3):
        attempts.append(longest_pause_during_build())
        if attempts[-1][0] < attempts[-1][1] / 2:
            return
    pytest.fail(f"this thread stalled for most of the build in every attempt (pause s, build s): {attempts}")


# ----------------------------------------------------------------------------------------------
# Persistence


@pytest.mark.parametrize("writer", IMPLEMENTATIONS)
@pytest.mark.parametrize("reader", IMPLEMENTATIONS)
def test_save_load_round_trip(writer, reader, corpus, tmp_path):
    built = writer.SentenceIndex.build(corpus, min_tokens=4)
    built.save(tmp_path / "index.idx")
    loaded = reader.SentenceIndex.load(tmp_path / "index.idx", verify=True)
    assert len(loaded) == len(built) and loaded.num_sentences == built.num_sentences
    assert loaded.min_tokens == 4
    for i in range(0, len(corpus), 17):
        assert loaded.sentences(i) == built.sentences(i)
    ids = list(range(len(corpus)))
    assert loaded.sample(ids, seed=2, epoch=9) == built.sample(ids, seed=2, epoch=9)
    assert not list(tmp_path.glob("*.tmp*")), "temporary file left behind"


def test_load_is_memory_mapped(corpus, tmp_path):
    path = tmp_path / "mapped.idx"
    native.SentenceIndex.build(corpus).save(path)
    index = native.SentenceIndex.load(path)
    with open("/proc/self/maps") as maps:
        assert str(path) in maps.read()
    assert index.sentences(0)  # usable after the file handle is closed


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
class TestCorruptIndex:
    @pytest.fixture
    def good(self, corpus, tmp_path):
        path = tmp_path / "good.idx"
        native.SentenceIndex.build(corpus).save(path)
        return path

    def test_truncated(self, impl, good):
        data = good.read_bytes()
        for cut in (len(data) - 1, len(data) // 2, 60, 10, 0):
            good.write_bytes(data[:cut])
            with pytest.raises(impl.IndexFormatError, match=f"{good.name}.*truncated"):
                impl.SentenceIndex.load(good)

    def test_not_an_index(self, impl, good):
        good.write_bytes(b"PK\x03\x04" + good.read_bytes()[4:])
        with pytest.raises(impl.IndexFormatError, match="not a sentence index"):
            impl.SentenceIndex.load(good)

    def test_trailing_bytes(self, impl, good):
        good.write_bytes(good.read_bytes() + b"\0")
        with pytest.raises(impl.IndexFormatError, match="trailing"):
            impl.SentenceIndex.load(good)

    def test_corrupt_offsets(self, impl, good):
        data = bytearray(good.read_bytes())
        data[48 + 8 * 5 : 48 + 8 * 6] = (10**9).to_bytes(8, "little")  # report 5's offset
        good.write_bytes(bytes(data))
        with pytest.raises(impl.IndexFormatError, match="corrupt"):
            impl.SentenceIndex.load(good)

    def test_corrupt_text_found_by_verify(self, impl, good):
        data = bytearray(good.read_bytes())
        data[-3] ^= 0x20
        good.write_bytes(bytes(data))
        impl.SentenceIndex.load(good)  # sizes and offsets are fine: found only by the checksum
        with pytest.raises(impl.IndexFormatError, match="checksum"):
            impl.SentenceIndex.load(good, verify=True)

    def test_missing_file(self, impl, tmp_path):
        with pytest.raises((OSError, RuntimeError), match="missing.idx"):
            impl.SentenceIndex.load(tmp_path / "missing.idx")
