"""What the Hub's dataset viewer shows for one row of each family, before and after issue 14.

For one config, one test id, and one split per family (reference, clean, SNR, SIB, SVB,
attack), each cell of the row goes through the viewer's conversion (Pillow to JPEG, else PNG,
shown at 8 bits: ``tests/test_viewer.py``). Columns: before ``image``, before ``mask``, after
``image``, after ``preview``, after ``mask``. A cell the viewer cannot show is crossed out.

    python benchmarks/viewer.py --before /tmp/pkg-before --after /tmp/pkg-after \
        --out docs/images/viewer_before_after.png
"""

from __future__ import annotations

import io
from pathlib import Path

import _common
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from tests.test_viewer import viewer_picture, visible

SPLITS = ("test", "clean", "snr_2", "sib_3", "svb_3", "pgd_8")
COLUMNS = (
    ("before", "image"),
    ("before", "mask"),
    ("after", "image"),
    ("after", "preview"),
    ("after", "mask"),
)
TILE = 128


def _row(pkg: Path, config: str, split: str) -> dict:
    path = sorted((pkg / "data" / config).glob(f"{split}-*.parquet"))[0]
    return pq.read_table(path).slice(0, 1).to_pylist()[0]


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--config", default="mito")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    font = ImageFont.load_default(size=11)
    head, left, gap = 18, 52, 4
    width = left + len(COLUMNS) * (TILE + gap)
    height = head + len(SPLITS) * (TILE + gap)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    for j, (when, col) in enumerate(COLUMNS):
        draw.text((left + j * (TILE + gap), 3), f"{when}: {col}", fill=0, font=font)
    shown = {}
    for i, split in enumerate(SPLITS):
        y = head + i * (TILE + gap)
        draw.text((2, y + TILE // 2 - 6), split, fill=0, font=font)
        rows = {w: _row(getattr(args, w), args.config, split) for w in ("before", "after")}
        for j, (when, col) in enumerate(COLUMNS):
            x = left + j * (TILE + gap)
            cell = rows[when].get(col)
            pic = viewer_picture(cell["bytes"]) if cell else None
            shown[f"{split}/{when}/{col}"] = visible(pic)
            if pic is None:
                draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=0)
                draw.line((x, y, x + TILE - 1, y + TILE - 1), fill=0)
                draw.line((x, y + TILE - 1, x + TILE - 1, y), fill=0)
                continue
            tile = Image.fromarray(pic).resize((TILE, TILE), Image.Resampling.BOX)
            canvas.paste(tile, (x, y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    args.out.write_bytes(buf.getvalue())
    print(f"{args.out} ({len(buf.getvalue()) // 1000} kB)")
    for when, col in COLUMNS:
        n = sum(shown[f"{s}/{when}/{col}"] for s in SPLITS)
        print(f"{when} {col}: visible in {n} of {len(SPLITS)} families")


if __name__ == "__main__":
    main()
