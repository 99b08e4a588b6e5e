"""Pseudo-masks of native fluorescence images (synthesis.groundtruth.pseudo_masks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from synthesis.groundtruth.pseudo_masks import DEFAULT_MITO, PseudoMaskMethod, pseudo_mask

REAL = Path(__file__).parents[1].parent / "shared/data/mito-fluorescence"


def tubes(width: float, n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright tubes of a known width (four straight, one ring; five contrasts from 7.5 to 50
    noise sd), blurred (sigma 0.7 px), on a noisy background at 100: (image, true tubes)."""
    yy, xx = np.mgrid[:n, :n].astype(float)
    true = np.zeros((n, n), bool)
    signal = np.zeros((n, n))
    segments = [((40, 20), (40, 230)), ((80, 30), (200, 120)), ((230, 40), (120, 220)),
                ((150, 150), (250, 250))]  # fmt: skip
    distances = []
    for (y0, x0), (y1, x1) in segments:
        d = np.array([y1 - y0, x1 - x0], float)
        length = np.hypot(*d)
        d /= length
        t = np.clip((yy - y0) * d[0] + (xx - x0) * d[1], 0, length)
        distances.append(np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1])))
    distances.append(np.abs(np.hypot(yy - 170, xx - 60) - 40))
    for dist, contrast in zip(distances, [1.0, 0.3, 0.6, 0.15, 0.45], strict=True):
        inside = dist <= width / 2
        true |= inside
        signal = np.maximum(signal, contrast * inside)
    rng = np.random.default_rng(seed)
    image = 100 + 1000 * ndi.gaussian_filter(signal, 0.7) + rng.normal(0, 20, (n, n))
    return image, true


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_same_bytes_twice():
    image, _ = tubes(4)
    a, b = pseudo_mask(image), pseudo_mask(image.copy())
    assert a.dtype == bool and a.shape == image.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("width", [3, 5])
def test_recovers_tubes_of_known_width(width):
    image, true = tubes(width)
    assert iou(pseudo_mask(image), true) > 0.8


def test_free_of_gain_and_offset_and_dtype():
    image, _ = tubes(4)
    ref = pseudo_mask(image)
    assert (pseudo_mask(3.5 * image + 1234.0) == ref).all()
    assert (pseudo_mask(np.round(image).astype(np.uint16)) == pseudo_mask(np.round(image))).all()


def test_variants_run():
    image, true = tubes(4)
    for method in (
        PseudoMaskMethod(name="sato", ridge="sato"),
        PseudoMaskMethod(name="meijering", ridge="meijering"),
        PseudoMaskMethod(name="gauss", background="gaussian", background_radius=8),
        PseudoMaskMethod(name="sqrt", transform="sqrt", offset=1.0),
    ):
        m = pseudo_mask(image, method)
        assert m.dtype == bool and m.shape == image.shape
        assert iou(m, true) > 0.5, method.name


def test_empty_background_stays_empty():
    rng = np.random.default_rng(1)
    image = 100 + rng.normal(0, 5, (128, 128))
    image[60:64, 10:120] += 500
    m = pseudo_mask(image)
    assert m[60:64, 12:118].all()
    assert m.sum() < 1.2 * 4 * 110


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((2, 8, 8)), "2-D"),
        (np.zeros(8), "2-D"),
        (np.zeros((0, 8)), "empty"),
        (np.full((8, 8), np.nan), "finite"),
        (np.where(np.eye(8) > 0, np.inf, 1.0), "finite"),
        (np.full((8, 8), 7.0), "constant"),
        (np.ones((8, 8), bool), "dtype"),
        (np.full((8, 8), "a"), "dtype"),
    ],
)
def test_bad_images_raise(image, match):
    with pytest.raises(ValueError, match=match):
        pseudo_mask(image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 10}, "block_size"),
        ({"block_size": 1}, "block_size"),
        ({"background": "rolling"}, "background"),
        ({"ridge": "frangi2"}, "ridge"),
        ({"transform": "log"}, "transform"),
        ({"smooth_sigma": -1.0}, "smooth_sigma"),
        ({"background_radius": 0.0}, "background_radius"),
        ({"min_size": -1}, "min_size"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_methods_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PseudoMaskMethod(**kwargs)


def test_method_to_dict_is_json_and_round_trips():
    d = DEFAULT_MITO.to_dict()
    assert d["version"] == 1 and d["name"] == "mito-default"
    assert json.loads(json.dumps(d)) == d
    assert PseudoMaskMethod.from_dict(json.loads(json.dumps(d))) == DEFAULT_MITO
    scaled = DEFAULT_MITO.scaled(3)
    assert scaled.block_size % 2 == 1 and scaled.min_size == 9 * DEFAULT_MITO.min_size
    assert PseudoMaskMethod.from_dict(scaled.to_dict()) == scaled


@pytest.mark.parametrize(
    ("name", "method", "low", "high"),
    [
        ("hcs_wt_mito.tif", DEFAULT_MITO, 0.04, 0.15),
        ("nao_mito.tif", DEFAULT_MITO.scaled(3), 0.10, 0.30),
    ],
)
def test_real_images_foreground_fraction(name, method, low, high):
    path = REAL / "images" / name
    if not path.is_file():
        pytest.skip(f"real mitochondria images absent ({REAL})")
    import tifffile

    image = tifffile.imread(path)
    m = pseudo_mask(image, method)
    assert low < m.mean() < high
    # Tubules, not blobs: the objects are many and thin (median skeleton width <= 6 px at
    # the method's scale).
    from skimage import measure
    from skimage.morphology import skeletonize

    assert measure.label(m, connectivity=2).max() > 50
    widths = 2 * ndi.distance_transform_edt(m)[skeletonize(m)]
    scale = method.background_radius / DEFAULT_MITO.background_radius
    assert np.median(widths) <= 6 * scale
