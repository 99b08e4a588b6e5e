"""The GPU-shaped paths of issue 26, checked on the CPU against the code they stand in for:
the blur's convolutions (the CUDA path) against its shifted slices, the training loss kept on
the device against a Python float, and the camera's checked-once parameters against the
public step-by-step calls."""

from __future__ import annotations

import pytest
import torch

from synthesis.corruptions import psf
from synthesis.corruptions.noise import apply_noise, camera_images, noise_parameters
from synthesis.filters import gaussian
from synthesis.filters.gaussian import gaussian_kernel1d
from synthesis.levels import Camera
from synthesis.models.training import _LossSum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1.0, 3.0, 5.0, 9.0])
def test_blur_convolutions_match_the_shifted_slices(sigma: float, dtype: torch.dtype):
    g = torch.Generator().manual_seed(int(sigma))
    x = torch.rand(3, 1, 40, 29, generator=g, dtype=dtype)  # sigma 9: wider than the image
    k = gaussian_kernel1d(sigma, dtype=torch.float64)
    taps = gaussian._blur_taps(x, k.tolist())
    conv = gaussian._blur_conv(x, k)
    assert conv.dtype == dtype and conv.shape == x.shape
    torch.testing.assert_close(conv, taps, rtol=1e-6, atol=1e-7)
    # Flux is kept, as by the slices (symmetric boundaries).
    torch.testing.assert_close(conv.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=1e-5, atol=0)


def test_blur_convolutions_keep_leading_dimensions():
    x = torch.rand(2, 3, 20, 24)
    k = gaussian_kernel1d(2.0, dtype=torch.float64)
    torch.testing.assert_close(gaussian._blur_conv(x, k), gaussian._blur_taps(x, k.tolist()))


def test_ieee_convolutions_set_and_restore_the_cudnn_flags():
    cudnn = torch.backends.cudnn
    before = (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark)
    with gaussian._ieee_convolutions(torch.device("cuda")):  # flags only: no device needed
        assert cudnn.conv.fp32_precision == "ieee" and cudnn.deterministic
        assert not cudnn.benchmark
    assert (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark) == before
    with gaussian._ieee_convolutions(torch.device("cpu")):  # nothing changed on CPU
        assert (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark) == before


def test_loss_sum_on_the_device_is_the_python_float_sum():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(200, generator=g, dtype=torch.float32) * 3
    sizes = torch.randint(1, 9, (200,), generator=g).tolist()
    python = 0.0
    acc = _LossSum(torch.device("cpu"))
    for loss, n in zip(losses, sizes, strict=True):
        python += float(loss) * n
        acc.add(loss, n)
    assert acc.value() == python  # the same bits


def _scene(n: int = 3, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(n, 1, size, size, dtype=torch.bool)
    mask[:, :, 10:30, 12:34] = True
    clean = torch.where(mask, 1.0 + torch.rand(mask.shape, generator=g), torch.tensor(0.1))
    return clean, mask


def test_camera_images_equal_the_public_calls_with_blurred_optics():
    clean, mask = _scene()
    optics = psf.svb(clean, 3)
    seeds = torch.tensor([5, 6, 7])
    snr = torch.tensor([2.0, 8.0, 40.0])  # two gains: rows solved in groups
    res = camera_images(clean, mask, snr, seeds, optics=optics)
    for i in range(3):
        rows = slice(i, i + 1)
        cam = res.params["e_per_adu"][i].item()
        camera = Camera().for_snr(float(snr[i]))
        assert camera.e_per_adu == pytest.approx(cam)
        p = noise_parameters(clean[rows], mask[rows], snr[rows], camera=camera)
        adu, measured = apply_noise(optics[rows], p, seeds[rows], mask=mask[rows])
        assert torch.equal(res.adu[rows], adu)
        assert torch.equal(res.params["snr_measured"][rows], measured)


def test_camera_images_name_bad_optics():
    clean, mask = _scene()
    bad = clean.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="optics must be finite"):
        camera_images(clean, mask, 8.0, torch.arange(3), optics=bad)
    with pytest.raises(ValueError, match="optics must have the shape"):
        camera_images(clean, mask, 8.0, torch.arange(3), optics=clean[:2])


def test_svb_with_unblurred_rows_equals_row_by_row():
    clean, _ = _scene(4, 40)
    levels = torch.tensor([0, 3, 0, 5])
    out = psf.svb(clean, levels)
    for i, lv in enumerate(levels.tolist()):
        one = psf.svb(clean[i : i + 1], lv)
        assert torch.equal(out[i : i + 1], one)
    assert torch.equal(out[0], clean[0]) and torch.equal(out[2], clean[2])
