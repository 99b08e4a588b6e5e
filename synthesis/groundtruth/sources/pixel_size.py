"""Pixel sizes of a source's images, and resampling an image to a config's stated pixel size.

An image's pixel size (µm per pixel) is known when the user gives it (``pixel_sizes``,
``--source-pixel-size STEM=UM`` or one ``UM`` for every image; a given value overrides the
file's) or when its TIFF states it (:func:`tiff_pixel_size_um`): ImageJ metadata (its
``unit`` with the X resolution tag, e.g. 23.5 px per micron), OME-XML ``PhysicalSizeX``, or a
resolution unit of centimetres (or millimetres, micrometres). A resolution in pixels per
**inch** is ignored: writers put 72 or 96 dpi there by default, which says nothing of the
sample. Otherwise (PNG, no metadata) it is unknown.

Rule (docs/definitions.md#pixel-size-of-a-source): when the config states a pixel size
(:data:`synthesis.levels.PIXEL_SIZE_UM`) and the image's is known, the whole image is
resampled to it (:func:`resample`) before pseudo-masking and tiling; when the image's is
unknown it is used as it is (``pixel_size_um: null``). A given or read value outside
:data:`PIXEL_SIZE_RANGE_UM`, or a resampling factor outside ``1 / MAX_SCALE .. MAX_SCALE``,
is refused naming the file or stem.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from synthesis.groundtruth.sources.base import SourceError

#: Plausible pixel sizes, in µm per pixel (a value outside is a unit mistake).
PIXEL_SIZE_RANGE_UM: tuple[float, float] = (0.001, 100.0)
#: Largest resampling factor either way.
MAX_SCALE: float = 16.0
#: The key of a pixel size given for every image of a source.
ALL = "*"

#: µm per unit of the length units ImageJ and OME metadata use.
_UNITS_UM = {
    "micron": 1.0,
    "microns": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
}
#: µm per unit of the TIFF ResolutionUnit values that name a length (2, inch, is ignored).
_RESUNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}


def check_pixel_size(value: Any, what: str) -> float:
    """``value`` as a float within :data:`PIXEL_SIZE_RANGE_UM`; else :class:`SourceError`
    naming ``what`` (a file or a stem)."""
    lo, hi = PIXEL_SIZE_RANGE_UM
    try:
        um = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"pixel size of {what}: expected a number of µm. Got {value!r}") from None
    if not (math.isfinite(um) and lo <= um <= hi):
        raise SourceError(
            f"pixel size of {what}: {um:g} µm per pixel is outside {lo:g}-{hi:g} µm "
            "(a unit mistake?)"
        )
    return um


def parse_pixel_sizes(values: list[str] | None) -> dict[str, float]:
    """``["STEM=UM", ...]`` or ``["UM"]`` (every image) -> ``{stem or "*": µm}``.

    Example:
        >>> parse_pixel_sizes(["hcs_wt_mito=0.136", "nao=0.0425"])
        {'hcs_wt_mito': 0.136, 'nao': 0.0425}
        >>> parse_pixel_sizes(["0.1"])
        {'*': 0.1}
    """
    out: dict[str, float] = {}
    for raw in values or []:
        stem, sep, um = str(raw).rpartition("=")
        stem = stem.strip() if sep else ALL
        if sep and not stem:
            raise SourceError(f"--source-pixel-size {raw!r}: expected STEM=UM or UM")
        if stem in out:
            raise SourceError(f"--source-pixel-size gives {stem!r} twice")
        out[stem] = check_pixel_size(um.strip(), ALL if stem == ALL else repr(stem))
    if ALL in out and len(out) > 1:
        raise SourceError("--source-pixel-size: give one UM for every image, or STEM=UM pairs")
    return out


def tiff_pixel_size_um(path: Path) -> tuple[float | None, str | None]:
    """``(µm per pixel, where it was read)`` from a TIFF's metadata (module docstring), or
    ``(None, None)`` when it states none. A stated value that is not a plausible pixel size
    raises :class:`SourceError` naming the file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            tags = page.tags  # type: ignore[union-attr]
            xres = tags.get("XResolution")
            unit_tag = tags.get("ResolutionUnit")
            ij = tf.imagej_metadata or {}
            ome = tf.ome_metadata if tf.is_ome else None
    except Exception as e:  # an unreadable file is reported when its pixels are read
        raise SourceError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    px_per_unit = None
    if xres is not None:
        num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
        px_per_unit = float(num) / float(den) if den else float("inf")
    if ome:
        m = re.search(r'PhysicalSizeX="([^"]+)"', ome)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
            factor = _UNITS_UM.get((unit.group(1) if unit else "µm").strip().lower())
            if factor is not None:
                return _stated(float(m.group(1)) * factor, path, "tiff:ome"), "tiff:ome"
    unit = str(ij.get("unit", "")).strip().lower()
    if unit in _UNITS_UM and px_per_unit:
        return _stated(_UNITS_UM[unit] / px_per_unit, path, "tiff:imagej"), "tiff:imagej"
    resunit = int(unit_tag.value) if unit_tag is not None else 2
    if resunit in _RESUNIT_UM and px_per_unit:
        return _stated(_RESUNIT_UM[resunit] / px_per_unit, path, "tiff:resolution"), (
            "tiff:resolution"
        )
    return None, None


def _stated(um: float, path: Path, where: str) -> float:
    try:
        return check_pixel_size(um, f"{path} ({where} metadata)")
    except SourceError as e:
        raise SourceError(
            f"{e}; give the right one with --source-pixel-size {path.stem}=UM"
        ) from None


def check_scale(scale: float, what: str) -> float:
    """A resampling factor within ``1 / MAX_SCALE .. MAX_SCALE``, else :class:`SourceError`."""
    if not (1 / MAX_SCALE <= scale <= MAX_SCALE):
        raise SourceError(
            f"{what}: resampling by {scale:.4g} to the config's pixel size is beyond "
            f"x{MAX_SCALE:g} either way; check its pixel size"
        )
    return scale


def resample(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` (uint8 or uint16) resampled by ``scale`` (>1 enlarges): bilinear
    (``skimage.transform.rescale``, ``order=1``, reflected edges), with a Gaussian
    anti-aliasing filter when shrinking; rounded and clipped back to the input's dtype.
    Deterministic.

    Example:
        >>> resample(np.zeros((10, 12), np.uint16), 2.0).shape
        (20, 24)
    """
    from skimage.transform import rescale

    x = rescale(
        image.astype(np.float64),
        scale,
        order=1,
        mode="reflect",
        anti_aliasing=scale < 1,
        preserve_range=True,
    )
    top = float(np.iinfo(image.dtype).max)
    return np.clip(np.rint(x), 0, top).astype(image.dtype)
