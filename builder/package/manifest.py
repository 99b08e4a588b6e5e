"""``manifest.json`` (the package's table of contents) and the build lock.

The manifest lists every shard with its sha256 and row count, the recipe (the arguments
that determine the bytes: configs, source, splits, counts, seed, renderer, noise model,
package version) and, per config, the features. It holds no timestamps or machine details,
so an interrupted-then-resumed build ends with exactly the manifest of an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synthesis.runtime.errors import InputError, RefusedError
from synthesis.runtime.files import atomic_write_bytes

MANIFEST = "manifest.json"
LOCK = ".fluorobench-c.lock"
#: 2: params.real and the real_snr / real_sib / real_svb splits (issue 12).
#: 3: the ``preview`` column, 1-bit palette masks, Parquet written like ``datasets`` 5.x.
FORMAT_VERSION = 3


class BuildError(RefusedError):
    """A build that cannot go on (a different build or another process holds the folder, a
    source without the images a split needs); the message says why and what to do."""


def config_manifest(package: Path, config: str) -> dict[str, Any]:
    """The manifest of the local package ``package``, checked to hold ``config``.

    Raises:
        InputError: no manifest (not a package), or no such config (naming the ones it has).
    """
    manifest = read_manifest(package)
    if manifest is None:
        raise InputError(f"{package}: not a fluorobench-c package (no manifest.json)")
    check_config(manifest, config, str(package))
    return manifest


def check_config(manifest: dict[str, Any], config: str, where: str) -> None:
    """Raises :class:`InputError` unless the package ``where`` (its ``manifest``) has
    ``config``."""
    if config not in manifest["configs"]:
        raise InputError(
            f"{where} has no config {config!r}; it has {', '.join(manifest['configs'])}"
        )


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"{path}: not a readable manifest ({exc})") from exc


# --------------------------------------------------------------------------- queries
def split_files(manifest: dict[str, Any], config: str, split: str) -> list[str]:
    """Paths (relative to the package) of the shards of ``split``, following aliases."""
    splits = manifest["configs"][config]["splits"]
    entry = splits[split]
    if entry.get("alias_of"):
        entry = splits[entry["alias_of"]]
    return [s["path"] for s in entry["shards"]]


def split_num_bytes(manifest: dict[str, Any], config: str, split: str) -> int:
    """Bytes of the shards of ``split``, following aliases."""
    splits = manifest["configs"][config]["splits"]
    entry = splits[split]
    if entry.get("alias_of"):
        entry = splits[entry["alias_of"]]
    return sum(s.get("num_bytes", 0) for s in entry["shards"])


def pseudo_mask_method(manifest: dict[str, Any], config: str) -> dict[str, Any] | None:
    """The pseudo-mask method of ``config`` when its masks are pseudo-masks (the source entry
    says ``"mask": "pseudo"``: real images without manual masks), else None."""
    source = manifest["configs"].get(config, {}).get("source") or {}
    if source.get("mask") != "pseudo":
        return None
    return source.get("pseudo_mask") or {}


#: Mappings whose order means something: feature order is the column order, split order the
#: build order. Every other mapping is written with sorted keys, so the bytes are canonical.
_ORDERED = ("features", "splits")


def _canonical(value: Any, ordered: bool = False) -> Any:
    if isinstance(value, dict):
        keys = list(value) if ordered else sorted(value)
        return {
            k: value[k] if k == "features" else _canonical(value[k], ordered=k in _ORDERED)
            for k in keys
        }
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    data = (json.dumps(_canonical(manifest), indent=2) + "\n").encode()
    atomic_write_bytes(out / MANIFEST, data)


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the duration of a build.

    ``filelock`` takes an OS lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) that is
    released by the kernel when the holder dies (even by SIGKILL), so a killed build never
    leaves a stale lock behind; a second concurrent build is refused at once.
    """
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    lock = FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout as exc:
        raise BuildError(
            f"{out}: another fluorobench-c build is running in this folder (lock {path})"
        ) from exc
    try:
        yield
    finally:
        # Removed while still held, so a refused or finished build leaves nothing behind.
        path.unlink(missing_ok=True)
        lock.release()
