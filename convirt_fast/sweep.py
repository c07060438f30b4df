"""Sweep config fields over seeds: one torchrun of the trainer per grid point and seed, run one
after another, then one table (markdown + JSON) and a plot of each metric against the swept value.

    python -m convirt_fast.sweep --preset cpu-default --grid loss.tau=0.01,0.1,1 --seeds 0,1,2
    python -m convirt_fast.sweep --grid model.projection=mlp,linear --grid data.batch_size=16,32 --probe
    python -m convirt_fast.sweep --grid loss.lam=0.25,1 --train.max_steps=400   # fixed overrides for every run

Any config field can be swept (`--grid section.field=v1,v2,...`; values containing commas go in
brackets, `(0.9,1.0)`); several --grid flags make their product; other `--section.field=value`
options apply to every run. Resumable: runs live under <out>/points/<config hash>/seed<k>, named by
the whole resolved config (seed aside), so a point that another sweep in the same --out folder
already ran is reused, a finished run (its summary.json) is never rerun, and an interrupted one
continues from its last checkpoint (the trainer's resume=auto). Retrieval comes from each run's
own post-training evaluation; --probe adds the linear probe at 1 % of the labels, for the run's
encoder and for a randomly initialised one of the same architecture (the paper's baseline row).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from convirt_fast.cli import parse_args
from convirt_fast.io import atomic_write_json
from convirt_fast.sweep_report import Measurement, write_sweep_report

# Fields that name or display a run and do not change what it computes: left out of the point's
# identity, so a rerun with another folder or progress setting finds the same point.
_NOT_IDENTITY = {"train": ("seed", "out_dir", "run_name", "resume", "progress", "tensorboard")}


@dataclass(frozen=True)
class Point:
    """One grid point: the swept fields' values, as typed on the command line."""

    values: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values)

    def args(self) -> list[str]:
        return [f"--{k}={v}" for k, v in self.values]


def split_values(text: str) -> list[str]:
    """'0.01,0.1,1' -> ['0.01', '0.1', '1']; commas inside brackets stay: '(0.9,1.0),(0.5,1.0)'."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    values = [v.strip() for v in values]
    if not all(values):
        raise ValueError(f"--grid value list {text!r} has an empty value")
    return values


def parse_grid(specs: list[str]) -> tuple[list[str], list[Point]]:
    """The swept keys and the product of their values, in command-line order."""
    axes: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, eq, values = spec.partition("=")
        if not eq or not key or "." not in key:
            raise ValueError(f"--grid {spec!r}: expected section.field=v1,v2,... (e.g. loss.tau=0.01,0.1,1)")
        if key in [k for k, _ in axes]:
            raise ValueError(f"--grid {key} given twice")
        axes.append((key, split_values(values)))
    keys = [k for k, _ in axes]
    points = [Point(tuple(zip(keys, combo))) for combo in itertools.product(*(v for _, v in axes))]
    return keys, points


def config_hash(config: dict) -> str:
    """The identity of a resolved config: everything but the fields in _NOT_IDENTITY."""
    ident = {section: ({k: v for k, v in body.items() if k not in _NOT_IDENTITY.get(section, ())}
                       if isinstance(body, dict) else body) for section, body in config.items() if section != "preset"}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_diff(config: dict, base: dict, prefix: str = "") -> dict:
    """The fields of `config` that differ from `base` (the preset's), as dotted names."""
    diff = {}
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            diff.update(config_diff(value, base[key], f"{prefix}{key}."))
        elif base.get(key) != value and key not in _NOT_IDENTITY.get(prefix.rstrip("."), ()):
            diff[f"{prefix}{key}"] = value
    return diff


@dataclass
class Run:
    point: Point
    seed: int
    folder: Path
    """The trainer's run folder: <out>/points/<hash>/seed<k>."""
    train_args: list[str]

    @property
    def finished(self) -> bool:
        return (self.folder / "summary.json").exists()

    @property
    def log(self) -> Path:
        return self.folder.parent / f"seed{self.seed}.log"

    @property
    def recorded_wall_s(self) -> float | None:
        """The sweep's time for this run (training and probe), from an earlier invocation."""
        record = self.folder / "sweep_run.json"
        return json.loads(record.read_text()).get("wall_s") if record.exists() else None


def plan(preset: str, fixed: list[str], points: list[Point], seeds: list[int], out: Path) -> list[Run]:
    """Every run, all configs checked before anything is written (a typo fails before hours of
    training, not after); each point's folder gets point.json, what it changes in the preset."""
    base = parse_args(["--preset", preset]).to_dict()
    runs, configs = [], {}
    for point in points:
        for seed in seeds:
            args = ["--preset", preset, *fixed, *point.args(), f"--train.seed={seed}"]
            try:
                config = parse_args(args).to_dict()
            except ValueError as error:
                raise ValueError(f"grid point {point.label or '(preset)'}, seed {seed}: {error}") from None
            point_dir = out / "points" / config_hash(config)
            configs[point_dir] = config
            runs.append(Run(point, seed, point_dir / f"seed{seed}", args))
    for point_dir, config in configs.items():
        if not (point_dir / "point.json").exists():
            point_dir.mkdir(parents=True, exist_ok=True)
            (point_dir / "point.json").write_text(json.dumps(
                {"preset": preset, "differs_from_preset": config_diff(config, base)}, indent=2, default=str))
    return runs


def _run_logged(command: list[str], log: Path, timeout: float | None) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(command)}\n")
        f.flush()
        try:
            rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[sweep] stopped after {timeout} s\n")
            rc = 124
    return rc, time.perf_counter() - started


