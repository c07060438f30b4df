"""Command line: `python -m convirt_fast.prepare {mimic-cxr,csv,synthetic,check} ...`.

    python -m convirt_fast.prepare mimic-cxr --root /data/mimic-cxr-jpg/2.0.0 --out prepared/mimic
    python -m convirt_fast.prepare csv --csv pairs.csv --image-col image --text-col notes \\
        --patient-col patient_id --out prepared/mine
    python -m convirt_fast.prepare synthetic --n 4000 --out prepared/synthcxr
    python -m convirt_fast.prepare check --train prepared/mimic --eval prepared/mine

Exit status: 0 done, 1 leakage found, 2 unusable input (the message names the file).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from convirt_fast.data.leakage import LeakageError
from convirt_fast.data.manifest import ManifestError
from convirt_fast.prepare.common import PrepareError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convirt_fast.prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", type=Path, required=True, help="prepared folder to write (created)")
        sp.add_argument("--workers", type=int, default=0, help="parallel workers (0: all cores)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = sub.add_parser("mimic-cxr", help="MIMIC-CXR-JPG 2.0.0")
    m.add_argument("--root", type=Path, required=True, help="folder holding the CSVs and files/")
    m.add_argument("--reports", type=Path, help="reports folder or mimic-cxr-reports.zip (default: under --root)")
    m.add_argument("--views", default="PA,AP", help="accepted ViewPosition values, comma-separated; 'all' for every view")
    common(m)

    c = sub.add_parser("csv", help="your own CSV of image paths and report text")
    c.add_argument("--csv", type=Path, required=True)
    c.add_argument("--image-col", required=True)
    c.add_argument("--text-col", required=True)
    c.add_argument("--patient-col")
    c.add_argument("--split-col", help="train/validate/test per row (else split by patient, seeded)")
    c.add_argument("--label-cols", nargs="*", default=[], help="label columns: 1, 0, -1 or blank")
    c.add_argument("--id-col", help="study id column (default: row<line number>)")
    c.add_argument("--image-root", type=Path, help="folder image paths are relative to (default: the CSV's)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--validate-fraction", type=float, default=0.1)
    c.add_argument("--test-fraction", type=float, default=0.1)
    common(c)

    s = sub.add_parser("synthetic", help="SynthCXR, the built-in synthetic data set")
    s.add_argument("--n", type=int, default=4000, help="train + validate studies")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256, help="image side in pixels")
    common(s)

    k = sub.add_parser("check", help="leakage between a prepared training set and an evaluation set")
    k.add_argument("--train", type=Path, required=True)
    k.add_argument("--eval", type=Path, help="prepared evaluation set (omit: check --train's own splits)")
    k.add_argument("--train-splits", default="train")
    k.add_argument("--eval-splits", default="", help="comma-separated (default: all)")
    k.add_argument("--no-image-hash", action="store_true", help="compare patients only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except LeakageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (PrepareError, ManifestError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    t0 = time.perf_counter()
    progress = not getattr(args, "no_progress", True)
    if args.command == "mimic-cxr":
        from convirt_fast.prepare.mimic_cxr import MimicConfig, prepare_mimic_cxr

        views = () if args.views.strip().lower() == "all" else tuple(v.strip() for v in args.views.split(",") if v.strip())
        summary = prepare_mimic_cxr(args.out, MimicConfig(args.root, views, args.reports), workers=args.workers, progress=progress)
    elif args.command == "csv":
        from convirt_fast.prepare.own_csv import CsvConfig, prepare_csv

        cfg = CsvConfig(
            csv=args.csv,
            image_col=args.image_col,
            text_col=args.text_col,
            patient_col=args.patient_col,
            split_col=args.split_col,
            label_cols=tuple(args.label_cols),
            id_col=args.id_col,
            image_root=args.image_root,
            seed=args.seed,
            validate_fraction=args.validate_fraction,
            test_fraction=args.test_fraction,
        )
        summary = prepare_csv(args.out, cfg, workers=args.workers, progress=progress)
    elif args.command == "synthetic":
        from convirt_fast.data.synthcxr import SynthConfig
        from convirt_fast.prepare.synthetic import prepare_synthetic

        summary = prepare_synthetic(args.out, SynthConfig(n=args.n, seed=args.seed, size=args.size), workers=args.workers, progress=progress)
        rate = summary.extra["studies_per_second"]
        print(f"generated at {rate:.0f} studies/s with {args.workers or 'all'} worker(s)", file=sys.stderr)
    else:
        from convirt_fast.prepare.check import check_prepared

        report = check_prepared(
            args.train,
            args.eval,
            train_splits=tuple(s for s in args.train_splits.split(",") if s),
            eval_splits=tuple(s for s in args.eval_splits.split(",") if s) or None,
            hash_images=not args.no_image_hash,
        )
        if not report.ok:
            raise LeakageError(f"{args.train} vs {args.eval or 'its own splits'}: {report.describe()}")
        print(f"no leakage: {args.train} vs {args.eval or 'its own splits'}")
        return 0
    print(summary.describe() + f" in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
