"""What ``fluorobench-c publish`` uploads, computed without the network.

- :func:`check_repo_id`, :func:`check_revision`: the repo id and branch, checked first;
- :func:`package_files`: every file of a package to publish (dot-files and dot-folders left
  out, ``README.md`` rendered for the repo id);
- :func:`make_plan`: those files compared with a remote tree (:class:`RemoteFile`, listed by
  :mod:`builder.package.hub`) by content: new, changed, unchanged, conflicts, deletions, and
  the commits to make (at most so many files and bytes each; ``manifest.json`` and
  ``README.md``, with any deletions, in the last one).

Nothing here talks to the Hub (``validate_repo_id`` is a local check):
:mod:`builder.package.hub` does, and :func:`builder.package.publish.publish` runs the steps.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthesis.runtime.errors import InputError
from synthesis.runtime.files import sha256_file

logger = logging.getLogger(__name__)

#: Committed last, in one commit (with any deletions): the card never lists missing files.
LAST_FILES: tuple[str, ...] = ("manifest.json", "README.md")
#: Files the Hub manages itself (created with the repo); never compared or deleted.
HUB_FILES: tuple[str, ...] = (".gitattributes",)
DEFAULT_FILES_PER_COMMIT = 100
DEFAULT_BYTES_PER_COMMIT = 4 << 30
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


# --------------------------------------------------------------------------- checks
def check_repo_id(repo_id: str, option: str = "--repo-id") -> str:
    """Return ``repo_id`` if it is a valid ``ORG/NAME`` Hub repo id.

    The rules are the Hub's own (``huggingface_hub.utils.validate_repo_id``); the id must
    also name its owner (a package is never published to an implicit namespace).

    Raises:
        InputError: not two parts, or a part the Hub refuses (the message says which rule).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InputError(f"{option} must be ORG/NAME (owner and name). Got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InputError(f"{option} {repo_id!r} is not a valid Hub repo id: {exc}") from None
    return repo_id


def check_revision(revision: str) -> str:
    """Return ``revision`` if it can name a branch to upload to.

    Raises:
        ValueError: a commit id, or characters a branch name cannot hold.
    """
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        raise InputError(f"--revision must name a branch (uploads make commits). Got {revision!r}")
    if not _BRANCH.match(revision) or ".." in revision or revision.endswith(("/", ".lock")):
        raise InputError(
            "--revision must be a branch name (letters, digits, '.', '_', '-', '/'). "
            f"Got {revision!r}"
        )
    return revision


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class LocalFile:
    """One file to publish: ``source`` is a path, or the bytes themselves (the card)."""

    path: str
    size: int
    sha256: str
    source: Path | bytes

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()

    def git_oid(self) -> str:
        data = self.read()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    """One file of the remote tree: ``lfs_sha256`` for LFS files, else the git ``blob_id``."""

    path: str
    size: int
    blob_id: str
    lfs_sha256: str | None


@dataclass
class Plan:
    """What a publish would do; :meth:`summary` and :meth:`lines` describe it."""

    repo_id: str
    revision: str
    remote: str  # "absent", "new branch", "empty", "this package", "other content", "unknown"
    new: list[LocalFile] = field(default_factory=list)
    changed: list[LocalFile] = field(default_factory=list)
    unchanged: list[LocalFile] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # remote files the folder lacks
    conflicts: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    commits: list[list[LocalFile]] = field(default_factory=list)
    head: str | None = None  # the remote head the plan was made against
    note: str = ""

    @property
    def upload(self) -> list[LocalFile]:
        return self.new + self.changed

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.upload)

    def summary(self) -> str:
        n = len(self.commits)
        return (
            f"{self.repo_id}@{self.revision} ({self.remote}): {len(self.new)} new, "
            f"{len(self.changed)} changed, {len(self.unchanged)} unchanged, "
            f"{len(self.delete)} to delete; {megabytes(self.upload_bytes)} to upload in {n} commit(s)"
        )

    def lines(self) -> list[str]:
        status = {f.path: "new" for f in self.new} | {f.path: "changed" for f in self.changed}
        out = []
        for f in sorted(self.new + self.changed + self.unchanged, key=lambda f: f.path):
            out.append(f"  {status.get(f.path, 'same'):<8}{megabytes(f.size):>10}  {f.path}")
        out += [f"  {'delete':<8}{'':>10}  {p}" for p in self.delete]
        return out


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def package_files(out: Path, manifest: dict[str, Any], repo_id: str) -> list[LocalFile]:
    """Every file of the package to publish, sorted by path, README rendered for ``repo_id``.

    Dot-files and dot-folders (lock, temporary files, caches) are never published; shard
    hashes come from ``manifest.json`` (``verify`` has just checked them).
    """
    from builder.package.card import render_card

    known = {
        s["path"]: s["sha256"]
        for entry in manifest["configs"].values()
        for split in entry["splits"].values()
        for s in split.get("shards", [])
    }
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == "README.md":
            continue
        if p.is_symlink():
            logger.warning("not publishing %s: a symbolic link", p)
            continue
        if not p.is_file():
            continue
        path = rel.as_posix()
        files.append(LocalFile(path, p.stat().st_size, known.get(path) or sha256_file(p), p))
    card = render_card(manifest, repo=repo_id, out=out).encode()
    files.append(LocalFile("README.md", len(card), hashlib.sha256(card).hexdigest(), card))
    return sorted(files, key=lambda f: f.path)