def train(run: Run, nproc: int, timeout: float | None) -> tuple[int, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "convirt_fast.train", *run.train_args, f"--train.out_dir={run.folder.parent}",
               f"--train.run_name={run.folder.name}", "--train.progress=false"]
    return _run_logged(command, run.log, timeout)


def probe(run: Run, probe_seeds: int, timeout: float | None) -> tuple[int, float]:
    """Linear probe at 1 % of the labels: the run's encoder and a random init of its architecture,
    on the run's own data (SynthCXR draws its data from the seed)."""
    command = [sys.executable, "-m", "convirt_fast.evaluate", "--checkpoint", str(run.folder), "--init", "random",
               "--task", "linear", "--fractions", "0.01", "--seeds", str(probe_seeds),
               "--out", str(run.folder / "probe")]
    return _run_logged(command, run.log, timeout)


def measure(run: Run, wall_s: float | None) -> Measurement:
    summary = json.loads((run.folder / "summary.json").read_text())
    retrieval = summary.get("retrieval") or {}
    metrics: dict[str, float] = {}
    per_category: dict[str, float] = {}
    for direction, name in (("text_to_image", "t2i"), ("image_to_image", "i2i")):
        if direction in retrieval:
            metrics[f"{name}_P@10"] = retrieval[direction]["overall"]["P@10"]
            if direction == "text_to_image":
                per_category = {c: v["P@10"] for c, v in retrieval[direction]["per_category"].items()}
    if summary.get("best_validation_loss") is not None:
        metrics["val_loss"] = summary["best_validation_loss"]
    probe_file = run.folder / "probe" / "results.json"
    if probe_file.exists():
        for encoder in json.loads(probe_file.read_text())["encoders"]:
            linear = encoder["results"].get("linear") or {}
            if "1%" in linear:
                key = "probe_1%_random" if encoder["name"].startswith("random") else "probe_1%"
                metrics[key] = linear["1%"]["mean"]
                metrics.setdefault("probe_metric", linear["1%"]["metric"])
    return Measurement(point=run.point.label, values=dict(run.point.values), seed=run.seed, folder=str(run.folder),
                       metrics=metrics, per_category_t2i=per_category, chance=retrieval.get("chance"),
                       train_s=summary.get("seconds"), wall_s=wall_s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convirt_fast.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-default")
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="a swept field; repeat for a product")
    p.add_argument("--seeds", default="0,1,2", help="train.seed values, comma-separated (default 0,1,2)")
    p.add_argument("--probe", action="store_true", help="also the linear probe at 1%% of the labels (and random init)")
    p.add_argument("--probe-seeds", type=int, default=5, help="label subsets per probe (default 5)")
    p.add_argument("--out", default="sweeps", help="runs and tables (default ./sweeps); shared by sweeps")
    p.add_argument("--name", default=None, help="table folder under --out (default: the swept fields)")
    p.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun --nproc_per_node)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run before it is stopped")
    return p


def main(argv: list[str] | None = None) -> int:
    args, fixed = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        bad = [a for a in fixed if not (a.startswith("--") and "." in a.partition("=")[0])]
        if bad:
            raise ValueError(f"unexpected arguments {bad} (fixed overrides look like --section.field=value)")
        if not args.grid:
            raise ValueError("nothing to sweep: give at least one --grid section.field=v1,v2,...")
        seeds = [int(s) for s in args.seeds.split(",")]
        keys, points = parse_grid(args.grid)
        out = Path(args.out)
        runs = plan(args.preset, fixed, points, seeds, out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    todo = [r for r in runs if not r.finished or (args.probe and not (r.folder / "probe" / "results.json").exists())]
    print(f"[sweep] {len(points)} point(s) x {len(seeds)} seed(s) = {len(runs)} runs; "
          f"{len(runs) - len(todo)} already done, {len(todo)} to run (logs: <point>/seed<k>.log)")
    completed = 0  # runs this invocation finished: the ETA's pace
    failed: list[str] = []
    started = time.perf_counter()
    for i, run in enumerate(todo, 1):
        eta = ""
        if completed:
            eta = f", about {(time.perf_counter() - started) / completed * (len(todo) - i + 1) / 60:.0f} min left"
        print(f"[sweep] {i}/{len(todo)}: {run.point.label or '(preset)'}, seed {run.seed} -> {run.folder}{eta}",
              flush=True)
        wall = run.recorded_wall_s or 0.0  # re-entered for the probe only: training time was recorded then
        if not run.finished:
            rc, wall = train(run, args.nproc, args.timeout)
            if rc != 0 or not run.finished:
                failed.append(f"{run.point.label} seed {run.seed}: trainer exited with {rc}; log {run.log}")
                print(f"[sweep]   failed ({rc}); log: {run.log}", flush=True)
                continue
        if args.probe and not (run.folder / "probe" / "results.json").exists():
            rc, probe_wall = probe(run, args.probe_seeds, args.timeout)
            wall += probe_wall
            if rc != 0:
                failed.append(f"{run.point.label} seed {run.seed}: probe exited with {rc}; log {run.log}")
        completed += 1
        atomic_write_json(run.folder / "sweep_run.json", {"wall_s": round(wall, 1), "args": run.train_args})
    measurements = []
    for run in runs:
        if run.finished:
            measurements.append(measure(run, run.recorded_wall_s))
    name = args.name or "+".join(keys)
    files = write_sweep_report(measurements, keys, out / name, preset=args.preset, fixed=fixed, seeds=seeds,
                               command=" ".join(["python -m convirt_fast.sweep", *(sys.argv[1:] if argv is None else argv)]))
    print(files["table"].read_text())
    print(f"[sweep] table: {files['table']}; numbers: {files['json']}" + (f"; plot: {files['plot']}" if files.get("plot") else ""))
    if failed:
        print("[sweep] failed runs (rerun the same command to retry them):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
