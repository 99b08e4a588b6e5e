"""`fluorobench-c export`: a package's splits as OME-Zarr (validated by ome-zarr-models, read
back by ome-zarr-py) and OME-TIFF (read back by tifffile), against the rows the loader reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builder.cli import main

pytest.importorskip("ome_zarr")
pytest.importorskip("ome_zarr_models")

BUILD = [
    *("--config", "mito", "nucleus"),
    *("--splits", "reference", "snr_2", "sib_3"),
    *("--train", "1", "--validation", "1", "--test", "3", "--batch-size", "3"),
    *("--seed", "11", "--device", "cpu"),
]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ome") / "pkg"
    assert main(["build", str(out), *BUILD]) == 0
    return out


def _rows(package: Path, config: str, split: str) -> list[dict]:
    """The split's rows as the loader decodes them (``datasets``, not our reader)."""
    import fluorobench_c

    return list(fluorobench_c.load(str(package), config, split))


def test_ome_zarr_validates_and_reads_back_the_rows(package: Path, tmp_path: Path, capsys):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import Image, ImageLabel

    out = tmp_path / "mito.zarr"
    argv = ["export", str(package), "--config", "mito", "--splits", "snr_2", "sib_3"]
    assert main([*argv, "--format", "ome-zarr", str(out)]) == 0
    assert "napari" in capsys.readouterr().out
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["fluorobench_c"]["splits"] == ["snr_2", "sib_3"]
    for split in ("snr_2", "sib_3"):
        image = Image.from_zarr(zarr.open_group(str(out / split), mode="r"))  # the validator
        (multiscale,) = image.ome_attributes.multiscales
        axes = [(a.name, a.type, a.unit) for a in multiscale.axes]
        assert axes == [
            ("row", "custom", None),
            ("y", "space", "micrometer"),
            ("x", "space", "micrometer"),
        ]
        assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.0, 0.085, 0.085]
        assert sorted(image.labels.members) == ["mask"]  # mito: no instances
        ImageLabel.from_zarr(zarr.open_group(str(out / split / "labels" / "mask"), mode="r"))

        nodes = {Path(n.zarr.path).name: n for n in Reader(parse_url(str(out / split)))()}
        pixels = np.asarray(nodes[split].data[0])
        labels = np.asarray(nodes["mask"].data[0])
        rows = _rows(package, "mito", split)
        assert pixels.shape == (3, 256, 256) and pixels.dtype == np.uint16
        np.testing.assert_array_equal(pixels, np.stack([r["image"] for r in rows]))
        np.testing.assert_array_equal(labels, np.stack([r["mask"] for r in rows]))
        attrs = root[split].attrs["fluorobench_c"]
        assert [r["id"] for r in attrs["rows"]] == [r["id"] for r in rows]
        for got, row in zip(attrs["rows"], rows, strict=True):
            assert got["params"]["snr_measured"] == pytest.approx(row["params"]["snr_measured"])
            assert got["level"] == pytest.approx(float(row["level"]))
            assert got["corruption"] == split.split("_")[0]


def test_ome_zarr_nucleus_has_instance_labels_and_no_pixel_size(package: Path, tmp_path: Path):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import Image

    out = tmp_path / "nucleus.zarr"
    argv = ["export", str(package), "--config", "nucleus", "--splits", "snr"]
    assert main([*argv, "--format", "ome-zarr", str(out)]) == 0
    image = Image.from_zarr(zarr.open_group(str(out / "snr_2"), mode="r"))
    assert sorted(image.labels.members) == ["instances", "mask"]
    (multiscale,) = image.ome_attributes.multiscales
    assert [a.unit for a in multiscale.axes] == [None, None, None]  # no stated pixel size
    nodes = {Path(n.zarr.path).name: n for n in Reader(parse_url(str(out / "snr_2")))()}
    rows = _rows(package, "nucleus", "snr_2")
    instances = np.asarray(nodes["instances"].data[0])
    np.testing.assert_array_equal(instances, np.stack([r["instances"] for r in rows]))
    assert instances.max() > 1  # instance ids, not a binary mask


def test_ome_tiff_one_file_per_split(package: Path, tmp_path: Path):
    import tifffile

    out = tmp_path / "tiffs"
    argv = ["export", str(package), "--config", "nucleus", "--splits", "snr_2", "sib_3"]
    assert main([*argv, "--format", "ome-tiff", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sib_3.ome.tif", "snr_2.ome.tif"]
    with tifffile.TiffFile(out / "snr_2.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "TCYX"
        stack = series.asarray()
        meta = json.loads(tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Description"])
    rows = _rows(package, "nucleus", "snr_2")
    assert stack.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(stack[:, 0], np.stack([r["image"] for r in rows]))
    np.testing.assert_array_equal(stack[:, 1], np.stack([r["mask"] for r in rows]))
    np.testing.assert_array_equal(stack[:, 2], np.stack([r["instances"] for r in rows]))
    assert [r["id"] for r in meta["fluorobench_c"]["rows"]] == [r["id"] for r in rows]


def test_export_refuses_an_existing_path_and_bad_splits(package: Path, tmp_path: Path, capsys):
    out = tmp_path / "taken.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", str(package), "--config", "mito", "--splits", "snr_2"]
    assert main([*argv, "--format", "ome-zarr", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*argv, "--format", "ome-zarr", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "snr_2").is_dir()
    bad = tmp_path / "bad.zarr"
    assert (
        main(
            ["export", str(package), "--config", "mito", "--splits", "svb_5"]
            + ["--format", "ome-zarr", str(bad)]
        )
        == 2
    )
    assert "no split or family 'svb_5'" in capsys.readouterr().err
    assert not bad.exists() and not list(tmp_path.glob(".bad.zarr*"))  # nothing left behind
