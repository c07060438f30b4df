"""`python -m convirt_fast.evaluate`: load the data, the encoders and the task, run the suite,
write the report. The argument parser lives in convirt_fast/evaluate.py."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import torch

from convirt_fast.data.augment import AugmentSpec
from convirt_fast.eval.encoders import LoadedEncoder, load_encoder
from convirt_fast.eval.finetune import FinetuneSettings
from convirt_fast.eval.probe import fraction_key
from convirt_fast.eval.suite import TASKS, SuiteSettings, evaluate_encoder, task_summary

# On a CPU, fine-tuning at the paper's settings takes hours even on SynthCXR; these caps keep
# `--task all` to minutes there. Flags override them; on a GPU the paper's settings apply.
CPU_FINETUNE_EPOCHS = 2
CPU_FINETUNE_WARMUP = 20


def resolve_data(data: str | None, reference, workers: int):
    """A prepared folder (or manifest.csv), or "synthcxr" (prepared once, as the trainer does)."""
    from convirt_fast.data.manifest import load_manifest
    from convirt_fast.prepare.source import data_path
    from convirt_fast.presets import cpu_default

    if data is None:
        if reference is None:
            raise ValueError("--data is needed (no run checkpoint to take the data path from)")
        data = reference.data.path
    base = reference if reference is not None else cpu_default()
    config = dataclasses.replace(base.data, path=data)
    return load_manifest(data_path(config, base.train.seed, workers=max(1, workers)))


def run(args) -> dict:
    tasks = TASKS if "all" in args.task else tuple(t for t in TASKS if t in args.task)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded: list[LoadedEncoder] = [load_encoder(c) for c in args.checkpoint]
    from convirt_fast.config import Config
    from convirt_fast.presets import cpu_default

    reference = next((Config.from_dict(le.config) for le in loaded if le.config is not None), None)
    baseline_model = reference.model if reference is not None else cpu_default().model
    loaded += [load_encoder(init, baseline_model, args.arch) for init in args.init]
    if not loaded:
        raise ValueError("nothing to evaluate: pass --checkpoint and/or --init random|PATH")
    _unique_names(loaded)
    spec = reference.data.augment if reference is not None else next(
        (le.augment for le in loaded if le.augment is not None), AugmentSpec())
    if args.image_size:
        spec = dataclasses.replace(spec, output_size=args.image_size)
    if getattr(args, "benchmark", None) == "paper":
        return run_paper_benchmark(args, loaded, spec, device)

    manifest = None
    needs_task = bool({"linear", "finetune", "zeroshot"} & set(tasks))
    if needs_task or not args.retrieval_csv:
        manifest = resolve_data(args.data, reference, args.workers)
    task = None
    if needs_task:
        from convirt_fast.eval.tasks import build_task

        task = build_task(manifest)
    retrieval, retrieval_source = None, None
    if "retrieval" in tasks:
        if args.retrieval_csv:
            from convirt_fast.eval.retrieval import read_retrieval_csv

            retrieval = read_retrieval_csv(args.retrieval_csv, args.text_queries, image_col=args.image_col,
                                           category_col=args.category_col, role_col=args.role_col)
            retrieval_source = str(args.retrieval_csv)
        else:
            from convirt_fast.eval.retrieval import read_retrieval_set

            rs = read_retrieval_set(manifest)
            if rs is None:
                print(f"[evaluate] {manifest.root}: no retrieval_images.csv, retrieval skipped "
                      f"(pass --retrieval-csv for a set of your own)")
            else:
                retrieval, retrieval_source = (manifest, rs), str(manifest.root / "retrieval_images.csv")

    finetune = _finetune_settings(args, device)
    prompts = None
    if task is not None:
        from convirt_fast.eval.zeroshot import load_prompts

        prompts = load_prompts(task.labels, args.prompts)
    settings = SuiteSettings(tasks=tasks, fractions=tuple(args.fractions), seeds=tuple(range(args.seeds)),
                             finetune=finetune, finetune_seeds=tuple(range(args.finetune_seeds or args.seeds)),
                             prompts=prompts, batch_size=args.batch_size, workers=args.workers)
    if "finetune" in tasks and device.type == "cpu":
        print(f"[evaluate] fine-tuning on a CPU: at most {finetune.max_epochs} epochs, {finetune.warmup_steps} "
              f"warm-up steps (paper: 100 / 200; --finetune-epochs, --finetune-warmup-steps)")
    results = {
        "created": datetime.now().isoformat(timespec="seconds"), "device": str(device),
        "data": str(manifest.root) if manifest is not None else None, "retrieval_source": retrieval_source,
        "task": task_summary(task) if task is not None else None,
        "settings": {"tasks": list(tasks), "fractions": list(settings.fractions),
                     "fraction_keys": [fraction_key(f) for f in settings.fractions], "seeds": list(settings.seeds),
                     "finetune_seeds": list(settings.finetune_seeds), "finetune": dataclasses.asdict(finetune),
                     "image_size": spec.output_size},
        "encoders": [],
    }
    for le in loaded:
        r = evaluate_encoder(le.encoder, manifest=manifest, task=task, retrieval=retrieval, spec=spec, device=device,
                             settings=settings)
        results["encoders"].append({"name": le.encoder.name, "source": le.source, "results": r})
    from convirt_fast.eval.report import write_report

    out = Path(args.out) if args.out else _default_out(args.checkpoint)
    files = write_report(results, out)
    print(f"[evaluate] report: {files['markdown']}\n[evaluate] numbers: {files['json']}")
    print(_short_summary(results))
    return results


def _finetune_settings(args, device: torch.device) -> FinetuneSettings:
    return FinetuneSettings(
        lr=args.finetune_lr, head_lr=args.finetune_head_lr, batch_size=args.batch_size,
        warmup_steps=_default(args.finetune_warmup_steps, CPU_FINETUNE_WARMUP, 200, device),
        max_epochs=_default(args.finetune_epochs, CPU_FINETUNE_EPOCHS, 100, device),
        max_steps=args.finetune_max_steps)


def run_paper_benchmark(args, loaded: list[LoadedEncoder], spec, device: torch.device) -> dict:
    """`--benchmark paper` (eval/paper_benchmark.py): every given task, one report in the layout
    of the paper's Tables 1-2. Fractions and the fine-tune lr are the paper's per task."""
    from convirt_fast.eval.paper_benchmark import parse_data, run_paper
    from convirt_fast.eval.report import write_paper_report

    data = parse_data(args.data)
    finetune = _finetune_settings(args, device)
    seeds = tuple(range(args.seeds))
    finetune_seeds = tuple(range(args.finetune_seeds or args.seeds))
    if device.type == "cpu":
        print(f"[evaluate] fine-tuning on a CPU: at most {finetune.max_epochs} epochs, {finetune.warmup_steps} "
              f"warm-up steps (paper: 100 / 200; --finetune-epochs, --finetune-warmup-steps)")
    bench = run_paper([le.encoder for le in loaded], data, spec=spec, device=device, seeds=seeds, finetune=finetune,
                      finetune_seeds=finetune_seeds, batch_size=args.batch_size, workers=args.workers)
    results = {
        "created": datetime.now().isoformat(timespec="seconds"), "device": str(device),
        "settings": {"seeds": list(seeds), "finetune_seeds": list(finetune_seeds),
                     "finetune": dataclasses.asdict(finetune), "image_size": spec.output_size},
        "encoders": [{"name": le.encoder.name, "source": le.source} for le in loaded],
        "paper": bench,
    }
    out = Path(args.out) if args.out else _default_out(args.checkpoint)
    files = write_paper_report(results, out)
    print(f"[evaluate] report: {files['markdown']}\n[evaluate] numbers: {files['json']}")
    return results


def _default(given, cpu: int, paper: int, device: torch.device) -> int:
    if given is not None:
        return given
    return cpu if device.type == "cpu" else paper


def _default_out(checkpoints: list[str]) -> Path:
    stamp = f"eval-{datetime.now():%Y%m%d-%H%M%S}"
    if checkpoints:
        path = Path(checkpoints[0])
        run = path if path.is_dir() else path.parent.parent if path.parent.name in ("checkpoints", "export") else None
        if run is not None:
            return run / stamp
    return Path(stamp)


def _unique_names(loaded: list[LoadedEncoder]) -> None:
    seen: dict[str, int] = {}
    for le in loaded:
        name = le.encoder.name
        if name in seen:
            seen[name] += 1
            le.encoder.name = f"{name} #{seen[name]}"
        else:
            seen[name] = 1


def _short_summary(results: dict) -> str:
    lines = []
    for e in results["encoders"]:
        r = e["results"]
        parts = []
        for direction in ("image_to_image", "text_to_image"):
            if r.get("retrieval") and direction in r["retrieval"]:
                parts.append(f"{direction} P@10 {r['retrieval'][direction]['overall']['P@10']:.3f}")
        for key in ("linear", "finetune"):
            for f, v in (r.get(key) or {}).items():
                parts.append(f"{key} {f} {v['mean']:.3f}±{v['std']:.3f}")
        if "zeroshot" in r:
            parts.append(f"zeroshot {r['zeroshot']['value']:.3f}")
        lines.append(f"  {e['name']}: " + "; ".join(parts))
    return "\n".join(lines)

