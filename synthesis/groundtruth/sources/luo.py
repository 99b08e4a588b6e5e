"""Luo et al.'s pair lists: ``image_path mask_path`` lines, one list or a folder of lists.

Lists named ``train``/``val``/``test`` keep the authors' split; otherwise splits are hashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthesis.groundtruth.sources.base import SourceError, _clean_id, assign_split
from synthesis.groundtruth.sources.tiled import _Pair, _TiledSource


class LuoSource(_TiledSource):
    """Luo et al.'s pair lists: ``image_path mask_path`` per line, relative to the list."""

    kind = "luo"

    def __init__(
        self, lists: list[Path], root: Path, structure: str, *, counts: dict[str, int | None]
    ) -> None:
        super().__init__(root, structure, counts=counts)
        self.lists = lists
        self._list_splits = all(_split_of_list(p) is not None for p in lists)

    def _pairs(self) -> list[_Pair]:
        rows: list[tuple[Path, Path, str | None, str]] = []
        for lst in self.lists:
            split = _split_of_list(lst) if self._list_splits else None
            try:
                text = lst.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise SourceError(f"cannot read pair list {lst}: {e}") from e
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise SourceError(
                        f"{lst}, line {n}: expected 'image_path mask_path'. Got {line!r}"
                    )
                img, msk = (Path(q) if Path(q).is_absolute() else lst.parent / q for q in parts)
                for f in (img, msk):
                    if not f.is_file():
                        raise SourceError(f"{lst}, line {n}: file does not exist: {f}")
                rows.append((img, msk, split, f"{lst}, line {n}"))
        if not rows:
            raise SourceError(f"no 'image_path mask_path' lines in {[str(p) for p in self.lists]}")
        stems = [_clean_id(r[0].stem) for r in rows]
        if len(set(stems)) != len(stems):
            # Stems repeat (e.g. train/001.tif and test/001.tif): ids from the relative paths.
            stems = [_clean_id(_relative_key(r[0], self.root)) for r in rows]
        return [
            _Pair(
                key=key,
                image=str(img),
                masks=[str(msk)],
                split=split or assign_split(key),
                display=f"{img} ({where})",
            )
            for key, (img, msk, split, where) in zip(stems, rows, strict=True)
        ]

    def _read(self, ref: str) -> Path:
        return Path(ref)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["lists"] = [str(p) for p in self.lists]
        d["split_rule"] = "lists" if self._list_splits else "hash"
        return d


def _relative_key(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(*path.parts[-3:])
    return "_".join(rel.with_suffix("").parts)


def _split_of_list(path: Path) -> str | None:
    name = path.stem.lower()
    for split, words in (("validation", ("val",)), ("train", ("train",)), ("test", ("test",))):
        if any(w in name for w in words):
            return split
    return None
