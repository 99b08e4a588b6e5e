"""FluoroBench-C: load the benchmark and feed it to PyTorch.

What ``datasets.load_dataset("fluorobench-c", "mito", split="snr_2")`` reads is the package
folder (or Hub repo) itself: Parquet shards plus a README whose YAML lists the configs and
their files. Loading scripts are gone from ``datasets`` (4.0 removed them), so nothing here
runs inside ``load_dataset``. This module adds:

- :func:`load`: ``load_dataset`` with the right defaults (streaming, numpy format);
- :func:`collate`: rows -> float32 ``(B, 1, H, W)`` images and masks for a ``DataLoader``;
- :class:`FluoroBenchC`: an ``ArrowBasedBuilder`` over the same files, for code that drives
  builders directly (``download_and_prepare``, ``as_dataset``, ``as_streaming_dataset``).

Example (with a package built in ``fluorobench-c/``, as the README's quickstart does)::

    import fluorobench_c, torch

    ds = fluorobench_c.load("fluorobench-c", "mito", "snr_2")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=fluorobench_c.collate)
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from synthesis.levels import CONFIGS
from synthesis.normalize import NORMALIZATIONS, normalize

__all__ = ["CONFIGS", "Collate", "FluoroBenchC", "FluoroBenchCConfig", "collate", "load"]

NAME = "fluorobench-c"
#: What a model needs from a row: ``columns=MODEL_COLUMNS`` skips the viewer's ``preview``
#: and the nested ``params`` (nothing to decode that a model does not read).
MODEL_COLUMNS: tuple[str, ...] = ("id", "image", "mask")


def _is_local(path: str | os.PathLike[str]) -> bool:
    return Path(path).expanduser().is_dir()


def load(
    path: str | os.PathLike[str],
    config: str,
    split: str | None,
    *,
    streaming: bool = True,
    format: str | None = "numpy",
    revision: str | None = None,
    columns: Sequence[str] | None = None,
    **kwargs: Any,
) -> (
    datasets.IterableDataset
    | datasets.Dataset
    | datasets.IterableDatasetDict
    | datasets.DatasetDict
):
    """Open one split of a FluoroBench-C package: a local folder or a Hub repo id; with
    ``split=None``, every split of the config as a dict (one read of the package's card for
    all of them, where a call per split reads it each time).

    Streams by default: a non-streaming ``load_dataset`` prepares every split of the config,
    while streaming reads only the split asked for. ``format="numpy"`` decodes images to
    ``uint16`` (``float32`` for ``clean``) arrays, the fast path for :func:`collate`.
    ``columns`` keeps only those columns: ``columns=["id", "image", "mask"]`` skips the
    nested ``params`` and read 1.26x faster in ``benchmarks/build.py``.

    Raises:
        ValueError: an unknown config.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(CONFIGS)}")
    target = str(Path(path).expanduser()) if _is_local(path) else str(path)
    ds = datasets.load_dataset(
        target, config, split=split, streaming=streaming, revision=revision, **kwargs
    )
    if columns is not None:
        ds = ds.select_columns(list(columns))
    return ds.with_format(format) if format else ds


def _to_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict) and value.get("bytes") is not None:  # undecoded Image cell
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(value["bytes"])))
    return np.asarray(value)  # a PIL image


@dataclass(frozen=True)
class Collate:
    """Turn rows into a batch for a torch ``DataLoader``.

    Returns a dict: ``image`` float32 ``(B, 1, H, W)`` (raw ADU, or normalised per image
    with ``normalize="zscore"`` / ``"minmax"``), ``mask`` float32 ``(B, 1, H, W)`` with values
    0/1, ``level`` float32 ``(B,)``, ``corruption`` int64 ``(B,)``, ``id`` and ``params`` lists
    (and ``instances`` int64 ``(B, 1, H, W)`` when every row has them).
    """

    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}. Got {self.normalize!r}")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("cannot collate an empty batch. Got 0 rows")
        images = np.stack([_to_array(r["image"]).astype(np.float32, copy=False) for r in rows])
        masks = np.stack([_to_array(r["mask"]) for r in rows]).astype(np.float32)
        batch: dict[str, Any] = {
            "image": normalize(torch.from_numpy(images)[:, None], self.normalize),
            "mask": torch.from_numpy(masks)[:, None],
            "id": [str(r["id"]) for r in rows],
        }
        if all("level" in r for r in rows):
            batch["level"] = torch.tensor([float(r["level"]) for r in rows], dtype=torch.float32)
        if all("corruption" in r for r in rows):
            batch["corruption"] = torch.tensor([int(r["corruption"]) for r in rows])
        if all("params" in r for r in rows):
            batch["params"] = [r["params"] for r in rows]
        if all(r.get("instances") is not None for r in rows):
            inst = np.stack([_to_array(r["instances"]).astype(np.int64) for r in rows])
            batch["instances"] = torch.from_numpy(inst)[:, None]
        return batch


