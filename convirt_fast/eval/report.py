"""The evaluation report: results.json (every number), report.md (tables in the paper's layout),
label_efficiency.png (metric vs label fraction per initialisation) and, per encoder with a
text side, retrieval_grid_<name>.png (each text query -> its top 5 candidates, hits marked)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

PROTOCOLS = (("linear", "linear probe"), ("finetune", "fine-tune"))


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _mean_std(entry: dict | None) -> str:
    if not entry:
        return "-"
    if math.isnan(entry["mean"]):
        return "n/a"
    return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "encoder"


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None  # JSON has no NaN; null means "undefined" (e.g. AUC of a label without positives)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def plot_label_efficiency(results: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(key, title) for key, title in PROTOCOLS if any(key in e["results"] for e in results["encoders"])]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 4), squeeze=False)
    metric_name = "accuracy" if results.get("task", {}).get("kind") == "multi-class" else "mean AUC"
    for ax, (key, title) in zip(axes[0], present):
        for encoder in results["encoders"]:
            by_fraction = encoder["results"].get(key)
            if not by_fraction:
                continue
            fractions = [float(k.rstrip("%")) for k in by_fraction]
            means = [by_fraction[k]["mean"] for k in by_fraction]
            stds = [by_fraction[k]["std"] for k in by_fraction]
            ax.errorbar(fractions, means, yerr=stds, marker="o", capsize=3, label=encoder["name"])
        ax.set_xscale("log")
        ticks = sorted({float(k.rstrip("%")) for e in results["encoders"] for k in e["results"].get(key) or {}})
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training labels")
        ax.set_ylabel(metric_name)
        ax.set_title(f"{title} (mean ± std over seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_retrieval_grid(text_top: list[dict], path: Path, title: str) -> Path:
    """One row per text query: the query, then its top candidates (green frame = its category)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convirt_fast.data.image_decode import read_image

    columns = max(len(q["results"]) for q in text_top)
    fig, axes = plt.subplots(len(text_top), columns + 1, figsize=(2 * (columns + 1) + 1.5, 1.6 * len(text_top)),
                             squeeze=False, gridspec_kw={"width_ratios": [2.5] + [1] * columns})
    for row, query in zip(axes, text_top):
        row[0].axis("off")
        hits = sum(r["hit"] for r in query["results"])
        row[0].text(0, 0.5, f"[{query['category']}]\n{_wrap(query['text'])}\n{hits}/{len(query['results'])} correct",
                    fontsize=8, va="center", ha="left", transform=row[0].transAxes)
        for ax, result in zip(row[1:], query["results"]):
            try:
                ax.imshow(read_image(result["image"]), cmap="gray")
            except Exception as error:  # an unreadable image must not cost the whole report
                ax.text(0.5, 0.5, f"unreadable\n{type(error).__name__}", ha="center", va="center", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            color = "#1a9850" if result["hit"] else "#d73027"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
            ax.set_title(("✓ " if result["hit"] else "✗ ") + result["category"], fontsize=7, color=color)
        for ax in row[1 + len(query["results"]):]:
            ax.axis("off")
    height = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    # Fixed margins (tight_layout over hundreds of axes takes seconds); room for the title on top.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.08, hspace=0.35)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 40) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])


def markdown(results: dict, files: dict[str, str]) -> str:
    encoders = results["encoders"]
    task = results.get("task")
    lines = ["# convirt_fast evaluation", "", f"- data: `{results['data']}`"]
    if results.get("retrieval_source"):
        lines.append(f"- retrieval set: `{results['retrieval_source']}`")
    for e in encoders:
        lines.append(f"- **{e['name']}**: {e['source']} ({e['results'].get('seconds', '?')} s)")
    if task:
        lines += [f"- task: {task['kind']}, {len(task['labels'])} labels; train {task['train']}, validate "
                  f"{task['validate']}, test ({task['test_split']} split) {task['test']}"]
        lines += [f"- {note}" for note in task["notes"]]
    s = results["settings"]
    lines.append(f"- seeds {s['seeds']}; fine-tune: {s['finetune']}")
    metric = "accuracy" if task and task["kind"] == "multi-class" else "mean AUC"
    fractions = s["fraction_keys"]
    has = {key: any(key in e["results"] for e in encoders) for key in ("linear", "finetune", "zeroshot", "retrieval")}
    if has["linear"] or has["finetune"] or has["zeroshot"]:
        lines += ["", f"## Classification: {metric} x 100 (mean ± std over seeds)", ""]
        header = ["init"]
        for key, title in PROTOCOLS:
            if has[key]:
                header += [f"{title} {f}" for f in fractions]
        if has["zeroshot"]:
            header.append("zero-shot")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in encoders:
            r = e["results"]
            cells = [e["name"]]
            for key, _ in PROTOCOLS:
                if has[key]:
                    cells += [_mean_std(r.get(key, {}).get(f)) for f in fractions]
            if has["zeroshot"]:
                cells.append(_pct(r["zeroshot"]["value"]) if "zeroshot" in r else "-")
            lines.append("| " + " | ".join(cells) + " |")
        if "label_efficiency" in files:
            lines += ["", f"![label efficiency]({files['label_efficiency']})"]
        lines += _per_label_tables(encoders, fractions, task)
    if has["retrieval"]:
        lines += _retrieval_tables(encoders, files)
    zs = [e for e in encoders if "zeroshot" in e["results"]]
    if zs:
        lines += ["", "## Zero-shot prompts", "",
                  "Score = cos(image, mean positive prompt) - cos(image, mean negative prompt).", "",
                  "| label | positive prompts | negative prompts |", "|---|---|---|"]
        for label, sets in zs[0]["results"]["zeroshot"]["prompts"].items():
            lines.append(f"| {label} | {' / '.join(sets['positive'])} | {' / '.join(sets['negative'])} |")
    lines += ["", f"All numbers: `{files['json']}`.", ""]
    return "\n".join(lines)


def _per_label_tables(encoders, fractions, task) -> list[str]:
    lines = ["", "### Per label (AUC x 100, mean over seeds)"]
    for e in encoders:
        r = e["results"]
        columns = [(key, f) for key, _ in PROTOCOLS if key in r for f in fractions]
        if not columns and "zeroshot" not in r:
            continue
        header = ["label"] + [f"{'linear' if k == 'linear' else 'ft'} {f}" for k, f in columns]
        header += ["zero-shot"] if "zeroshot" in r else []
        lines += ["", f"**{e['name']}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in task["labels"]:
            cells = [label] + [_pct(r[k][f]["per_label"][label]["mean"]) for k, f in columns]
            if "zeroshot" in r:
                cells.append(_pct(r["zeroshot"]["per_label"][label]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _retrieval_tables(encoders, files) -> list[str]:
    first = next(e["results"]["retrieval"] for e in encoders if e["results"].get("retrieval"))
    loo = " (leave-one-out: every image queries the others)" if first.get("leave_one_out") else ""
    lines = ["", f"## Retrieval: Precision@k x 100 over {first['candidates']} candidates{loo}; chance "
             f"{100 * first['chance']:.1f}", "",
             "| init | image->image P@5 | P@10 | P@50 | text->image P@5 | P@10 | P@50 |", "|---|---|---|---|---|---|---|"]
    for e in encoders:
        r = e["results"].get("retrieval")
        if not r:
            continue
        cells = [e["name"]]
        for direction in ("image_to_image", "text_to_image"):
            o = r.get(direction, {}).get("overall", {})
            cells += [_pct(o.get(f"P@{k}")) for k in (5, 10, 50)]
        lines.append("| " + " | ".join(cells) + " |")
    categories = sorted(first.get("image_to_image", first.get("text_to_image", {})).get("per_category", {}))
    if categories:
        lines += ["", "Per category, P@10 x 100 (image->image / text->image):", "",
                  "| category | " + " | ".join(e["name"] for e in encoders if e["results"].get("retrieval")) + " |",
                  "|---|" + "---|" * sum(1 for e in encoders if e["results"].get("retrieval"))]
        for c in categories:
            cells = [c]
            for e in encoders:
                r = e["results"].get("retrieval")
                if not r:
                    continue
                pair = [_pct(r.get(d, {}).get("per_category", {}).get(c, {}).get("P@10"))
                        for d in ("image_to_image", "text_to_image")]
                cells.append(" / ".join(pair))
            lines.append("| " + " | ".join(cells) + " |")
    for e in encoders:
        if f"grid_{e['name']}" in files:
            lines += ["", f"### Text->image, top 5 per query: {e['name']} (green: correct category)", "",
                      f"![retrieval grid]({files['grid_' + e['name']]})"]
    return lines


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Writes everything into out_dir; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {"json": "results.json"}
    if plot_label_efficiency(results, out_dir / "label_efficiency.png"):
        files["label_efficiency"] = "label_efficiency.png"
    for e in results["encoders"]:
        top = (e["results"].get("retrieval") or {}).get("text_top")
        if top:
            name = f"retrieval_grid_{slug(e['name'])}.png"
            plot_retrieval_grid(top, out_dir / name, f"{e['name']}: text query -> top {len(top[0]['results'])}")
            files[f"grid_{e['name']}"] = name
    (out_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=2, ensure_ascii=False))
    (out_dir / "report.md").write_text(markdown(results, files), encoding="utf-8")
    return {k: out_dir / v for k, v in {**files, "markdown": "report.md"}.items()}


def paper_markdown(results: dict) -> str:
    """`--benchmark paper`: the layout of the paper's Tables 1 and 2, its rows beside ours."""
    from convirt_fast.eval.paper_benchmark import CLASSIFICATION, PAPER_TABLE1, PAPER_TABLE2, RETRIEVAL

    bench = results["paper"]
    tasks = bench["tasks"]
    lines = ["# convirt_fast: the paper's benchmark (ConVIRT, Tables 1-2)", ""]
    for e in results["encoders"]:
        lines.append(f"- **{e['name']}**: {e['source']}")
    s = results["settings"]
    lines.append(f"- seeds {s['seeds']} (fine-tuning {s['finetune_seeds']}); fine-tune: {s['finetune']} (lr per "
                 f"task below); device {results['device']}")
    for key, why in bench["skipped"].items():
        lines.append(f"- {key}: skipped ({why})")
    for key, t in tasks.items():
        if key == RETRIEVAL:
            lines.append(f"- {key}: `{t['data']}`, {t['candidates']} candidates, {t['queries']} image queries, "
                         f"{t['text_queries']} text queries")
            continue
        size = t["task"]
        agg = f"; aggregation {t['aggregate']}" if "aggregate" in t else ""
        lines.append(f"- {key}: `{t['data']}`; {t['metric']}; train {size['train']}, validate {size['validate']}, "
                     f"test {size['test']} ({size['kind']}); fine-tune lr {t['finetune_lr']:g}{agg}")
    names = [e["name"] for e in results["encoders"]]
    header = ["init"] + [f"{p.title} {f}" for key, p in CLASSIFICATION.items() for f in _fractions(p)]
    for protocol, title in (("linear", "Linear probe"), ("finetune", "Fine-tuning")):
        lines += ["", f"## Table 1, {title.lower()}: AUC x 100 (COVIDx: accuracy; MURA: study-level AUC), "
                  "mean ± std over seeds", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for init, row in PAPER_TABLE1[protocol].items():
            cells = [f"{init} (paper)"] + [f"{v:.1f}" for key in CLASSIFICATION for v in row[key]]
            lines.append("| " + " | ".join(cells) + " |")
        for name in names:
            cells = [f"**{name}**"]
            for key, p in CLASSIFICATION.items():
                r = tasks.get(key, {}).get("encoders", {}).get(name, {}).get(protocol, {})
                cells += [_mean_std(r.get(f)) for f in _fractions(p)]
            lines.append("| " + " | ".join(cells) + " |")
        if "aggregate" in tasks.get("mura", {}):
            lines += ["", "MURA: trained on images, scored per study (the mean of a study's image "
                      "probabilities), as the paper."]
    lines += ["", "## Table 2, CheXpert 8x200 retrieval: Precision@5/10/50 x 100 (chance 12.5)", "",
              "| init | image->image P@5 | P@10 | P@50 | text->image P@5 | P@10 | P@50 |", "|---|---|---|---|---|---|---|"]
    for init, row in PAPER_TABLE2.items():
        cells = [f"{init} (paper)"]
        for direction in ("image_to_image", "text_to_image"):
            cells += [f"{v:.1f}" for v in row[direction]] if row[direction] else ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    for name in names:
        r = tasks.get(RETRIEVAL, {}).get("encoders", {}).get(name, {}).get("retrieval") or {}
        cells = [f"**{name}**"]
        for direction in ("image_to_image", "text_to_image"):
            o = r.get(direction, {}).get("overall", {})
            cells += [_pct(o.get(f"P@{k}")) for k in (5, 10, 50)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paper rows: PAPER.md (ResNet-50, 224 px, MIMIC-CXR pretraining). `-`: not run (or no text "
              "side for text->image).", "", "All numbers: `results.json`.", ""]
    return "\n".join(lines)


def _fractions(protocol) -> list[str]:
    from convirt_fast.eval.probe import fraction_key

    return [fraction_key(f) for f in protocol.fractions]


def write_paper_report(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=2, ensure_ascii=False))
    (out_dir / "report.md").write_text(paper_markdown(results), encoding="utf-8")
    return {"json": out_dir / "results.json", "markdown": out_dir / "report.md"}
