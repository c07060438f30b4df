"""Zero-shot retrieval (PAPER.md "CheXpert 8x200"): image->image and text->image, Precision@k.

A retrieval set is two CSV files (UTF-8, header row):

    retrieval_images.csv   image, category[, role][, study_id]
        image     path relative to the CSV's folder (or absolute)
        category  any string; precision counts a hit when a candidate's category equals the query's
        role      candidate | query. Without a role column every image is both a candidate and
                  a query, leave-one-out: a query never retrieves its own row
        study_id  in a prepared folder: the manifest row (image is then informational)
    text_queries.csv       category, text   (optional: without it only image->image is run)

A prepared folder holds them beside manifest.csv (SynthCXR writes both, with study_id and role);
`read_retrieval_csv` reads a user's own pair from anywhere, with other column names if needed
(e.g. covid-cxr's pairs.csv with category_col="finding"). Candidates are ranked by cosine
similarity; Precision@k is the fraction of a query's k nearest candidates of its category,
averaged over queries, overall and per category.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

KS = (5, 10, 50)


def precision_at_k(similarity: torch.Tensor, query_labels: list[str], candidate_labels: list[str],
                   ks: tuple[int, ...] = KS, *, leave_one_out: bool = False) -> dict[int, torch.Tensor]:
    """Per query, the fraction of its k most similar candidates that share its label.

    leave_one_out: queries are the candidates themselves (square `similarity`); a query's own
    row is excluded, so k counts among the n - 1 others."""
    if leave_one_out:
        similarity = similarity.clone().fill_diagonal_(-torch.inf)
    order = similarity.argsort(dim=1, descending=True, stable=True)
    if leave_one_out:
        order = order[:, :-1]  # its own row, ranked last
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
    leave_one_out: bool = False
    """No roles given: every image is a candidate and a query; queries skip their own row."""
    images: list[str] = field(default_factory=list)
    """Candidates' image paths (for the retrieval grid); filled by read_retrieval_csv."""


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
    out.images = [str(manifest.image_paths(r)[0]) for r in out.candidate_rows]
    _read_text_queries(texts_csv, out)
    return out