#: Raw images (ADU as float32), 0/1 float masks.
collate = Collate()


# --------------------------------------------------------------------------- builder
class FluoroBenchCConfig(datasets.BuilderConfig):
    """A config (er, mito or nucleus) of a package at ``data_path`` (folder or Hub repo id)."""

    def __init__(
        self, *args: Any, data_path: str | None = None, revision: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.data_path = data_path
        self.revision = revision


class FluoroBenchC(datasets.ArrowBasedBuilder):
    """``ArrowBasedBuilder`` over a built package; splits come from its ``manifest.json``.

    Example:
        >>> b = FluoroBenchC(config_name="mito", data_path="fluorobench-c")  # doctest: +SKIP
        >>> b.as_streaming_dataset(split="snr_2")  # doctest: +SKIP
    """

    BUILDER_CONFIG_CLASS = FluoroBenchCConfig
    BUILDER_CONFIGS = [
        FluoroBenchCConfig(name=c, description=f"FluoroBench-C {c}") for c in CONFIGS
    ]
    DEFAULT_CONFIG_NAME = "mito"

    def __init__(
        self,
        *args: Any,
        data_path: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dataset_name", NAME)
        if data_path is None:
            raise ValueError("FluoroBenchC needs data_path: a package folder or a Hub repo id")
        self._data_path = str(data_path)
        self._revision = revision
        self._manifest_cache: dict[str, Any] | None = None
        kwargs.setdefault("hash", _manifest_hash(self._manifest(self._data_path, revision)))
        super().__init__(*args, data_path=self._data_path, revision=revision, **kwargs)

    # The manifest is tiny JSON; read it directly (local file or hub download).
    def _manifest(self, path: str, revision: str | None) -> dict[str, Any]:
        if self._manifest_cache is None:
            if _is_local(path):
                file = Path(path).expanduser() / "manifest.json"
                if not file.exists():
                    raise FileNotFoundError(
                        f"{file}: not a FluoroBench-C package (no manifest.json)"
                    )
                self._manifest_cache = json.loads(file.read_text())
            else:
                from huggingface_hub import hf_hub_download

                file = hf_hub_download(
                    path, "manifest.json", repo_type="dataset", revision=revision
                )
                self._manifest_cache = json.loads(Path(file).read_text())
        return self._manifest_cache

    def _config_entry(self) -> dict[str, Any]:
        manifest = self._manifest(self._data_path, self._revision)
        name = self.config.name
        if name not in manifest["configs"]:
            raise ValueError(
                f"{self._data_path} has no config {name!r}; it has {', '.join(manifest['configs'])}"
            )
        return manifest["configs"][name]

    def _url(self, rel: str) -> str:
        if _is_local(self._data_path):
            return str(Path(self._data_path).expanduser().resolve() / rel)
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self._data_path, rel, repo_type="dataset", revision=self._revision)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="FluoroBench-C robustness benchmark for fluorescence microscopy segmentation",
            features=datasets.Features.from_dict(self._config_entry()["features"]),
        )

    def _split_generators(
        self, dl_manager: datasets.DownloadManager
    ) -> list[datasets.SplitGenerator]:
        entry = self._config_entry()
        gens = []
        for name, split in entry["splits"].items():
            target = entry["splits"][split["alias_of"]] if split.get("alias_of") else split
            urls = [self._url(s["path"]) for s in target["shards"]]
            files = dl_manager.download(urls)
            gens.append(datasets.SplitGenerator(name=name, gen_kwargs={"files": files}))
        return gens

    def _generate_tables(self, files: list[str]) -> Any:
        schema = self.info.features.arrow_schema
        for i, file in enumerate(files):
            # open() is patched by datasets to read remote files when streaming.
            with open(file, "rb") as f:
                for j, batch in enumerate(pq.ParquetFile(f).iter_batches(batch_size=64)):
                    yield f"{i}_{j}", pa.Table.from_batches([batch]).cast(schema)


def _manifest_hash(manifest: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
