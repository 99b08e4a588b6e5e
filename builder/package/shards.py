"""Encoding rows and writing Parquet shards atomically.

Images are single-channel TIFF with zstd compression (uint16 ADU, float32 for the clean
split): lossless, read by Pillow (so by ``datasets.Image``), and the fastest encoding we
measured (writes ~20x faster than PNG). They are exact, so the Hub's dataset viewer cannot
show them (it re-encodes a cell as JPEG, else PNG, without rescaling: uint16 ADU come out
near-black, float32 cannot be written at all). Hence, per row:

- ``mask``: a 1-bit palette PNG (black, white). It decodes to a ``uint8`` array of 0/1 in
  numpy format, and the viewer shows it black and white.
- ``preview``: an 8-bit picture of ``image`` for people, never for models: each image scaled
  to its own 0.5-99.5 percentiles (:data:`PREVIEW_PERCENTILES`), JPEG (:data:`PREVIEW_FORMAT`;
  its size cost is in ``benchmarks/RESULTS.md``).

Shards are written like ``datasets`` 5.x writes them for the Hub (its own column options):
content-defined chunking (pages cut where the content says, so a re-upload of a changed
split deduplicates on Xet storage), a page index, and image bytes PLAIN, uncompressed and
never dictionary-encoded.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from datasets import Features
from datasets.arrow_writer import get_parquet_column_options
from datasets.config import DEFAULT_CDC_OPTIONS
from PIL import Image as PILImage

from synthesis.runtime.files import atomic_write_bytes

#: Rows per Parquet row group: small groups let streaming readers start quickly.
ROW_GROUP_SIZE = 32
#: The content-defined chunking parameters of ``datasets`` (min/max chunk size, norm level).
CDC_OPTIONS: dict[str, int] = dict(DEFAULT_CDC_OPTIONS)


def encode_tiff(array: np.ndarray) -> bytes:
    """Lossless single-channel TIFF (zstd) of a 2-D uint16 or float32 array."""
    if array.ndim != 2 or array.dtype not in (np.uint16, np.float32):
        raise ValueError(f"expected a 2-D uint16 or float32 array. Got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(array), compression="zstd")
    return buf.getvalue()


#: Palette of masks: 0 black, 1 white (two colours, so Pillow writes a 1-bit PNG).
MASK_PALETTE = (0, 0, 0, 255, 255, 255)
#: Each preview is scaled to these percentiles of its own image (as the card's sample grid).
PREVIEW_PERCENTILES = (0.5, 99.5)
PREVIEW_FORMAT = "JPEG"
PREVIEW_QUALITY = 75


def encode_mask(mask: np.ndarray) -> bytes:
    """1-bit palette PNG of a 0/1 mask: decodes to ``uint8`` 0/1, shows black and white."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask. Got shape {mask.shape}")
    m = np.ascontiguousarray(mask.astype(np.uint8))
    if m.size and int(m.max()) > 1:
        raise ValueError(f"expected a 0/1 mask. Got values up to {int(m.max())}")
    img = PILImage.frombuffer("P", (m.shape[1], m.shape[0]), m.tobytes(), "raw", "P", 0, 1)
    img.putpalette(MASK_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def preview_pixels(array: np.ndarray) -> np.ndarray:
    """The 8-bit picture of ``array``: scaled to its own :data:`PREVIEW_PERCENTILES` (float32
    arithmetic; the card's sample grid scales its tiles with this same function)."""
    a = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(a, PREVIEW_PERCENTILES)
    hi = hi if hi > lo else lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_preview(array: np.ndarray) -> bytes:
    """The ``preview`` cell of a 2-D image: :func:`preview_pixels` as a grey JPEG."""
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image. Got shape {array.shape}")
    buf = io.BytesIO()
    PILImage.fromarray(preview_pixels(array), mode="L").save(
        buf, format=PREVIEW_FORMAT, quality=PREVIEW_QUALITY
    )
    return buf.getvalue()


def image_cell(data: bytes) -> dict[str, Any]:
    return {"bytes": data, "path": None}


def write_shard(path: Path, rows: list[dict[str, Any]], features: Features) -> tuple[str, int]:
    """Write ``rows`` as one Parquet file with ``features`` embedded; return (sha256, bytes).

    The file appears under its final name only once complete (temporary name + rename), so a
    killed build never leaves a shard a reader could take for finished.
    """
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    data = parquet_bytes(table, features)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def parquet_bytes(table: pa.Table, features: Features) -> bytes:
    """``table`` as Parquet, with the options ``datasets`` 5.x uses for the Hub.

    The per-column options come from ``datasets`` itself (image bytes PLAIN and uncompressed,
    other columns dictionary-encoded and snappy), with its content-defined chunking
    parameters and a page index. The bytes depend only on the rows (and the pyarrow version).
    """
    schema = table.schema
    buf = pa.BufferOutputStream()
    with pq.ParquetWriter(
        buf,
        schema,
        use_content_defined_chunking=CDC_OPTIONS,
        write_page_index=True,
        **get_parquet_column_options(features, schema),
    ) as writer:
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})
        writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
    return buf.getvalue().to_pybytes()


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"
