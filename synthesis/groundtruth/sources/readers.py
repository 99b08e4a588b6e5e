"""Reading image and mask files (TIFF or PNG, from a path or from bytes) and checking them.

Shared by the real sources: decoding, grey/single-channel checks, bit depth, binary masks,
matching image and mask sizes. Every problem raises :class:`SourceError` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from synthesis.groundtruth.sources.base import SourceError


def _decode(data: bytes | Path, name: str) -> np.ndarray:
    """Decode a TIFF or PNG into an array (2-D, or channels last)."""
    suffix = PurePosixPath(name).suffix.lower()
    src: Any = data if isinstance(data, Path) else io.BytesIO(data)
    if isinstance(data, Path) and not data.is_file():
        raise SourceError(f"file does not exist: {name}")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(src))
        else:
            from PIL import Image

            with Image.open(src) as im:
                im.load()
                arr = np.asarray(im)
    # Decoders raise a zoo of types for a damaged file (OSError, SyntaxError, ValueError,
    # zlib.error, struct.error, TiffFileError...): all mean "unreadable", said with the name.
    except Exception as e:
        raise SourceError(f"cannot read {name}: {type(e).__name__}: {e}") from e
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first TIFF
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise SourceError(f"expected a 2-D image in {name}. Got an array of shape {arr.shape}")
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # 16-bit PNGs some writers store as 32-bit
    return arr


def _equal_channels(arr: np.ndarray) -> bool:
    colour = arr[..., : 3 if arr.shape[-1] >= 3 else 1]
    return bool((colour == colour[..., :1]).all())


def _grey(arr: np.ndarray, name: str, *, what: str = "mask") -> np.ndarray:
    if arr.ndim == 2:
        return arr
    if not _equal_channels(arr):
        raise SourceError(
            f"expected a single-channel (or grey) {what} in {name}. "
            f"Got {arr.shape[-1]} channels that differ"
        )
    return arr[..., 0]


def _check_image_dtype(image: np.ndarray, name: str) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise SourceError(f"expected an 8- or 16-bit image in {name}. Got dtype {image.dtype}")


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    """0/1 uint8 from a mask holding 0 and one other value (0/1, 0/255, 0/65535...)."""
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise SourceError(
            f"mask {name} is not binary: expected 0 and one foreground value. Got values {shown}"
        )
    return (mask > 0).astype(np.uint8)


def _check_same_shape(image: np.ndarray, iname: str, mask: np.ndarray, mname: str) -> None:
    if image.shape != mask.shape:
        raise SourceError(
            f"image and mask sizes differ: {iname} is {image.shape[1]}x{image.shape[0]}, "
            f"{mname} is {mask.shape[1]}x{mask.shape[0]}"
        )
