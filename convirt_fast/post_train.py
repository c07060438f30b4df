"""After training: the evaluated weights (best, else last) loaded from the run folder, retrieval
evaluation, the exports, the loss plot and summary.json. Works from the folder alone (rank 0,
after every rank has left the loop), so a finished or interrupted run can be post-processed again:
`post_train(run_dir, summary)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from convirt_fast.config import Config
from convirt_fast.io import atomic_write_json
from convirt_fast.run_log import METRICS, plot_losses


def post_train(run_dir: Path, summary: dict, *, device: torch.device | None = None) -> dict:
    """Evaluate, export, plot and write summary.json for the run in `run_dir`; returns the summary."""
    from convirt_fast.data.manifest import load_manifest
    from convirt_fast.eval.retrieval import evaluate_retrieval
    from convirt_fast.models import EXPORT_INFO_FILE, IMAGE_PROJECTION_FILE, export_model
    from convirt_fast.models.pretrained import load_run_model
    from convirt_fast.prepare.source import data_path

    run_dir = Path(run_dir)
    device = device or torch.device("cpu")
    run = load_run_model(run_dir)  # best.pt (lowest validation loss) else last.pt, with the run's tokenizer
    cfg = Config.from_dict(run.config)
    summary = {**summary, "evaluated_checkpoint": f"{run.checkpoint.stem} (step {run.step})"}
    model, tokenizer = run.model.to(device), run.model.tokenizer
    files = {"config": "config.json", "metrics": METRICS, "checkpoints": "checkpoints/"}
    if cfg.train.evaluate:
        manifest = load_manifest(data_path(cfg.data, cfg.train.seed))
        result = evaluate_retrieval(model, manifest, tokenizer, device=device, spec=cfg.data.augment,
                                    max_length=cfg.data.max_length)
        if result is not None:
            summary["retrieval"] = result
            atomic_write_json(run_dir / "retrieval.json", result)
            files["retrieval"] = "retrieval.json"
    export_model(model.cpu(), run_dir / "export", model_config=cfg.model, augment=cfg.data.augment,
                 max_length=cfg.data.max_length)
    files |= {"image_encoder": "export/image_encoder.safetensors", "image_projection": f"export/{IMAGE_PROJECTION_FILE}",
              "text_encoder": "export/text_encoder/", "export_info": f"export/{EXPORT_INFO_FILE}"}
    metrics = run_dir / METRICS
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line] if metrics.exists() else []
    if plot_losses(records, run_dir / "loss.png"):
        files["loss_plot"] = "loss.png"
    summary["run_dir"] = str(run_dir)
    summary["files"] = files
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = ["", "=" * 72, "convirt_fast run summary", "=" * 72,
             f"steps {summary['steps']} ({summary['steps_this_run']} this run) in {summary['seconds']} s, "
             f"{summary['pairs_per_s']} pairs/s"
             + (f" (MFU {100 * summary['mfu']:.1f}%)" if summary.get("mfu") is not None else "")
             + f", {summary['world_size']} rank(s), parallel={summary['parallel']}",
             f"best validation loss: {summary['best_validation_loss']}; stopped by {summary['stopped_by']}; "
             f"evaluated: {summary.get('evaluated_checkpoint')}"]
    if summary["skipped_nonfinite"] or summary["replaced_images"] or summary.get("decode_fallbacks"):
        lines.append(f"skipped non-finite steps: {summary['skipped_nonfinite']}; "
                     f"unreadable images replaced: {summary['replaced_images']}; "
                     f"batches redone with CPU decoding: {summary.get('decode_fallbacks', 0)}")
    if "retrieval" in summary:
        r = summary["retrieval"]
        lines.append(f"retrieval over {r['candidates']} candidates (chance {r['chance']}):")
        for task in ("image_to_image", "text_to_image"):
            if task in r:
                o = r[task]["overall"]
                lines.append(f"  {task.replace('_', ' ')}: " + ", ".join(f"{k} {v:.3f}" for k, v in o.items()))
    if "run_dir" in summary:
        lines.append(f"run folder: {summary['run_dir']}")
        lines.extend(f"  {name}: {path}" for name, path in summary["files"].items())
    lines.append("=" * 72)
    return "\n".join(lines)
