"""What the Hub's dataset viewer shows, and that exact data stays exact.

The viewer re-encodes each ``Image`` cell with Pillow as JPEG, else PNG, without rescaling,
and a browser shows the result at 8 bits (a 16-bit PNG by its high byte). ``viewer_picture``
applies that conversion; a cell is *visible* when the picture is not blank and has contrast.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builder.package.shards import encode_mask, encode_preview, preview_pixels

#: Visible: a standard deviation and a 1-99 percentile spread of at least these (8-bit grey).
MIN_STD = 20.0
MIN_SPREAD = 64.0


def viewer_picture(data: bytes) -> np.ndarray | None:
    """The 8-bit grey picture the viewer shows for an ``Image`` cell, or None (it fails)."""
    img = Image.open(io.BytesIO(data))
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        try:
            img.save(buf, format=fmt)
        except (OSError, KeyError, ValueError):
            continue
        shown = Image.open(io.BytesIO(buf.getvalue()))
        if shown.mode in ("I;16", "I;16B", "I"):  # a browser shows 16-bit PNG at 8 bits
            return (np.asarray(shown, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.asarray(shown.convert("L"))
    return None


def visible(picture: np.ndarray | None) -> bool:
    if picture is None:
        return False
    p = picture.astype(np.float64)
    lo, hi = np.percentile(p, (1, 99))
    return p.std() >= MIN_STD and hi - lo >= MIN_SPREAD


def _rows(package: Path, manifest: dict, config: str, split: str, n: int = 2) -> list[dict]:
    entry = manifest["configs"][config]["splits"][split]
    if entry.get("alias_of"):
        entry = manifest["configs"][config]["splits"][entry["alias_of"]]
    table = pq.read_table(package / entry["shards"][0]["path"])
    return table.slice(0, n).to_pylist()


def test_every_split_is_visible_in_the_viewer(small_package: Path):
    """Rows of every split of every config: the mask and the preview are visible; the
    exact image is not (uint16 ADU, float32 clean), which is why the preview exists."""
    manifest = json.loads((small_package / "manifest.json").read_text())
    checked = 0
    for config, entry in manifest["configs"].items():
        for split in entry["splits"]:
            for row in _rows(small_package, manifest, config, split):
                where = f"{config}/{split}/{row['id']}"
                assert visible(viewer_picture(row["preview"]["bytes"])), where
                mask = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"])))
                if mask.any():  # an empty mask is rightly blank
                    assert visible(viewer_picture(row["mask"]["bytes"])), where
                exact = viewer_picture(row["image"]["bytes"])
                assert not visible(exact), f"{where}: the exact image became visible?"
                checked += 1
    assert checked >= 3 * 30


def test_exact_data_stays_exact_through_load_dataset(small_package: Path, tmp_path: Path):
    """uint16 ADU, float32 clean, 0/1 uint8 masks, through ``datasets`` with a fresh cache;
    the preview is the percentile-scaled image."""
    from datasets import load_dataset

    for split, dtype in (("snr_2", np.uint16), ("clean", np.float32)):
        ds = load_dataset(
            str(small_package), "mito", split=split, cache_dir=str(tmp_path / "cache")
        ).with_format("numpy")
        row = ds[0]
        assert row["image"].dtype == dtype and row["image"].shape == (256, 256)
        assert row["mask"].dtype == np.uint8 and set(np.unique(row["mask"])) <= {0, 1}
        assert row["mask"].any()
        assert row["preview"].dtype == np.uint8 and row["preview"].shape == (256, 256)
        # JPEG at quality 75: close to the exact scaled pixels, not equal (max 7.7 measured)
        err = np.abs(row["preview"].astype(int) - preview_pixels(row["image"]).astype(int))
        assert err.mean() < 10.0, err.mean()


def test_mask_png_is_one_bit_and_round_trips():
    rng = np.random.default_rng(0)
    mask = (rng.random((64, 48)) > 0.7).astype(np.uint8)
    data = encode_mask(mask)
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and data[24] == 1  # IHDR bit depth: 1 bit per pixel
    assert np.array_equal(np.asarray(img), mask)
    assert visible(viewer_picture(data))
    with pytest.raises(ValueError, match="0/1 mask"):
        encode_mask(mask * 3)


def test_preview_of_a_dim_uint16_image_is_visible_and_the_raw_one_is_not():
    """The issue's case: ADU peaking near 2,400 show near-black as they are."""
    rng = np.random.default_rng(1)
    image = 100 + 2300 * (rng.random((128, 128)) > 0.5) + rng.normal(0, 30, (128, 128))
    image = image.clip(0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="TIFF")
    assert not visible(viewer_picture(buf.getvalue()))
    assert visible(viewer_picture(encode_preview(image)))
    # float32 (the clean split): the viewer cannot write it at all
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.float32)).save(buf, format="TIFF")
    assert viewer_picture(buf.getvalue()) is None
