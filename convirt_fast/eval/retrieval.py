"""Zero-shot retrieval (PAPER.md "CheXpert 8x200"): image->image and text->image, Precision@k.

A retrieval set lives in a prepared folder: its images are manifest rows of split "retrieval",
listed with their category and role in retrieval_images.csv (study_id, image, category, role:
candidate | query), and the text queries in text_queries.csv (category, text). SynthCXR writes
both; a user's own set uses the same two files. Candidates are ranked by cosine similarity.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

KS = (5, 10, 50)


def precision_at_k(similarity: torch.Tensor, query_labels: list[str], candidate_labels: list[str],
                   ks: tuple[int, ...] = KS) -> dict[int, torch.Tensor]:
    """Per query, the fraction of its k most similar candidates that share its label."""
    order = similarity.argsort(dim=1, descending=True)
    labels = sorted(set(candidate_labels) | set(query_labels))
    code = {label: i for i, label in enumerate(labels)}
    cand = torch.tensor([code[c] for c in candidate_labels])
    query = torch.tensor([code[q] for q in query_labels])
    hits = cand[order] == query[:, None]
    return {k: hits[:, : min(k, hits.shape[1])].float().mean(1) for k in ks}


@dataclass
class RetrievalSet:
    candidate_rows: list[int]
    candidate_labels: list[str]
    query_rows: list[int]
    query_labels: list[str]
    texts: list[str]
    text_labels: list[str]


def read_retrieval_set(manifest) -> RetrievalSet | None:
    """The retrieval set of a prepared folder, or None when it has none."""
    root = Path(manifest.root)
    images_csv, texts_csv = root / "retrieval_images.csv", root / "text_queries.csv"
    if not images_csv.exists():
        return None
    row_of = {s.study_id: i for i, s in enumerate(manifest.studies)}
    out = RetrievalSet([], [], [], [], [], [])
    with open(images_csv, newline="", encoding="utf-8") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            missing = {"study_id", "category", "role"} - set(rec)
            if missing:
                raise ValueError(f"{images_csv}: missing columns {sorted(missing)}")
            if rec["study_id"] not in row_of:
                raise ValueError(f"{images_csv}:{line}: study {rec['study_id']!r} is not in the manifest")
            if rec["role"] == "candidate":
                out.candidate_rows.append(row_of[rec["study_id"]])
                out.candidate_labels.append(rec["category"])
            elif rec["role"] == "query":
                out.query_rows.append(row_of[rec["study_id"]])
                out.query_labels.append(rec["category"])
            else:
                raise ValueError(f"{images_csv}:{line}: role must be candidate or query, got {rec['role']!r}")
    if texts_csv.exists():
        with open(texts_csv, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                out.texts.append(rec["text"])
                out.text_labels.append(rec["category"])
    return out


@torch.no_grad()
def embed_rows(model, manifest, rows: list[int], *, device, spec, batch_size: int = 64) -> torch.Tensor:
    """Image projections (eval transform) of the given manifest rows, in that order."""
    from convirt_fast.data.loader import ConVIRTLoader

    loader = ConVIRTLoader(manifest, None, split="retrieval", train=False, backend="torch", device=device,
                           batch_size=batch_size, num_workers=0, drop_last=False, augment=spec)
    by_row = {}
    for batch in loader:
        v = model.encode_image(batch["images"])
        for row, emb in zip(batch["rows"].tolist(), v.float().cpu()):
            by_row[row] = emb
    missing = [r for r in rows if r not in by_row]
    if missing:
        raise ValueError(f"{manifest.root}: retrieval rows without an embedding (unreadable images?): {missing[:5]}")
    return torch.stack([by_row[r] for r in rows])


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], *, device, max_length: int = 64) -> torch.Tensor:
    tokens = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float().cpu()


def summarize(precisions: dict[int, torch.Tensor], labels: list[str]) -> dict:
    """Mean Precision@k overall and per category."""
    out = {"overall": {f"P@{k}": round(v.mean().item(), 4) for k, v in precisions.items()}, "per_category": {}}
    for label in sorted(set(labels)):
        mask = torch.tensor([q == label for q in labels])
        out["per_category"][label] = {f"P@{k}": round(v[mask].mean().item(), 4) for k, v in precisions.items()}
    return out


def evaluate_retrieval(model, manifest, tokenizer, *, device, spec, max_length: int = 64) -> dict | None:
    """Image->image and text->image Precision@5/10/50 (overall and per category)."""
    rs = read_retrieval_set(manifest)
    if rs is None:
        return None
    was_training = model.training
    model.eval()
    try:
        rows = rs.candidate_rows + rs.query_rows
        emb = F.normalize(embed_rows(model, manifest, rows, device=device, spec=spec), dim=1)
        cand, queries = emb[: len(rs.candidate_rows)], emb[len(rs.candidate_rows):]
        result = {"candidates": len(rs.candidate_rows), "chance": _chance(rs.candidate_labels)}
        if rs.query_rows:
            result["image_to_image"] = summarize(precision_at_k(queries @ cand.T, rs.query_labels, rs.candidate_labels), rs.query_labels)
        if rs.texts:
            text = F.normalize(embed_texts(model, tokenizer, rs.texts, device=device, max_length=max_length), dim=1)
            result["text_to_image"] = summarize(precision_at_k(text @ cand.T, rs.text_labels, rs.candidate_labels), rs.text_labels)
        return result
    finally:
        model.train(was_training)


def _chance(labels: list[str]) -> float:
    counts = {label: labels.count(label) for label in set(labels)}
    return round(sum(c * c for c in counts.values()) / len(labels) ** 2, 4)
