"""A contact sheet of SynthCXR: one row per category, exclusively positive examples, for people
to check that each finding's signature is recognisable.

    python -m convirt_fast.data.synthcxr.contact_sheet --out docs/synthcxr_contact_sheet.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from convirt_fast.data.synthcxr import findings as F
from convirt_fast.data.synthcxr.dataset import StudyPlan, SynthConfig, synthesize

LABEL_WIDTH = 120


def contact_sheet(*, per_row: int = 6, size: int = 192, seed: int = 0) -> Image.Image:
    """(8 rows x per_row) grid, category names on the left; tiles are rendered at `size`."""
    cfg = SynthConfig(n=2, seed=seed, size=max(64, size))
    font = ImageFont.load_default(14)
    sheet = Image.new("L", (LABEL_WIDTH + per_row * size, len(F.CATEGORIES) * size), color=0)
    draw = ImageDraw.Draw(sheet)
    for r, cat in enumerate(F.CATEGORIES):
        found = () if cat == F.NO_FINDING else (cat,)
        for j in range(per_row):
            plan = StudyPlan(1_000_000 + r * 1000 + j, "sheet", "sheet", "retrieval", found, "candidate", cat)
            pixels, _ = synthesize(plan, cfg)
            sheet.paste(Image.fromarray(pixels), (LABEL_WIDTH + j * size, r * size))
        draw.multiline_text((6, r * size + size // 2 - 10), cat.replace(" ", "\n"), fill=255, font=font)
    return sheet


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/synthcxr_contact_sheet.png"))
    p.add_argument("--per-row", type=int, default=6)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img = contact_sheet(per_row=args.per_row, size=args.size, seed=args.seed)
    # 64 grey levels keep the PNG small without visible banding at this size.
    img = Image.fromarray((np.asarray(img) // 4 * 4).astype(np.uint8))
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
