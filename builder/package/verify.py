"""``fluorobench-c verify OUT``: check a package before anyone loads or publishes it.

Re-hashes every shard, checks row counts and schemas against the manifest, the README's YAML
against the files, that every split of every config loads through ``datasets``, and that ids
pair across the splits made from the same base images. Every problem names its file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from datasets import Features
from huggingface_hub import DatasetCard

from builder.package.card import card_metadata
from builder.package.eval_results import EVAL_YAML, benchmark_declaration
from builder.package.manifest import MANIFEST, BuildError, read_manifest
from synthesis.runtime.files import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def read_card_yaml(path: Path) -> dict[str, Any]:
    """The YAML front matter of the card ``path``, parsed by ``huggingface_hub.repocard``.

    Raises:
        ValueError: no front matter, or front matter that is not a YAML mapping.
    """
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    text = path.read_text()
    if not REGEX_YAML_BLOCK.search(text):
        raise ValueError("no YAML front matter (--- ... ---) at the top")
    return DatasetCard(text).data.to_dict()


def verify(out: Path, *, load: bool = True) -> list[Problem]:
    """Return every problem found in the package at ``out`` (empty list: all good)."""
    problems: list[Problem] = []
    try:
        manifest = read_manifest(out)
    except BuildError as exc:
        return [Problem(str(out / MANIFEST), str(exc))]
    if manifest is None:
        return [Problem(str(out / MANIFEST), "missing: not a fluorobench-c package")]
    if not manifest.get("complete"):
        problems.append(
            Problem(str(out / MANIFEST), "build not complete (re-run the build to resume)")
        )
    listed: set[str] = set()
    ids_by_split: dict[tuple[str, str], list[str]] = {}
    for config, entry in manifest.get("configs", {}).items():
        features = Features.from_dict(entry["features"])
        for split, info in entry["splits"].items():
            if info.get("alias_of"):
                target = entry["splits"].get(info["alias_of"])
                if target is None:
                    problems.append(
                        Problem(str(out / MANIFEST), f"{config}/{split} aliases a missing split")
                    )
                continue
            rows = 0
            ids: list[str] = []
            for shard in info.get("shards", []):
                listed.add(shard["path"])
                path = out / shard["path"]
                if not path.exists():
                    problems.append(Problem(str(path), "missing shard"))
                    continue
                if sha256_file(path) != shard["sha256"]:
                    problems.append(
                        Problem(
                            str(path), "sha256 differs from manifest.json (corrupted or modified)"
                        )
                    )
                try:
                    pf = pq.ParquetFile(path)
                except Exception as exc:  # pyarrow raises several types for broken files
                    problems.append(Problem(str(path), f"unreadable Parquet file ({exc})"))
                    continue
                n = pf.metadata.num_rows
                if n != shard["num_rows"]:
                    problems.append(
                        Problem(str(path), f"{n} rows, manifest.json says {shard['num_rows']}")
                    )
                got = Features.from_arrow_schema(pf.schema_arrow)
                if got != features:
                    problems.append(Problem(str(path), "schema differs from the config's features"))
                ids += pf.read(columns=["id"]).column("id").to_pylist()
                rows += n
            if rows != info["num_rows"]:
                problems.append(
                    Problem(
                        str(out / MANIFEST),
                        f"{config}/{split}: {rows} rows in shards, manifest says {info['num_rows']}",
                    )
                )
            ids_by_split[(config, split)] = ids
        problems += _check_pairing(out, entry, config, ids_by_split)
    for path in sorted((out / "data").rglob("*.parquet")) if (out / "data").exists() else []:
        rel = path.relative_to(out).as_posix()
        if rel not in listed:
            problems.append(Problem(str(path), "shard not listed in manifest.json"))
    problems += _check_card(out, manifest)
    if load and not problems:
        problems += _check_loads(out, manifest)
    return problems


def _check_pairing(
    out: Path, entry: dict[str, Any], config: str, ids_by_split: dict[tuple[str, str], list[str]]
) -> list[Problem]:
    problems = []
    base = {s: ids_by_split.get((config, s)) for s in ("train", "validation", "test")}
    ref = base.get("test")
    for split, info in entry["splits"].items():
        ids = ids_by_split.get((config, split))
        if ids is None or split in base or ref is None:
            continue
        skipped = info.get("skipped_below_target", 0)
        if skipped:  # a real_snr split: the test ids whose native SNR reaches the target
            subset = iter(ref)
            in_order = all(any(i == r for r in subset) for i in ids)
            if not in_order or len(ref) - len(ids) != skipped:
                problems.append(
                    Problem(
                        str(out / "data" / config),
                        f"ids of split {split} are not the ids of test less {skipped} skipped",
                    )
                )
        elif ids != ref:
            problems.append(
                Problem(
                    str(out / "data" / config),
                    f"ids of split {split} do not pair with the ids of test",
                )
            )
    return problems


def _check_card(out: Path, manifest: dict[str, Any]) -> list[Problem]:
    path = out / "README.md"
    if not path.exists():
        return [Problem(str(path), "missing dataset card")]
    try:
        meta = read_card_yaml(path)
    except (ValueError, yaml.YAMLError) as exc:
        return [Problem(str(path), f"bad YAML front matter ({exc})")]
    expected = card_metadata(manifest)
    problems = []
    declaration = out / EVAL_YAML
    try:
        declared = yaml.safe_load(declaration.read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(Problem(str(declaration), f"unreadable benchmark declaration ({exc})"))
    else:
        if declared != benchmark_declaration(manifest):
            problems.append(
                Problem(
                    str(declaration), "tasks do not match manifest.json (render the card again)"
                )
            )
    for key in ("configs", "dataset_info"):
        if meta.get(key) != yaml.safe_load(yaml.safe_dump(expected.get(key))):
            problems.append(
                Problem(str(path), f"YAML '{key}' does not match manifest.json and the shards")
            )
    for config in meta.get("configs", []):
        for df in config.get("data_files", []):
            for f in df["path"] if isinstance(df["path"], list) else [df["path"]]:
                if not (out / f).exists():
                    problems.append(Problem(str(path), f"YAML lists {f}, which does not exist"))
    return problems


def _check_loads(out: Path, manifest: dict[str, Any]) -> list[Problem]:
    """Every split of every config loads through ``datasets`` (streaming: nothing is cached)."""
    import datasets

    problems = []
    for config, entry in manifest["configs"].items():
        for split, info in entry["splits"].items():
            try:
                ds = datasets.load_dataset(str(out), config, split=split, streaming=True)
                n = sum(1 for _ in ds.decode(False))
            except Exception as exc:  # report any loader failure with its split
                problems.append(
                    Problem(str(out / "README.md"), f"{config}/{split} does not load: {exc}")
                )
                continue
            if n != info["num_rows"]:
                problems.append(
                    Problem(
                        str(out / "README.md"),
                        f"{config}/{split} loads {n} rows, expected {info['num_rows']}",
                    )
                )
    return problems
