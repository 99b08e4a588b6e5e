"""Pseudo-masks: a classical segmentation of a native fluorescence image of a filamentous or
punctate structure (mitochondria, ER) into a binary mask, for real images that have no
manual ground truth.

A pseudo-mask is *not* ground truth: wherever it is used it must be labelled as such, with
the method that made it (:meth:`PseudoMaskMethod.to_dict`, which a dataset row carries).

The method (:func:`pseudo_mask`, all parameters in pixels, in :class:`PseudoMaskMethod`):

1. **levels**: the image minus its 0.5th percentile (the camera offset), clipped at 0;
   optionally (``transform="sqrt"``) its square root, variance-stabilising for
   Poisson-dominated data (dim and bright cells thresholded more alike, but edges pushed
   outwards: masks about 1 px wider on 3-px tubes);
2. **smoothing**: a Gaussian of ``smooth_sigma`` px (``scipy.ndimage.gaussian_filter``,
   reflected edges) against pixel noise;
3. **background subtraction**: ``background="tophat"``: a white top-hat with a disk of
   radius ``background_radius`` px (``skimage.morphology.white_tophat``), which keeps
   structures narrower than the disk's diameter and removes the cytoplasmic and nuclear
   haze; ``background="gaussian"``: minus a Gaussian blur of sigma ``background_radius``;
4. optionally a **ridge filter** (``ridge="sato"`` or ``"meijering"``,
   ``skimage.filters``, bright ridges, scales ``ridge_sigmas`` px), whose response then
   replaces the background-subtracted image;
5. **thresholds**, both must hold: a local threshold, above the Gaussian-weighted local mean
   over ``block_size`` px (``skimage.filters.threshold_local``, ``method="gaussian"``) plus
   ``offset`` noise standard deviations (the noise sd of the step-1 image, estimated as
   1.4826 x the median absolute deviation of its unit-norm 3x3 Laplacian residual); and a
   global floor, ``floor_factor`` x the Otsu threshold of the whole image
   (``skimage.filters.threshold_otsu``), which keeps the local threshold from segmenting
   noise in empty regions;
6. **size filters**: 8-connected objects of fewer than ``min_size`` px are removed and
   4-connected holes of at most ``max_hole`` px are filled (``skimage.measure.label``).

Every step is deterministic, and the result does not depend on the image's gain or offset
(each step is shift-free after step 1 and scales with the gain). The Otsu floor is a
property of the whole image: run the method on a field of view (cells and the space between
them), not on small tiles that may hold only background.

Scale: the defaults (:data:`DEFAULT_MITO`) assume tubules about 2-5 px wide (a confocal
high-content field); for a finer sampling use :meth:`PseudoMaskMethod.scaled` (e.g. x3 for
tubules 8-15 px wide). The small local block (11 px) puts a tube's edge near the inflection
of its blurred profile, so widths come out nearly unbiased: on synthetic tubes 3, 4 and 5 px
wide (Gaussian blur sigma 0.7 px, five contrasts 7.5-50 noise sd) the IoU against the true
tubes is 0.93, 0.97 and 0.96. Tuned by eye on the two real mitochondria images of
``shared/data/mito-fluorescence``: foreground fraction 0.085 on ``hcs_wt_mito.tif`` with the
defaults (networks around the nuclei, empty space between cells), 0.170 on
``nao_mito.tif`` with ``DEFAULT_MITO.scaled(3)`` (0.113 unscaled: the wide tubules then
come out hollow or thinned).

**ER** (:data:`DEFAULT_ER`): the mitochondria method under its own name. No openly licensed
image that resolves ER tubules was available to tune it on; it assumes tubules of the same
2-5 px width.

**Nuclei** (:class:`OtsuMaskMethod`, :data:`DEFAULT_NUCLEUS`; bright blobs much larger than
the noise grain): step 1 above, then a Gaussian of ``smooth_sigma`` px, one global Otsu
threshold of the smoothed image (``skimage.filters.threshold_otsu``), holes filled
(``scipy.ndimage.binary_fill_holes``) and 8-connected objects of fewer than ``min_size`` px
removed. Touching nuclei stay one object: instance labels taken as connected components
merge them.

**Nothing to segment**: :func:`contrast_sd` measures how far above its background a
pseudo-mask's foreground is, in noise standard deviations. On pure noise the methods above
still return a mask (about half the pixels, at about 1.2 sd); on real fields the
foreground lies hundreds of sd above the background. A source rejects an image below
:data:`MIN_CONTRAST_SD`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology

__all__ = [
    "DEFAULT_ER",
    "DEFAULT_METHODS",
    "DEFAULT_MITO",
    "DEFAULT_NUCLEUS",
    "MIN_CONTRAST_SD",
    "MaskMethod",
    "OtsuMaskMethod",
    "PseudoMaskMethod",
    "contrast_sd",
    "pseudo_mask",
]

#: Percentile taken as the image's offset (step 1).
OFFSET_PERCENTILE = 0.5
#: 3x3 Laplacian with unit L2 norm (Immerkaer's kernel / 6): white noise keeps its sd.
_LAPLACIAN = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0
#: Scale factor of the median absolute deviation to a Gaussian standard deviation.
_MAD_TO_SD = 1.4826

_TRANSFORMS = ("none", "sqrt")
_BACKGROUNDS = ("tophat", "gaussian")
_RIDGES = ("none", "sato", "meijering")


@dataclass(frozen=True)
class PseudoMaskMethod:
    """A pseudo-mask method and its parameters (lengths and areas in pixels); the steps
    are described in the module docstring. ``version`` changes whenever the algorithm
    changes for the same parameters."""

    name: str = "mito-default"
    transform: str = "none"
    smooth_sigma: float = 0.75
    background: str = "tophat"
    background_radius: float = 5.0
    ridge: str = "none"
    ridge_sigmas: tuple[float, ...] = (1.0, 2.0)
    block_size: int = 11
    offset: float = 0.0
    floor_factor: float = 0.25
    min_size: int = 16
    max_hole: int = 4
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string. Got {self.name!r}")
        for field, allowed in (
            ("transform", _TRANSFORMS),
            ("background", _BACKGROUNDS),
            ("ridge", _RIDGES),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}. Got {getattr(self, field)!r}")
        if not self.smooth_sigma >= 0:
            raise ValueError(f"smooth_sigma must be >= 0 px. Got {self.smooth_sigma}")
        if not self.background_radius > 0:
            raise ValueError(f"background_radius must be > 0 px. Got {self.background_radius}")
        if not self.ridge_sigmas or not all(s > 0 for s in self.ridge_sigmas):
            raise ValueError(f"ridge_sigmas must be positive px. Got {self.ridge_sigmas}")
        if (
            int(self.block_size) != self.block_size
            or self.block_size < 3
            or self.block_size % 2 == 0
        ):
            raise ValueError(f"block_size must be an odd integer >= 3 px. Got {self.block_size}")
        if not np.isfinite(self.offset):
            raise ValueError(f"offset must be finite. Got {self.offset}")
        if not self.floor_factor >= 0:
            raise ValueError(f"floor_factor must be >= 0. Got {self.floor_factor}")
        if self.min_size < 0 or self.max_hole < 0:
            raise ValueError(
                f"min_size and max_hole must be >= 0 px. Got {self.min_size}, {self.max_hole}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The method as a JSON-able dict (every field; tuples as lists), for a dataset row.

        Example:
            >>> d = DEFAULT_MITO.to_dict()
            >>> d["name"], d["version"], d["ridge_sigmas"]
            ('mito-default', 1, [1.0, 2.0])
        """
        d = asdict(self)
        d["ridge_sigmas"] = [float(s) for s in self.ridge_sigmas]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PseudoMaskMethod:
        """The method :meth:`to_dict` gave (unknown keys raise ``TypeError``)."""
        d = dict(d)
        if "ridge_sigmas" in d:
            d["ridge_sigmas"] = tuple(float(s) for s in d["ridge_sigmas"])
        return cls(**d)

    def scaled(self, factor: float) -> PseudoMaskMethod:
        """The same method for structures ``factor`` times wider in pixels (a finer
        sampling): lengths times ``factor`` (``block_size`` to the nearest odd integer),
        areas times ``factor**2``, ``name`` suffixed ``-x{factor}``.

        Example:
            >>> m = DEFAULT_MITO.scaled(3)
            >>> m.name, m.background_radius, m.block_size, m.min_size
            ('mito-default-x3', 15.0, 33, 144)
        """
        if not factor > 0:
            raise ValueError(f"factor must be > 0. Got {factor}")
        block = max(3, 2 * round((self.block_size * factor - 1) / 2) + 1)
        return replace(
            self,
            name=f"{self.name}-x{factor:g}",
            smooth_sigma=self.smooth_sigma * factor,
            background_radius=self.background_radius * factor,
            ridge_sigmas=tuple(s * factor for s in self.ridge_sigmas),
            block_size=block,
            min_size=round(self.min_size * factor**2),
            max_hole=round(self.max_hole * factor**2),
        )