def _read_text_queries(texts_csv: Path | None, out: RetrievalSet) -> None:
    if texts_csv is None or not texts_csv.exists():
        return
    with open(texts_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"category", "text"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{texts_csv}: missing columns {sorted(missing)} (expected category, text)")
        for rec in reader:
            out.texts.append(rec["text"])
            out.text_labels.append(rec["category"])


def read_retrieval_csv(images_csv: str | Path, texts_csv: str | Path | None = None, *, image_col: str = "image",
                       category_col: str = "category", role_col: str = "role"):
    """(manifest, RetrievalSet) for a user's own retrieval set outside any prepared folder.

    The manifest is built in memory, one row per CSV row (rows may share an image file)."""
    from convirt_fast.data.manifest import Manifest
    from convirt_fast.eval.embed import study

    images_csv = Path(images_csv)
    if not images_csv.is_file():
        raise FileNotFoundError(f"{images_csv}: retrieval CSV not found")
    root = images_csv.parent
    studies, out = [], RetrievalSet([], [], [], [], [], [])
    with open(images_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = set(reader.fieldnames or ())
        missing = {image_col, category_col} - header
        if missing:
            raise ValueError(f"{images_csv}: missing columns {sorted(missing)} (columns: {sorted(header)})")
        out.leave_one_out = role_col not in header
        for line, rec in enumerate(reader, start=2):
            image, category = rec[image_col].strip(), rec[category_col].strip()
            if not image or not category:
                raise ValueError(f"{images_csv}:{line}: empty {image_col!r} or {category_col!r}")
            if not (root / image).is_file():
                raise FileNotFoundError(f"{images_csv}:{line}: image {root / image} not found")
            role = "candidate" if out.leave_one_out else rec[role_col].strip()
            if role not in ("candidate", "query"):
                raise ValueError(f"{images_csv}:{line}: role must be candidate or query, got {role!r}")
            row = len(studies)
            studies.append(study(f"row{line}", image, split="retrieval"))
            rows, labels = (out.candidate_rows, out.candidate_labels) if role == "candidate" else (out.query_rows, out.query_labels)
            rows.append(row)
            labels.append(category)
    if not out.candidate_rows:
        raise ValueError(f"{images_csv}: no candidate images")
    if out.leave_one_out:
        out.query_rows, out.query_labels = list(out.candidate_rows), list(out.candidate_labels)
    manifest = Manifest(root=root, studies=studies, label_columns=(), meta={})
    out.images = [str(manifest.image_paths(r)[0]) for r in out.candidate_rows]
    _read_text_queries(Path(texts_csv) if texts_csv else None, out)
    if texts_csv and not out.texts:
        raise ValueError(f"{texts_csv}: no text queries")
    return manifest, out


@torch.no_grad()
def embed_rows(model, manifest, rows: list[int], *, device, spec, batch_size: int = 64, workers: int = 0) -> torch.Tensor:
    """Image projections (eval transform) of the given manifest rows, in that order."""
    from convirt_fast.eval.embed import embed_images

    return embed_images(model.encode_image, manifest, rows, spec=spec, device=device, batch_size=batch_size,
                        workers=workers)


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


def evaluate_retrieval(model, manifest, tokenizer, *, device, spec, max_length: int = 64,
                       retrieval_set: RetrievalSet | None = None, top: int = 0, batch_size: int = 64,
                       workers: int = 0) -> dict | None:
    """Image->image and text->image Precision@5/10/50 (overall and per category).

    retrieval_set: a set read elsewhere (read_retrieval_csv); default: the manifest's folder's.
    tokenizer None: image->image only. top > 0 adds "text_top": per text query its `top` best
    candidates (image path, category, hit) for the retrieval grid."""
    rs = retrieval_set or read_retrieval_set(manifest)
    if rs is None:
        return None
    was_training = model.training
    model.eval()
    try:
        rows = rs.candidate_rows if rs.leave_one_out else rs.candidate_rows + rs.query_rows
        emb = F.normalize(embed_rows(model, manifest, rows, device=device, spec=spec, batch_size=batch_size,
                                     workers=workers), dim=1)
        cand = emb[: len(rs.candidate_rows)]
        queries = cand if rs.leave_one_out else emb[len(rs.candidate_rows):]
        result = {"candidates": len(rs.candidate_rows), "chance": _chance(rs.candidate_labels),
                  "leave_one_out": rs.leave_one_out}
        if rs.query_rows:
            result["image_to_image"] = summarize(precision_at_k(queries @ cand.T, rs.query_labels, rs.candidate_labels,
                                                                leave_one_out=rs.leave_one_out), rs.query_labels)
        if rs.texts and tokenizer is not None:
            text = F.normalize(embed_texts(model, tokenizer, rs.texts, device=device, max_length=max_length), dim=1)
            similarity = text @ cand.T
            result["text_to_image"] = summarize(precision_at_k(similarity, rs.text_labels, rs.candidate_labels), rs.text_labels)
            if top:
                best = similarity.topk(min(top, similarity.shape[1]), dim=1).indices.tolist()
                result["text_top"] = [
                    {"text": t, "category": c, "results": [
                        {"image": rs.images[j] if rs.images else "", "category": rs.candidate_labels[j],
                         "hit": rs.candidate_labels[j] == c} for j in js]}
                    for t, c, js in zip(rs.texts, rs.text_labels, best)]
        return result
    finally:
        model.train(was_training)


def _chance(labels: list[str]) -> float:
    counts = {label: labels.count(label) for label in set(labels)}
    return round(sum(c * c for c in counts.values()) / len(labels) ** 2, 4)
