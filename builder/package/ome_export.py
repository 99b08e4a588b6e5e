"""A package's splits as OME-Zarr or OME-TIFF, to look at them in napari, Fiji or QuPath:
``fluorobench-c export PKG --config mito --splits snr_2 sib_3 --format ome-zarr OUT.zarr``.

- ``ome-zarr``: one Zarr v3 store. Each split is an OME-Zarr image (NGFF 0.5, written by
  ``ome-zarr-py``) at ``OUT.zarr/<split>``: its rows stacked along a first axis ``row``
  (one 2-D tile per row, in the shards' order), then ``y`` and ``x``, one chunk per row;
  its masks as the label image ``labels/mask`` (0/1) and, for ``nucleus``, the nucleus
  instances as ``labels/instances``. The pixel size is the config's stated one
  (:data:`synthesis.levels.PIXEL_SIZE_UM`, micrometres) where there is one, else 1 (pixels).
  The rows' parameters (id, corruption, level, source and every ``params`` field) are the
  image group's ``fluorobench_c`` attribute; the store's root attributes name the package,
  its ``manifest.json`` sha256, the config and the splits.
- ``ome-tiff``: a folder with one ``<split>.ome.tif`` per split (``tifffile``): axes
  ``TCYX``, the rows along ``T``, the channels ``image``, ``mask`` (and ``instances``), the
  pixel size in the OME-XML, and the rows' parameters as JSON in the image's description.

Pixels are the shards' own: the ``image`` cell's values (uint16 ADU, float32 for ``clean``),
the mask's 0/1 and the instance labels, unchanged. Written under a temporary name beside
``OUT`` and renamed; an existing ``OUT`` is replaced only with ``overwrite``. No torch here
(the package layer); ``ome-zarr`` and ``ome-zarr-models`` are the optional ``ome`` extra.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from builder.package.manifest import config_manifest, split_files
from builder.package.plan import CORRUPTIONS, FAMILIES
from synthesis.levels import PIXEL_SIZE_UM
from synthesis.runtime.errors import InputError, RefusedError
from synthesis.runtime.extras import missing_extra
from synthesis.runtime.files import sha256_file

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("ome-zarr", "ome-tiff")
#: The attribute (Zarr) and description key (TIFF) holding the rows' parameters.
ATTRIBUTE = "fluorobench_c"
#: NGFF version written.
NGFF_VERSION = "0.5"


def ome_missing() -> str | None:
    """None when ``ome-zarr`` and ``zarr`` import, else how to install them."""
    return missing_extra("ome", ("zarr", "ome_zarr.writer"))


def select_splits(manifest: dict[str, Any], config: str, requested: list[str] | None) -> list[str]:
    """The package's splits of ``config`` named by ``requested`` (split or family names, in
    the package's order; None: every split).

    Raises:
        InputError: a name the package does not have for ``config``.
    """
    have = manifest["configs"][config]["splits"]
    if not requested:
        return list(have)
    wanted: list[str] = []
    for item in requested:
        if item in have:
            names = [item]
        elif item in FAMILIES:
            names = [s for s, e in have.items() if e.get("family") == item]
        else:
            names = []
        if not names:
            raise InputError(
                f"the package has no split or family {item!r} for {config}; it has {', '.join(have)}"
            )
        wanted += [n for n in names if n not in wanted]
    return [s for s in have if s in wanted]


def read_split(package: Path, manifest: dict[str, Any], config: str, split: str) -> dict[str, Any]:
    """The rows of one split from its Parquet shards: ``image`` ``(N, H, W)`` (the stored
    dtype), ``mask`` ``(N, H, W)`` uint8 0/1, ``instances`` ``(N, H, W)`` or None, and
    ``rows`` (id, corruption name, level, source, params per row).

    Raises:
        InputError: an empty split, or rows of different sizes or dtypes.
    """
    import pyarrow.parquet as pq

    images, masks, instances, rows = [], [], [], []
    for rel in split_files(manifest, config, split):
        table = pq.read_table(package / rel, columns=None)
        names = set(table.column_names)
        for row in table.to_pylist():
            images.append(_decode(row["image"], package / rel))
            masks.append((_decode(row["mask"], package / rel) != 0).astype(np.uint8))
            if "instances" in names and row.get("instances") is not None:
                instances.append(_decode(row["instances"], package / rel))
            rows.append(
                {
                    "id": row["id"],
                    "corruption": CORRUPTIONS[row["corruption"]],
                    "level": row["level"],
                    "source": row.get("source"),
                    "params": _clean(row["params"]),
                }
            )
    if not images:
        raise InputError(f"{package}: split {split} of {config} has no rows")
    shapes = {a.shape for a in images} | {a.shape for a in masks}
    dtypes = {a.dtype for a in images}
    if len(shapes) != 1 or len(dtypes) != 1:
        raise InputError(
            f"{package}: split {split} of {config} mixes image sizes {sorted(shapes)} or dtypes "
            f"{sorted(map(str, dtypes))}; one stack needs one"
        )
    return {
        "image": np.stack(images),
        "mask": np.stack(masks),
        "instances": np.stack(instances) if len(instances) == len(images) else None,
        "rows": rows,
    }


def _decode(cell: dict[str, Any], where: Path) -> np.ndarray:
    """An image cell's pixels (TIFF by tifffile, PNG by Pillow), as stored."""
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        raise InputError(f"{where}: an image cell without bytes")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        return tifffile.imread(io.BytesIO(data))
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities -> None, nested."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def export_ome(
    package: str | Path,
    config: str,
    out: str | Path,
    *,
    fmt: str = "ome-zarr",
    splits: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write splits of ``config`` as OME-Zarr (``fmt="ome-zarr"``, one store) or OME-TIFF
    (``"ome-tiff"``, a folder of one file per split); return ``out``.

    Raises:
        InputError: not a package, no such config or split, an unknown format, or the ome
            extra missing (OME-Zarr).
        RefusedError: ``out`` exists and ``overwrite`` is False.
    """
    package, out = Path(package), Path(out)
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}. Got {fmt!r}")
    if fmt == "ome-zarr" and (missing := ome_missing()):
        raise InputError(f"export --format ome-zarr {missing}")
    manifest = config_manifest(package, config)
    names = select_splits(manifest, config, splits)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise RefusedError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "package": package.name,
        "manifest_sha256": sha256_file(package / "manifest.json"),
        "package_version": manifest.get("package_version"),
        "config": config,
        "pixel_size_um": PIXEL_SIZE_UM.get(config),
    }
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        if fmt == "ome-zarr":
            _write_zarr(package, manifest, config, names, staged, info)
        else:
            _write_tiffs(package, manifest, config, names, staged, info)
        if out.exists() or out.is_symlink():
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            else:
                out.unlink()
        staged.rename(out)
    logger.info("%s: %s of %s (%s) written", out, fmt, config, ", ".join(names))
    return out


def _axes(pixel: float | None) -> tuple[list[dict[str, str]], dict[str, float], dict[str, str]]:
    axes = [{"name": "row"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    scale = {"row": 1.0, "y": pixel or 1.0, "x": pixel or 1.0}
    units = {"y": "micrometer", "x": "micrometer"} if pixel else {}
    return axes, scale, units


def _write_zarr(
    package: Path,
    manifest: dict[str, Any],
    config: str,
    names: list[str],
    target: Path,
    info: dict[str, Any],
) -> None:
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_labels

    root = zarr.open_group(str(target), mode="w", zarr_format=3)
    root.attrs[ATTRIBUTE] = {**info, "splits": names}
    axes, scale, units = _axes(info["pixel_size_um"])
    for split in names:
        data = read_split(package, manifest, config, split)
        n, h, w = data["image"].shape
        common = {
            "scale_factors": [],
            "fmt": FormatV05(),
            "axes": axes,
            "scale": scale,
            "axes_units": units or None,
            "storage_options": {"chunks": (1, h, w)},
        }
        group = root.create_group(split)
        write_image(data["image"], group, name=split, **common)
        labels = {"mask": data["mask"]}
        if data["instances"] is not None:
            labels["instances"] = data["instances"]
        for name, array in labels.items():
            write_labels(
                array,
                group,
                name=name,
                scaler=None,
                label_metadata={"source": {"image": "../../"}},
                **common,
            )
        # ome-zarr-py writes the labels group's "ome" without its "version" (NGFF 0.5
        # requires it on every OME group): add it.
        label_group = group["labels"]
        ome = dict(label_group.attrs.get("ome", {}))
        label_group.attrs["ome"] = {"version": NGFF_VERSION, **ome}
        group.attrs[ATTRIBUTE] = {**info, "split": split, "rows": data["rows"]}
        logger.info("%s: %s, %d rows of %dx%d", target, split, n, h, w)


def _write_tiffs(
    package: Path,
    manifest: dict[str, Any],
    config: str,
    names: list[str],
    target: Path,
    info: dict[str, Any],
) -> None:
    import tifffile

    target.mkdir()
    pixel = info["pixel_size_um"]
    for split in names:
        data = read_split(package, manifest, config, split)
        planes = [data["image"], data["mask"]]
        channels = ["image", "mask"]
        if data["instances"] is not None:
            planes.append(data["instances"])
            channels.append("instances")
        dtype = data["image"].dtype
        if any(np.issubdtype(p.dtype, np.integer) and p.max(initial=0) > 65535 for p in planes):
            raise InputError(f"{package}: split {split}: labels beyond uint16")
        stack = np.stack([p.astype(dtype) for p in planes], axis=1)  # (T=rows, C, Y, X)
        metadata: dict[str, Any] = {
            "axes": "TCYX",
            "Name": split,
            "Channel": {"Name": channels},
            "Description": json.dumps(
                {ATTRIBUTE: {**info, "split": split, "rows": data["rows"]}}, allow_nan=False
            ),
        }
        if pixel:
            metadata.update(
                PhysicalSizeX=pixel,
                PhysicalSizeXUnit="µm",
                PhysicalSizeY=pixel,
                PhysicalSizeYUnit="µm",
            )
        tifffile.imwrite(
            target / f"{split}.ome.tif",
            stack,
            ome=True,
            photometric="minisblack",
            metadata=metadata,
            compression="zlib",
        )