#: Mitochondria (and other tubules) about 2-5 px wide; see the module docstring.
DEFAULT_MITO = PseudoMaskMethod()
#: ER tubules: the mitochondria method under its own name (untuned: no real ER image).
DEFAULT_ER = replace(DEFAULT_MITO, name="er-default")


@dataclass(frozen=True)
class OtsuMaskMethod:
    """Bright blobs (nuclei): smoothing, one global Otsu threshold, holes filled, a size
    filter (module docstring; lengths and areas in pixels)."""

    name: str = "nucleus-otsu"
    smooth_sigma: float = 2.0
    min_size: int = 64
    fill_holes: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string. Got {self.name!r}")
        if not self.smooth_sigma >= 0:
            raise ValueError(f"smooth_sigma must be >= 0 px. Got {self.smooth_sigma}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 px. Got {self.min_size}")

    def to_dict(self) -> dict[str, Any]:
        """The method as a JSON-able dict (every field), for a dataset row.

        Example:
            >>> DEFAULT_NUCLEUS.to_dict()["name"]
            'nucleus-otsu'
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OtsuMaskMethod:
        """The method :meth:`to_dict` gave (unknown keys raise ``TypeError``)."""
        return cls(**d)


#: Nuclei: Gaussian 2 px, Otsu, holes filled, objects of 64 px or more.
DEFAULT_NUCLEUS = OtsuMaskMethod()
#: Either kind of method.
MaskMethod = PseudoMaskMethod | OtsuMaskMethod
#: The method of each structure, for a source of real images without masks.
DEFAULT_METHODS: dict[str, MaskMethod] = {
    "er": DEFAULT_ER,
    "mito": DEFAULT_MITO,
    "nucleus": DEFAULT_NUCLEUS,
}
#: Foreground contrast (noise sd) below which an image holds nothing to segment.
MIN_CONTRAST_SD = 3.0


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        try:
            image = np.asarray(image)
        except Exception as err:
            raise ValueError(
                f"image must be a 2-D numeric array. Got {type(image).__name__}"
            ) from err
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(f"image must have a real numeric dtype. Got {image.dtype}")
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W). Got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image must not be empty. Got shape {image.shape}")
    x = image.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image must be finite. Got NaN or inf values")
    if lo == hi:
        raise ValueError(f"image is constant (every pixel {lo:g}): nothing to segment")
    return x


def _noise_sd(x: np.ndarray) -> float:
    """Noise sd of ``x``: 1.4826 x MAD of the unit-norm Laplacian residual (0 if noiseless)."""
    r = ndi.convolve(x, _LAPLACIAN, mode="reflect")
    return float(_MAD_TO_SD * np.median(np.abs(r - np.median(r))))


def _keep_large(mask: np.ndarray, min_size: int, connectivity: int) -> np.ndarray:
    """``mask`` without its components (``connectivity`` 1: 4-, 2: 8-connected) of fewer
    than ``min_size`` px."""
    if min_size <= 1:
        return mask
    labels = measure.label(mask, connectivity=connectivity)
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return keep[labels]


def contrast_sd(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``image`` on ``mask`` minus its mean off it, in noise standard deviations
    (the noise sd estimated as in step 5); inf for a noiseless image with a brighter
    foreground, nan when the mask is empty or full.

    Example:
        >>> img = np.random.default_rng(0).normal(100.0, 10.0, (64, 64))
        >>> img[20:40, 20:40] += 200.0
        >>> m = np.zeros((64, 64), bool); m[20:40, 20:40] = True
        >>> 15 < contrast_sd(img, m) < 25
        True
    """
    x = _check_image(image)
    m = np.asarray(mask, dtype=bool)
    if m.shape != x.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {x.shape}")
    if not m.any() or m.all():
        return float("nan")
    diff = float(x[m].mean() - x[~m].mean())
    noise = _noise_sd(x)
    if noise > 0:
        return diff / noise
    return float("inf") if diff > 0 else 0.0


