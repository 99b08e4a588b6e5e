"""The single definitions: z-score, Gaussian taps, file hashing, the device rule, the stream
registry, config names and the row schema. Each is used everywhere from one place; these
tests pin what it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthesis import normalize as norm


def test_zscore_is_the_population_std_with_a_floor():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 17, 9, generator=g, dtype=torch.float64) * 500 + 100
    z = norm.zscore(x)
    xs = x.numpy().reshape(3, -1)
    want = (xs - xs.mean(1, keepdims=True)) / xs.std(1, ddof=0, keepdims=True)
    np.testing.assert_allclose(z.numpy().reshape(3, -1), want, rtol=0, atol=1e-12)
    assert torch.equal(norm.zscore(torch.full((1, 1, 4, 4), 7.0)), torch.zeros(1, 1, 4, 4))


def test_collate_evaluate_and_attacks_use_the_same_zscore():
    """The loader's collate, evaluate's preprocessing and the attacks' default all give the
    bits of synthesis.normalize.zscore (before, collate used the sample std)."""
    import fluorobench_c
    from builder.evaluation.model_loading import make_preprocess
    from synthesis.corruptions import attacks

    rows = [
        {
            "id": f"r{i}",
            "image": np.arange(64, dtype=np.uint16).reshape(8, 8) * (i + 1),
            "mask": np.eye(8),
        }
        for i in range(2)
    ]
    batch = fluorobench_c.Collate(normalize="zscore")(rows)["image"]
    raw = fluorobench_c.collate(rows)["image"]
    assert torch.equal(batch, norm.zscore(raw))
    assert torch.equal(make_preprocess("zscore")(raw), norm.zscore(raw))
    import inspect

    assert inspect.signature(attacks.attack).parameters["preprocess"].default is norm.zscore


def test_minmax_and_none():
    x = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]]])
    assert norm.minmax(x).flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    assert norm.normalize(x, "none") is x
    with pytest.raises(ValueError, match="normalize must be one of"):
        norm.normalize(x, "l2")
    with pytest.raises(TypeError, match="floating-point"):
        norm.zscore(torch.ones(1, 1, 2, 2, dtype=torch.int32))


def test_gaussian_taps_match_scipy_and_respect_the_cut():
    from scipy.signal.windows import gaussian

    from synthesis.filters.gaussian import gaussian_kernel1d, gaussian_taps

    sig = torch.tensor([0.7, 1.0, 2.5], dtype=torch.float64)
    k = gaussian_taps(sig, 10)
    for row, s in zip(k, sig.tolist(), strict=True):
        w = gaussian(21, s)
        np.testing.assert_allclose(row.numpy(), w / w.sum(), rtol=0, atol=1e-15)
    cut = gaussian_taps(sig, 10, cut=torch.ceil(4 * sig))
    assert torch.all(cut[0, :7] == 0) and torch.all(cut[0, 7:14] > 0)  # 0.7 px: |t| <= 3
    assert torch.allclose(cut.sum(1), torch.ones(3, dtype=torch.float64))
    delta = gaussian_taps(torch.zeros(1, dtype=torch.float64), 2, sigma_floor=1e-3)
    assert delta.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]
    # The PSF kernel is the factory's row, bit for bit.
    assert torch.equal(
        gaussian_kernel1d(1.5, dtype=torch.float64),
        gaussian_taps(torch.tensor([1.5], dtype=torch.float64), 6)[0],
    )


def test_sha256_file_and_atomic_write(tmp_path: Path):
    import hashlib

    from synthesis.runtime.files import atomic_write_bytes, sha256_file

    data = bytes(range(256)) * 5000  # > one 1 MiB read block
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, data)
    assert path.read_bytes() == data
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary left behind


def test_device_rule():
    from synthesis.runtime.device import default_device, resolve_device
    from synthesis.runtime.errors import InputError

    assert resolve_device(None).type == default_device()
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:a"):
        with pytest.raises(InputError, match="cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_stream_registry_is_frozen():
    """Stream ids are part of a build's bytes: this table may grow, never change."""
    from synthesis.rng.streams import STREAMS

    frozen = {
        "SHOT": 100,
        "READ": 101,
        "GAUSSIAN": 102,
        "REAL_NOISE": 110,
        "REAL_BLUR_NOISE": 111,
        "ER_WARP": 200,
        "RENDER_PARAMS": 250,
        "TEXTURE_FINE": 251,
        "TEXTURE_COARSE": 252,
        "BACKGROUND": 253,
        "INSTANCE": 254,
        "GAN_INPUT": 280,
        "CLEAN_INTENSITY": 281,
        "CLEAN_TEXTURE": 282,
        "NOISE_WHITE": 283,
        "NOISE_CORR": 284,
        "NOISE_CHOICE": 285,
        "ATTACK_START": 300,
        "GAN_TRAIN_NOISE": 380,
    }
    assert {k: STREAMS[k] for k in frozen} == frozen
    assert len(set(STREAMS.values())) == len(STREAMS)


def test_config_names_have_one_source():
    import fluorobench_c
    from synthesis import levels
    from synthesis.groundtruth import masks

    assert levels.CONFIGS == ("er", "mito", "nucleus")
    assert fluorobench_c.CONFIGS is levels.CONFIGS
    assert masks.STRUCTURES is levels.CONFIGS
    assert set(levels.CONFIG_TITLES) == set(levels.CONFIGS)


def test_rows_are_assembled_from_the_declared_fields():
    from builder.package.features import (
        ATTACK_FEATURES,
        CAMERA_FIELDS,
        PARAMS_FEATURES,
        PSF_FEATURES,
        record,
    )
    from synthesis.corruptions.noise import PARAM_KEYS

    # The declared camera fields are what the noise step returns, plus the measured SNR;
    # adc_max_adu and noise_sigma_e are deliberately not stored (docs/definitions.md).
    assert set(CAMERA_FIELDS) == set(PARAM_KEYS) - {"adc_max_adu", "noise_sigma_e"} | {
        "snr_measured"
    }
    assert all(PARAMS_FEATURES[k].dtype == "float64" for k in CAMERA_FIELDS)
    rec = record({"method": "pgd", "eps_grey": 8, "iterations": 10.0, "extra": 1}, ATTACK_FEATURES)
    assert list(rec) == list(ATTACK_FEATURES)  # declaration order, no undeclared key
    assert rec["eps_grey"] == 8.0 and isinstance(rec["eps_grey"], float)
    assert rec["iterations"] == 10 and isinstance(rec["iterations"], int)
    assert rec["linf_grey"] is None and rec["seed"] is None
    assert record({"kind": "none"}, PSF_FEATURES) == {
        "kind": "none",
        "sigma_px": None,
        "sigma_center_px": None,
        "sigma_edge_px": None,
        "rings": None,
        "truncate": None,
    }
