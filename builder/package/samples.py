"""Sample grids for the dataset card: one test image id across every split made from it.

``images/<config>_samples.png`` shows, for the first id of ``test``: the mask, the noise-free
image (``clean``), the real image when there is one, the SNR levels from the reference (SNR 8)
to the noisiest, the SIB and SVB levels and every attack budget. Each tile is scaled to its
own 0.5-99.5 percentile range (the SNR levels differ in exposure, so a shared scale would
hide the noisy ones). Rows and columns come from the level tables of
:mod:`synthesis.levels`, so the grid and the splits cannot disagree.

The PNG is kept under :data:`MAX_PNG_BYTES`: noise compresses badly, so the tile size goes
down (:data:`TILE_SIZES`) until it fits.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from builder.package.manifest import split_files
from builder.package.shards import preview_pixels
from synthesis.levels import ATTACK_EPSILONS_GREY, ATTACKS, BLUR_LEVELS, REFERENCE_SNR, SNR_LEVELS
from synthesis.runtime.files import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Tile edge lengths (pixels) tried in order until the PNG fits in :data:`MAX_PNG_BYTES`.
TILE_SIZES: tuple[int, ...] = (128, 112, 96, 80, 64)
MAX_PNG_BYTES = 300_000
_CAPTION_PX = 15
_GAP_PX = 4
_TITLE_PX = 20


def grid_rows() -> list[list[str]]:
    """Split names of the grid, one list per row (``mask`` is the ground truth)."""
    rows = [
        ["mask", "clean", "real"],
        [f"snr_{s}" for s in sorted(SNR_LEVELS, reverse=True)],
        [f"sib_{lv}" for lv in BLUR_LEVELS],
        [f"svb_{lv}" for lv in BLUR_LEVELS],
    ]
    rows += [[f"{m}_{e}" for e in ATTACK_EPSILONS_GREY] for m in ATTACKS]
    return rows


def grid_path(out: Path, config: str) -> Path:
    return out / "images" / f"{config}_samples.png"


def _decode(cell: dict[str, Any]) -> np.ndarray:
    """An ``Image`` cell -> 2-D array (TIFF via tifffile: uint16/float32; PNG via Pillow)."""
    data = cell["bytes"]
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        return tifffile.imread(io.BytesIO(data))
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def _row_of(out: Path, paths: list[str], rid: str) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    for rel in paths:
        pf = pq.ParquetFile(out / rel)
        ids = pf.read(columns=["id"]).column("id").to_pylist()
        if rid in ids:
            table = pf.read(columns=["image", "mask"])
            return table.slice(ids.index(rid), 1).to_pylist()[0]
    return None


def _tile(array: np.ndarray, size: int, *, scale: bool) -> np.ndarray:
    from PIL import Image

    a = np.asarray(array, dtype=np.float32)
    if a.shape != (size, size):  # area average: keeps the noise statistics honest
        a = np.asarray(Image.fromarray(a, mode="F").resize((size, size), Image.Resampling.BOX))
    if scale:
        return preview_pixels(a)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _compose(title: str, rows: list[list[tuple[str, np.ndarray, bool]]], size: int) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    ncols = max(len(r) for r in rows)
    width = max(ncols * (size + _GAP_PX), int(font.getlength(title)) + _GAP_PX) + _GAP_PX
    height = _TITLE_PX + len(rows) * (size + _CAPTION_PX + _GAP_PX) + _GAP_PX
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP_PX, 4), title, fill=0, font=font)
    y = _TITLE_PX
    for row in rows:
        x = _GAP_PX
        for name, array, scale in row:
            canvas.paste(Image.fromarray(_tile(array, size, scale=scale), mode="L"), (x, y))
            draw.text((x + 2, y + size + 1), name, fill=0, font=font)
            x += size + _GAP_PX
        y += size + _CAPTION_PX + _GAP_PX
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render_grid(out: Path, manifest: dict[str, Any], config: str) -> bytes | None:
    """The PNG bytes of the sample grid of ``config``, or None if it has no test-based split.

    Raises:
        KeyError: ``config`` is not in the manifest.
    """
    splits = manifest["configs"][config]["splits"]
    test_based = [s for s in ("test", *splits) if s in splits and s not in ("train", "validation")]
    if not test_based:
        return None
    first = split_files(manifest, config, test_based[0])
    rid = None
    if first:
        import pyarrow.parquet as pq

        ids = pq.ParquetFile(out / first[0]).read(columns=["id"]).column("id").to_pylist()
        rid = ids[0] if ids else None
    if rid is None:
        return None
    # The reference condition is `test`; a build without the snr_8 alias still shows it.
    source = {n: n for n in splits}
    reference = f"snr_{REFERENCE_SNR:g}"
    if reference not in source and "test" in splits:
        source[reference] = "test"
    cells: dict[str, np.ndarray] = {}
    for name in sorted({n for row in grid_rows() for n in row if n in source}):
        row = _row_of(out, split_files(manifest, config, source[name]), rid)
        if row is None:
            continue
        cells[name] = _decode(row["image"])
        if "mask" not in cells:
            cells["mask"] = _decode(row["mask"]).astype(np.float32)
    rows = [[(n, cells[n], n != "mask") for n in names if n in cells] for names in grid_rows()]
    rows = [r for r in rows if r]
    title = f"{config}: id {rid} (each tile scaled to its own 0.5-99.5 percentiles)"
    png = b""
    for size in TILE_SIZES:
        png = _compose(title, rows, size)
        if len(png) <= MAX_PNG_BYTES:
            break
    else:
        logger.warning("%s sample grid is %d bytes even with %d px tiles", config, len(png), size)
    return png


def write_sample_grids(out: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Write ``images/<config>_samples.png`` for each config; return config -> relative path."""
    written = {}
    for config in manifest["configs"]:
        png = render_grid(out, manifest, config)
        if png is None:
            continue
        path = grid_path(out, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png)
        written[config] = path.relative_to(out).as_posix()
        logger.info("sample grid %s (%d kB)", path, len(png) // 1000)
    return written
