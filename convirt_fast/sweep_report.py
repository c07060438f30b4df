"""A sweep's table (markdown + JSON) and plot: each metric against the swept value, mean and
standard deviation over seeds, every seed shown."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from convirt_fast.eval.metrics import mean_std

METRIC_NAMES = {
    "t2i_P@10": "text->image P@10",
    "i2i_P@10": "image->image P@10",
    "probe_1%": "linear probe, 1% labels",
    "probe_1%_random": "linear probe, 1%, random init",
    "val_loss": "best validation loss",
}
PLOTTED = ("t2i_P@10", "i2i_P@10", "probe_1%")


@dataclass
class Measurement:
    """One finished run of a sweep."""

    point: str
    values: dict[str, str]
    seed: int
    folder: str
    metrics: dict = field(default_factory=dict)
    per_category_t2i: dict[str, float] = field(default_factory=dict)
    chance: float | None = None
    train_s: float | None = None
    wall_s: float | None = None


def over_seeds(values: list[float]) -> dict:
    """Mean and sample std (eval.metrics.mean_std), with every seed's value kept."""
    return {**mean_std(values), "values": values}


def aggregate(measurements: list[Measurement]) -> list[dict]:
    """One row per grid point, in the order the points first appear."""
    rows: dict[str, dict] = {}
    for m in measurements:
        row = rows.setdefault(m.point, {"point": m.point, "values": m.values, "seeds": [], "runs": []})
        row["seeds"].append(m.seed)
        row["runs"].append(asdict(m))
    for row in rows.values():
        runs = row["runs"]
        names = sorted({k for r in runs for k, v in r["metrics"].items() if isinstance(v, (int, float))})
        row["metrics"] = {n: over_seeds([r["metrics"][n] for r in runs if n in r["metrics"]]) for n in names}
        categories = sorted({c for r in runs for c in r["per_category_t2i"]})
        row["per_category_t2i"] = {c: over_seeds([r["per_category_t2i"][c] for r in runs if c in r["per_category_t2i"]])
                                   for c in categories}
        row["probe_metric"] = next((r["metrics"].get("probe_metric") for r in runs if "probe_metric" in r["metrics"]), None)
        row["chance"] = next((r["chance"] for r in runs if r["chance"] is not None), None)
        walls = [r["wall_s"] for r in runs if r["wall_s"]]
        row["wall_s"] = over_seeds(walls) if walls else None
    return list(rows.values())


def _cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    seeds = " / ".join(f"{v:.3f}" for v in stat["values"])
    return f"{stat['mean']:.3f} ± {stat['std']:.3f} ({seeds})" if stat["runs"] > 1 else f"{stat['mean']:.3f}"


def markdown(rows: list[dict], keys: list[str], header: dict) -> str:
    metrics = [m for m in METRIC_NAMES if any(m in r["metrics"] for r in rows)]
    lines = [f"# Sweep: {', '.join(keys)}", "",
             f"`{header['command']}`", "",
             f"Preset `{header['preset']}`" + (f", fixed overrides `{' '.join(header['fixed'])}`" if header["fixed"] else "")
             + f"; seeds {header['seeds']}; cells: mean ± standard deviation over seeds (each seed's value)."]
    chance = next((r["chance"] for r in rows if r["chance"] is not None), None)
    if chance is not None:
        lines[-1] += f" Retrieval chance: {chance}."
    probe_metric = next((r["probe_metric"] for r in rows if r["probe_metric"]), None)
    if probe_metric:
        lines[-1] += f" Probe metric: {probe_metric}."
    lines += ["", "| " + " | ".join(keys + [METRIC_NAMES[m] for m in metrics] + ["run time (s)"]) + " |",
              "|" + "---|" * (len(keys) + len(metrics) + 1)]
    for r in rows:
        wall = f"{r['wall_s']['mean']:.0f}" if r["wall_s"] else "-"
        lines.append("| " + " | ".join([r["values"][k] for k in keys] + [_cell(r["metrics"].get(m)) for m in metrics]
                                       + [wall]) + " |")
    categories = sorted({c for r in rows for c in r["per_category_t2i"]})
    if categories:
        lines += ["", "text->image P@10 by category (mean over seeds):", "",
                  "| " + " | ".join(keys + categories) + " |", "|" + "---|" * (len(keys) + len(categories))]
        for r in rows:
            cells = [f"{r['per_category_t2i'][c]['mean']:.2f}" if c in r["per_category_t2i"] else "-" for c in categories]
            lines.append("| " + " | ".join([r["values"][k] for k in keys] + cells) + " |")
    return "\n".join(lines) + "\n"


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def plot(rows: list[dict], keys: list[str], path: Path) -> Path | None:
    """One panel per metric: x the first swept field (log scale when its values span >= 20x;
    categories when not numbers), one line per combination of the other fields, error bars one
    standard deviation over seeds, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in PLOTTED if any(m in r["metrics"] for r in rows)]
    if not metrics or not rows:
        return None
    x_key, others = keys[0], keys[1:]
    x_texts = list(dict.fromkeys(r["values"][x_key] for r in rows))
    numbers = [_as_number(t) for t in x_texts]
    numeric = all(n is not None for n in numbers)
    position = {t: (n if numeric else i) for i, (t, n) in enumerate(zip(x_texts, numbers))}
    log_x = numeric and min(numbers) > 0 and max(numbers) / min(numbers) >= 20
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(", ".join(f"{k}={r['values'][k]}" for k in others), []).append(r)
        for label, group in groups.items():
            group = [r for r in group if metric in r["metrics"]]
            group.sort(key=lambda r: position[r["values"][x_key]])
            xs = [position[r["values"][x_key]] for r in group]
            stats = [r["metrics"][metric] for r in group]
            line = ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o", capsize=4,
                               label=label or None)
            for x, s in zip(xs, stats):
                ax.scatter([x] * len(s["values"]), s["values"], s=12, alpha=0.5, color=line[0].get_color())
        if metric.endswith("P@10"):
            chance = next((r["chance"] for r in rows if r["chance"] is not None), None)
            if chance is not None:
                ax.axhline(chance, ls="--", color="grey", lw=1, label="chance")
        if metric == "probe_1%":
            randoms = [r["metrics"]["probe_1%_random"]["mean"] for r in rows if "probe_1%_random" in r["metrics"]]
            if randoms:
                ax.axhline(statistics.fmean(randoms), ls=":", color="black", lw=1, label="random init")
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks([position[t] for t in x_texts], x_texts)
        ax.minorticks_off()
        ax.set_xlabel(x_key)
        ax.set_title(METRIC_NAMES[metric])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep_report(measurements: list[Measurement], keys: list[str], folder: Path, *, preset: str,
                       fixed: list[str], seeds: list[int], command: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = aggregate(measurements)
    header = {"command": command, "preset": preset, "fixed": fixed, "seeds": seeds,
              "written": datetime.now().isoformat(timespec="seconds")}
    files = {"table": folder / "table.md", "json": folder / "results.json"}
    files["table"].write_text(markdown(rows, keys, header))
    files["json"].write_text(json.dumps({**header, "keys": keys, "rows": rows}, indent=2))
    picture = plot(rows, keys, folder / "plot.png")
    if picture is not None:
        files["plot"] = picture
    return files