def _otsu_mask(x: np.ndarray, method: OtsuMaskMethod) -> np.ndarray:
    s = ndi.gaussian_filter(x, method.smooth_sigma, mode="reflect") if method.smooth_sigma else x
    if float(s.max()) == float(s.min()):
        return np.zeros(x.shape, dtype=bool)
    fg = s > float(filters.threshold_otsu(s))
    if method.fill_holes:
        fg = ndi.binary_fill_holes(fg)
    return _keep_large(fg, method.min_size, connectivity=2)


def pseudo_mask(image: np.ndarray, method: MaskMethod = DEFAULT_MITO) -> np.ndarray:
    """Binary pseudo-mask of a native fluorescence image (module docstring: the steps).

    Args:
        image: ``(H, W)`` real-valued image (any integer or float dtype, any gain/offset).
        method: the parameters (pixels); :data:`DEFAULT_MITO` for tubules ~2-5 px wide,
            :data:`DEFAULT_NUCLEUS` (an :class:`OtsuMaskMethod`) for nuclei.

    Returns:
        ``(H, W)`` bool array, True on the structure.

    Raises:
        ValueError: not a 2-D real array, empty, non-finite or constant.

    Example:
        >>> img = np.full((64, 64), 100.0)
        >>> img[30:34, 8:56] = 1000.0  # a bar 4 px wide
        >>> m = pseudo_mask(img)
        >>> int(m.sum()), bool(m[30:34, 8:56].all())  # the bar, nothing else
        (192, True)
    """
    x = _check_image(image)
    x = np.maximum(x - np.percentile(x, OFFSET_PERCENTILE), 0.0)
    if isinstance(method, OtsuMaskMethod):
        return _otsu_mask(x, method)
    if method.transform == "sqrt":
        x = np.sqrt(x)
    s = ndi.gaussian_filter(x, method.smooth_sigma, mode="reflect") if method.smooth_sigma else x
    if method.background == "tophat":
        disk = morphology.disk(max(1, round(method.background_radius)))
        y = morphology.white_tophat(s, disk)
    else:
        y = s - ndi.gaussian_filter(s, method.background_radius, mode="reflect")
    if method.ridge == "sato":
        y = filters.sato(y, sigmas=method.ridge_sigmas, black_ridges=False, mode="reflect")
    elif method.ridge == "meijering":
        y = filters.meijering(y, sigmas=method.ridge_sigmas, black_ridges=False, mode="reflect")
    if float(y.max()) == float(y.min()):
        return np.zeros(x.shape, dtype=bool)
    local = filters.threshold_local(y, method.block_size, method="gaussian", mode="reflect")
    if method.offset:
        noise = _noise_sd(x)
        local = local + method.offset * (noise if noise > 0 else 1e-3 * float(np.ptp(x)))
    fg = y > local
    if method.floor_factor:
        fg &= y > method.floor_factor * float(filters.threshold_otsu(y))
    fg = _keep_large(fg, method.min_size, connectivity=2)
    if method.max_hole:
        fg |= ~_keep_large(~fg, method.max_hole + 1, connectivity=1)
    return fg