def _same(local: LocalFile, remote: RemoteFile) -> bool:
    if local.size != remote.size:
        return False
    if remote.lfs_sha256 is not None:
        return local.sha256 == remote.lfs_sha256
    return local.git_oid() == remote.blob_id


def make_plan(
    files: list[LocalFile],
    remote: dict[str, RemoteFile] | None,
    *,
    repo_id: str,
    revision: str,
    overwrite: bool = False,
    new_branch: bool = False,
    files_per_commit: int = DEFAULT_FILES_PER_COMMIT,
    bytes_per_commit: int = DEFAULT_BYTES_PER_COMMIT,
) -> Plan:
    """Compare ``files`` with the remote tree (None: no repo yet) and split the work in commits.

    Conflicts (files the folder lacks; changed files unless ``manifest.json`` is unchanged,
    i.e. the repo holds this very package) block the plan unless ``overwrite``, or unless the
    branch is being created (its content is a copy of ``main``'s, which stays untouched).
    """
    plan = Plan(repo_id, revision, "absent" if remote is None else "empty")
    remote = {p: r for p, r in (remote or {}).items() if p not in HUB_FILES}
    local = {f.path: f for f in files}
    for f in files:
        r = remote.get(f.path)
        if r is None:
            plan.new.append(f)
        elif _same(f, r):
            plan.unchanged.append(f)
        else:
            plan.changed.append(f)
    plan.extra = sorted(p for p in remote if p not in local)
    same_package = "manifest.json" in remote and any(
        f.path == "manifest.json" for f in plan.unchanged
    )
    plan.conflicts = plan.extra + ([] if same_package else [f.path for f in plan.changed])
    if remote and plan.remote != "absent":
        plan.remote = "this package" if same_package or not plan.conflicts else "other content"
    if new_branch:
        plan.remote = "new branch"
    if overwrite or new_branch:
        plan.delete = list(plan.extra)
    body = [f for f in plan.upload if f.path not in LAST_FILES]
    last = [f for f in plan.upload if f.path in LAST_FILES]
    batch: list[LocalFile] = []
    size = 0
    for f in body:
        if batch and (len(batch) >= files_per_commit or size + f.size > bytes_per_commit):
            plan.commits.append(batch)
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        plan.commits.append(batch)
    if last or plan.delete:
        plan.commits.append(sorted(last, key=lambda f: LAST_FILES.index(f.path)))
    return plan
