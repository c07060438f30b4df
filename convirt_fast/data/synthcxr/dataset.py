"""SynthCXR data set: which studies exist (the plan), and one study's image + report + labels.

Splits:
- train / validate: `n` studies (10% validate), each with 0-3 findings (20% normal), so a
  report mixes several findings, negations and normal statements.
- retrieval: per category, `candidates` exclusively positive images (one finding, or none for
  No Finding) and, apart from them, `queries` image queries (the CheXpert 8x200 protocol,
  scaled to n: candidates = clamp(n / 25, 10, 200), queries = clamp(n / 300, 2, 10)).

Everything is a pure function of (seed, study index): the plan is drawn from `seed`, each study's
pixels and report from its own generator, so a study is reproducible alone (a rerun after an
interruption regenerates exactly the missing files) and independent of worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.anatomy import sample_anatomy
from convirt_fast.data.synthcxr.render import render, sample_nuisance
from convirt_fast.data.synthcxr.reports import write_report

#: Bump when the generator's output changes: cached data sets are keyed by it.
GENERATOR_VERSION = 3
FINDING_COUNTS = (0, 1, 2, 3)
FINDING_COUNT_P = (0.2, 0.35, 0.3, 0.15)
CANDIDATE = "candidate"
QUERY = "query"


@dataclass(frozen=True)
class SynthConfig:
    n: int = 4000
    """Studies in train + validate; the retrieval split's size follows from it."""
    seed: int = 0
    size: int = 256
    validate_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be at least 2 (one train, one validate study), got {self.n}")
        if self.size < 64:
            raise ValueError(f"size must be at least 64 px, got {self.size}")
        if not 0 < self.validate_fraction < 1:
            raise ValueError(f"validate_fraction must lie in (0, 1), got {self.validate_fraction}")

    def retrieval_sizes(self) -> tuple[int, int]:
        """(candidates, queries) per category."""
        return min(200, max(10, self.n // 25)), min(10, max(2, self.n // 300))


@dataclass(frozen=True)
class StudyPlan:
    index: int
    study_id: str
    patient_id: str
    split: str
    findings: tuple[str, ...]
    role: str = ""
    """candidate | query for the retrieval split."""
    category: str = ""
    """The retrieval category (a label name) for the retrieval split."""

    @property
    def image(self) -> str:
        """Path relative to the data root; 1000 images per folder."""
        return f"images/{self.index // 1000:04d}/{self.study_id}.jpg"


def plan_studies(cfg: SynthConfig) -> list[StudyPlan]:
    rng = np.random.default_rng([cfg.seed, 0])
    n_val = max(1, round(cfg.n * cfg.validate_fraction))
    plans: list[StudyPlan] = []

    def add(split: str, found: tuple[str, ...], role: str = "", category: str = "") -> None:
        i = len(plans)
        plans.append(StudyPlan(i, f"S{i:07d}", f"P{i:07d}", split, found, role, category))

    for i in range(cfg.n):
        add("validate" if i >= cfg.n - n_val else "train", _draw_findings(rng))
    cands, queries = cfg.retrieval_sizes()
    for cat in F.CATEGORIES:
        found = () if cat == F.NO_FINDING else (cat,)
        for role, count in ((CANDIDATE, cands), (QUERY, queries)):
            for _ in range(count):
                add("retrieval", found, role, cat)
    return plans


def _draw_findings(rng: np.random.Generator) -> tuple[str, ...]:
    k = int(rng.choice(FINDING_COUNTS, p=FINDING_COUNT_P))
    while True:
        names = [F.FINDINGS[j] for j in sorted(rng.choice(len(F.FINDINGS), size=k, replace=False))]
        if F.compatible(names):
            return tuple(names)


def labels_of(findings: tuple[str, ...]) -> dict[str, int]:
    labels = {c: int(c in findings) for c in F.CATEGORIES}
    labels[F.NO_FINDING] = int(not findings)
    return labels


def synthesize(plan: StudyPlan, cfg: SynthConfig, *, image: bool = True) -> tuple[np.ndarray | None, str]:
    """(image, report) for one study; image=False skips the pixels (same report)."""
    rng = np.random.default_rng([cfg.seed, 1, plan.index])
    found = [F.sample_finding(name, rng) for name in plan.findings]
    # The text has its own stream: editing a paraphrase bank changes no pixel.
    report = write_report(found, np.random.default_rng([cfg.seed, 2, plan.index]))
    if not image:
        return None, report
    anatomy = sample_anatomy(rng)
    nuisance = sample_nuisance(rng)
    return render(anatomy, found, nuisance, rng, cfg.size), report
