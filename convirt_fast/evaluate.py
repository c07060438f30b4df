"""Evaluate image encoders with the paper's protocols (docs/evaluation.md).

    python -m convirt_fast.evaluate --checkpoint runs/RUN --init random --task all
    python -m convirt_fast.evaluate --checkpoint runs/RUN/checkpoints/best.pt --data prepared/mine --task linear
    python -m convirt_fast.evaluate --checkpoint runs/RUN/export/image_encoder.safetensors --task retrieval \\
        --retrieval-csv ../shared/data/covid-cxr/pairs.csv --category-col finding
    python -m convirt_fast.evaluate --checkpoint runs/RUN --init random --benchmark paper \\
        --data rsna=prepared/rsna,chexpert=prepared/chexpert,covidx=prepared/covidx,mura=prepared/mura,chexpert-8x200=prepared/chexpert-8x200
"""

from __future__ import annotations

import argparse
import sys

from convirt_fast.eval.suite import TASKS


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convirt_fast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="a run folder, a run checkpoint (.pt) or an exported image_encoder.safetensors; repeatable")
    p.add_argument("--init", action="append", default=[], metavar="random|PATH",
                   help="a baseline row from the same code: random init, or a torchvision state dict / safetensors; repeatable")
    p.add_argument("--arch", default=None, help="architecture for --init (default: the checkpoint's, else resnet18)")
    p.add_argument("--data", default=None, help="prepared folder, its manifest.csv, or synthcxr (default: the run's); "
                   "with --benchmark paper: KEY=DIR,... for rsna, chexpert, covidx, mura, chexpert-8x200")
    p.add_argument("--benchmark", choices=("paper",), default=None,
                   help="paper: the paper's Tables 1-2 over the --data folders (its fractions, seeds, lr; "
                        "--task and --fractions do not apply)")
    p.add_argument("--task", action="append", choices=(*TASKS, "all"), default=None,
                   help="retrieval | linear | finetune | zeroshot | all (default all); repeatable")
    p.add_argument("--out", default=None, help="report folder (default: <run>/eval-<time>, else ./eval-<time>)")
    g = p.add_argument_group("retrieval set of your own (docs/evaluation.md)")
    g.add_argument("--retrieval-csv", default=None, help="image, category[, role] CSV; paths relative to it")
    g.add_argument("--text-queries", default=None, help="category, text CSV (text->image)")
    g.add_argument("--image-col", default="image")
    g.add_argument("--category-col", default="category")
    g.add_argument("--role-col", default="role", help="absent column: leave-one-out over all images")
    g = p.add_argument_group("classification")
    g.add_argument("--fractions", type=_floats, default=[0.01, 0.1, 1.0], help="label fractions (default 0.01,0.1,1)")
    g.add_argument("--seeds", type=int, default=5, help="runs per fraction (default 5)")
    g.add_argument("--prompts", default=None, help="zero-shot prompts JSON {label: {positive: [...], negative: [...]}}")
    g = p.add_argument_group("fine-tuning (paper defaults on a GPU; capped on a CPU)")
    g.add_argument("--finetune-epochs", type=int, default=None, help="max epochs (paper 100 with early stop; CPU 2)")
    g.add_argument("--finetune-warmup-steps", type=int, default=None, help="head-only steps (paper 200; CPU 20)")
    g.add_argument("--finetune-max-steps", type=int, default=None, help="cap on all optimizer steps")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="paper: 1e-4 (1e-3 for COVIDx)")
    g.add_argument("--finetune-head-lr", type=float, default=1e-3)
    g.add_argument("--finetune-seeds", type=int, default=None, help="runs per fraction (default: --seeds)")
    g = p.add_argument_group("runtime")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--image-size", type=int, default=None, help="eval resize (default: the run's, else 224)")
    g.add_argument("--device", default=None)
    g.add_argument("--workers", type=int, default=2, help="loader worker processes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.task = args.task or ["all"]
    from convirt_fast.eval.main import run

    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
