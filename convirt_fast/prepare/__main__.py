"""Command line: `python -m convirt_fast.prepare {mimic-cxr,csv,synthetic,rsna,chexpert,covidx,mura,chexpert-8x200,tokenizer,check} ...`.

    python -m convirt_fast.prepare mimic-cxr --root /data/mimic-cxr-jpg/2.0.0 --out prepared/mimic
    python -m convirt_fast.prepare csv --csv pairs.csv --image-col image --text-col notes \\
        --patient-col patient_id --out prepared/mine
    python -m convirt_fast.prepare synthetic --n 4000 --out prepared/synthcxr
    python -m convirt_fast.prepare rsna --root /data/rsna-pneumonia --out prepared/rsna
    python -m convirt_fast.prepare chexpert --root /data/CheXpert-v1.0-small --out prepared/chexpert
    python -m convirt_fast.prepare covidx --root /data/covidx --train-list train_COVIDx4.txt \
        --test-list test_COVIDx4.txt --out prepared/covidx
    python -m convirt_fast.prepare mura --root /data/MURA-v1.1 --out prepared/mura
    python -m convirt_fast.prepare chexpert-8x200 --root /data/CheXpert-v1.0-small --out prepared/chexpert-8x200
    python -m convirt_fast.prepare tokenizer prepared/mine --vocab-size 2000
    python -m convirt_fast.prepare check --train prepared/mimic --eval prepared/mine

The paired sets (mimic-cxr, csv, synthetic) also get the WordPiece tokenizer of their training
sentences (tokenizers/wordpiece-<--vocab-size>/), which runs without a pretrained text encoder use.

Images may be JPEG, PNG (8/16-bit) or DICOM (the `dicom` extra). The downstream sets' layouts,
labels and split sizes: docs/evaluation.md and each preparer's module docstring.

Exit status: 0 done, 1 leakage found, 2 unusable input (the message names the file).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from convirt_fast.data.leakage import LeakageError
from convirt_fast.data.manifest import ManifestError
from convirt_fast.prepare.common import PrepareError
from convirt_fast.prepare.tokenizer import DEFAULT_VOCAB_SIZE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convirt_fast.prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", type=Path, required=True, help="prepared folder to write (created)")
        sp.add_argument("--workers", type=int, default=0, help="parallel workers (0: all cores)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    def vocab(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help=f"WordPiece vocabulary built from the training sentences (default {DEFAULT_VOCAB_SIZE})")

    m = sub.add_parser("mimic-cxr", help="MIMIC-CXR-JPG 2.0.0")
    m.add_argument("--root", type=Path, required=True, help="folder holding the CSVs and files/")
    m.add_argument("--reports", type=Path, help="reports folder or mimic-cxr-reports.zip (default: under --root)")
    m.add_argument("--views", default="PA,AP", help="accepted ViewPosition values, comma-separated; 'all' for every view")
    m.add_argument("--image-root", type=Path, help="folder holding files/pXX/... images (default: --root); e.g. "
                   "the MIMIC-CXR (DICOM) release beside the JPG release's CSVs")
    m.add_argument("--image-format", choices=("auto", "jpg", "dcm"), default="auto",
                   help="<dicom_id>.jpg or <dicom_id>.dcm (auto: the .jpg when present, else the .dcm)")
    common(m)
    vocab(m)

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
    vocab(c)

    s = sub.add_parser("synthetic", help="SynthCXR, the built-in synthetic data set")
    s.add_argument("--n", type=int, default=4000, help="train + validate studies")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256, help="image side in pixels")
    common(s)
    vocab(s)

    r = sub.add_parser("rsna", help="RSNA Pneumonia Detection Challenge (stage 2, DICOM)")
    r.add_argument("--root", type=Path, required=True, help="folder holding stage_2_train_labels.csv and stage_2_train_images/")
    r.add_argument("--validate-size", type=int, default=1500, help="patients held out for validation (paper 1,500)")
    r.add_argument("--test-size", type=int, default=3000, help="patients held out for test without --test-labels (paper 3,000)")
    r.add_argument("--test-labels", type=Path, help="labels CSV of a test set (same columns), images in --test-images")
    r.add_argument("--test-images", default="stage_2_test_images", help="test image folder under --root")
    r.add_argument("--seed", type=int, default=0)
    common(r)

    x = sub.add_parser("chexpert", help="CheXpert-v1.0 or -small: the 5 competition labels")
    x.add_argument("--root", type=Path, required=True, help="folder holding train.csv, valid.csv, train/, valid/")
    x.add_argument("--uncertain", choices=("zeros", "ones"), default="zeros", help="uncertain (-1.0) -> 0 or 1")
    x.add_argument("--views", choices=("frontal", "all"), default="frontal", help="paper's sizes: all")
    x.add_argument("--validate-size", type=int, default=5000, help="train images held out by patient (paper 5,000)")
    x.add_argument("--seed", type=int, default=0)
    common(x)

    v = sub.add_parser("covidx", help="COVIDx, 3 classes (normal, pneumonia, COVID-19)")
    v.add_argument("--root", type=Path, required=True, help="folder holding train/ and test/")
    v.add_argument("--train-list", type=Path, required=True, help="e.g. train_COVIDx4.txt")
    v.add_argument("--test-list", type=Path, required=True, help="e.g. test_COVIDx4.txt")
    v.add_argument("--train-dir", default="train")
    v.add_argument("--test-dir", default="test")
    v.add_argument("--validate-size", type=int, default=300, help="train images held out by patient (paper 300)")
    v.add_argument("--seed", type=int, default=0)
    common(v)

    u = sub.add_parser("mura", help="MURA-v1.1: abnormal vs normal, study-level AUC")
    u.add_argument("--root", type=Path, required=True, help="the MURA-v1.1 folder")
    u.add_argument("--validate-size", type=int, default=3730, help="train images held out by patient (paper 3,730)")
    u.add_argument("--seed", type=int, default=0)
    common(u)

    e = sub.add_parser("chexpert-8x200", help="the paper's CheXpert 8x200 retrieval set")
    e.add_argument("--root", type=Path, required=True, help="CheXpert folder holding train.csv")
    e.add_argument("--candidates", type=int, default=200, help="candidate images per category (paper 200)")
    e.add_argument("--queries", type=int, default=10, help="query images per category (paper 10)")
    e.add_argument("--text-queries", type=Path, help="category,text CSV (default: the built-in 5 per category)")
    e.add_argument("--seed", type=int, default=0)
    common(e)

    t = sub.add_parser("tokenizer", help="(re)build a prepared folder's WordPiece tokenizer")
    t.add_argument("folder", type=Path, help="a prepared folder")
    vocab(t)

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
        cfg = MimicConfig(args.root, views, args.reports, image_root=args.image_root, image_format=args.image_format)
        summary = prepare_mimic_cxr(args.out, cfg, workers=args.workers, progress=progress)
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
    elif args.command in _DOWNSTREAM:
        summary = _DOWNSTREAM[args.command](args, progress)
    elif args.command == "tokenizer":
        print(f"tokenizer: {_build_tokenizer(args.folder, args.vocab_size)}")
        return 0
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
    if args.command in ("mimic-cxr", "csv", "synthetic"):
        print(f"tokenizer: {_build_tokenizer(args.out, args.vocab_size)}", file=sys.stderr)
    print(summary.describe() + f" in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def _build_tokenizer(folder: Path, vocab_size: int) -> Path:
    from convirt_fast.data.manifest import load_manifest
    from convirt_fast.prepare.tokenizer import build_tokenizer, tokenizer_dir

    if vocab_size < 5:  # the special tokens alone take 5
        raise ValueError(f"--vocab-size must be >= 5, got {vocab_size}")
    shutil.rmtree(tokenizer_dir(folder, vocab_size), ignore_errors=True)  # rebuilt from the data as it is now
    return build_tokenizer(load_manifest(folder), vocab_size)


def _rsna(args, progress):
    from convirt_fast.prepare.rsna import RsnaConfig, prepare_rsna

    cfg = RsnaConfig(args.root, seed=args.seed, validate_size=args.validate_size, test_size=args.test_size,
                     test_labels=args.test_labels, test_images=args.test_images)
    return prepare_rsna(args.out, cfg, workers=args.workers, progress=progress)


def _chexpert(args, progress):
    from convirt_fast.prepare.chexpert import ChexpertConfig, prepare_chexpert

    cfg = ChexpertConfig(args.root, uncertain=args.uncertain, views=args.views, validate_size=args.validate_size,
                         seed=args.seed)
    return prepare_chexpert(args.out, cfg, workers=args.workers, progress=progress)


def _covidx(args, progress):
    from convirt_fast.prepare.covidx import CovidxConfig, prepare_covidx

    cfg = CovidxConfig(args.root, args.train_list, args.test_list, train_dir=args.train_dir, test_dir=args.test_dir,
                       validate_size=args.validate_size, seed=args.seed)
    return prepare_covidx(args.out, cfg, workers=args.workers, progress=progress)


def _mura(args, progress):
    from convirt_fast.prepare.mura import MuraConfig, prepare_mura

    return prepare_mura(args.out, MuraConfig(args.root, validate_size=args.validate_size, seed=args.seed),
                        workers=args.workers, progress=progress)


def _chexpert_8x200(args, progress):
    from convirt_fast.prepare.chexpert_8x200 import Chexpert8x200Config, prepare_chexpert_8x200

    cfg = Chexpert8x200Config(args.root, candidates=args.candidates, queries=args.queries,
                              text_queries=args.text_queries, seed=args.seed)
    return prepare_chexpert_8x200(args.out, cfg, workers=args.workers, progress=progress)


_DOWNSTREAM = {"rsna": _rsna, "chexpert": _chexpert, "covidx": _covidx, "mura": _mura, "chexpert-8x200": _chexpert_8x200}


if __name__ == "__main__":
    sys.exit(main())
