"""Pretrain image and text encoders with ConVIRT.

    torchrun -m convirt_fast.train                                   # SynthCXR, minutes on a CPU
    torchrun -m convirt_fast.train --train.max_steps=50              # overrides: --section.field=value
    torchrun --nproc_per_node=8 -m convirt_fast.train --preset mimic-paper \\
        --data.path=prepared/mimic --model.text_encoder=/models/ClinicalBERT
    python -m convirt_fast.train --help                              # every option, with its doc

Multi-node: the same command on each node with torchrun's --nnodes/--node_rank/--rdzv_* options.
"""

from __future__ import annotations

import os
import sys

# OpenMP threads that spin while waiting take the cores from the DataLoader workers and from
# each other: on a 2-core machine a training step ran 3-4x slower. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from convirt_fast.cli import parse_args  # noqa: E402
from convirt_fast.distributed import barrier, cleanup  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Train as the command line says; 2 on a bad command line. --help prints every option and
    exits 0 (SystemExit, from parse_args)."""
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from convirt_fast.post_train import format_summary, post_train
    from convirt_fast.trainer import Trainer

    try:
        trainer = Trainer(cfg)
        summary = trainer.fit()
        # Every rank is done with the group: leave it together (a rank tearing gloo down while
        # another still uses it can abort), then rank 0 post-trains from the folder, alone.
        barrier()
        cleanup()
        if trainer.info.is_main:  # evaluation, exports, plot, summary.json: from the run folder
            print(format_summary(post_train(trainer.run_dir, summary, device=trainer.device)))
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
