"""Opening a source: :func:`open_source` tells the kind of a path and returns its adapter."""

from __future__ import annotations

from pathlib import Path

from synthesis.groundtruth.masks import STRUCTURES
from synthesis.groundtruth.sources.base import SPLITS, Source, SourceError
from synthesis.groundtruth.sources.bbbc038 import BBBC038Source, _is_bbbc038_entry
from synthesis.groundtruth.sources.folder import FolderSource
from synthesis.groundtruth.sources.images_only import ImagesOnlySource
from synthesis.groundtruth.sources.luo import LuoSource
from synthesis.groundtruth.sources.procedural import ProceduralSource
from synthesis.groundtruth.sources.tiled import _TiledSource


def open_source(
    source: str | Path,
    structure: str,
    *,
    seed: int,
    counts: dict[str, int | None] | None = None,
    mito_masks: str = "worms",
    pixel_sizes: dict[str, float] | None = None,
) -> Source:
    """Open ``source`` for ``structure``: ``"procedural"`` or a path (kind auto-detected).

    Args:
        source: ``"procedural"``; a BBBC038 ``stage1_train`` folder (or its parent) or zip; a
            Luo pair-list file or folder of lists; a folder with ``images/`` and ``masks/``;
            a folder with ``images/`` and no ``masks/`` (pseudo-masks).
        structure: ``"er"``, ``"mito"`` or ``"nucleus"``.
        seed: build seed (procedural masks; real sources do not depend on it).
        counts: images per split (procedural: required; real: caps, 0/None = all).
        mito_masks: the procedural mito generator, ``worms`` or ``cells``
            (:data:`synthesis.groundtruth.masks.MITO_MASKS`); real sources take only
            ``worms`` (the default: no generator).
        pixel_sizes: µm per pixel by image stem (``"*"``: every image), overriding what the
            files state (:mod:`.pixel_size`); only an images-only source takes them.

    Returns:
        A :class:`Source`; real sources have read and checked every image already.

    Raises:
        SourceError: unknown kind, a path that does not exist, or any bad input.
        ValueError: unknown structure.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}. Got {structure!r}")
    counts = dict(counts or {})
    bad = [k for k in counts if k not in SPLITS]
    if bad:
        raise SourceError(f"counts must be keyed by {SPLITS}. Got {sorted(counts)}")
    if pixel_sizes and str(source) == "procedural":
        raise SourceError("pixel sizes are given for a source's images; procedural has none")
    if str(source) == "procedural":
        return ProceduralSource(structure, seed=seed, counts=counts, mito_masks=mito_masks)
    if mito_masks != "worms":
        raise SourceError(
            f"mito_masks={mito_masks!r} chooses a procedural generator; {source} is a real "
            "source, whose masks are its own"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source path does not exist: {path}")
    if path.is_file() and path.suffix.lower() == ".zip":
        src: _TiledSource = BBBC038Source(path, structure, counts=counts)
    elif path.is_file():
        src = LuoSource([path], path, structure, counts=counts)
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        src = FolderSource(path, structure, counts=counts)
    elif (path / "images").is_dir() and not (path / "masks").exists():
        src = ImagesOnlySource(path, structure, counts=counts, pixel_sizes=pixel_sizes)
    elif (path / "stage1_train").is_dir():
        src = BBBC038Source(path / "stage1_train", structure, counts=counts)
    elif any(_is_bbbc038_entry(d) for d in path.iterdir()):
        src = BBBC038Source(path, structure, counts=counts)
    elif sorted(path.glob("*.txt")):
        src = LuoSource(sorted(path.glob("*.txt")), path, structure, counts=counts)
    else:
        raise SourceError(
            f"cannot tell what {path} holds: expected images/ and masks/ folders, an images/ "
            "folder alone (pseudo-masks), a BBBC038 stage1_train folder or zip, or Luo pair "
            f"lists (*.txt). Got {_listing(path)}"
        )
    if pixel_sizes and not isinstance(src, ImagesOnlySource):
        raise SourceError(
            f"--source-pixel-size applies to a folder of images without masks (pseudo-masks); "
            f"{path} is a {src.kind} source, used at its own pixel size"
        )
    src.scan()
    return src


def _listing(path: Path, n: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" ... ({len(names)} entries)" if len(names) > n else ""
    return (", ".join(names[:n]) + more) if names else "an empty folder"
