"""``fluorobench-c publish OUT --repo-id ORG/NAME``: put a verified package on the Hugging Face Hub.

After it, anyone runs ``load_dataset("ORG/NAME", "mito", split="snr_2", streaming=True)``.

What is uploaded: every regular file of the package except dot-files and dot-folders (the
build lock, temporary files, caches), with ``README.md`` rendered again for ``ORG/NAME`` (the
load examples name the repo; the YAML is :func:`builder.package.card.card_metadata`, as in the local
card).

How (``huggingface_hub``, plain HTTP + LFS or Xet, whichever the client picks):

1. ``verify`` runs first; a folder that fails it is refused.
2. The token comes from ``HF_TOKEN`` or the logged-in user (``hf auth login``); it is checked
   with ``whoami`` and never printed.
3. The repo is created if needed (``--private`` applies then), the branch (``--revision``) too.
4. The remote tree is compared with the folder by content (sha256 for LFS files, git blob id
   for small ones). Only new or changed files are sent: re-publishing an unchanged folder
   uploads nothing. A repo holding other content (files the folder lacks, or different
   files while its ``manifest.json`` differs) is refused without ``--overwrite``; with it,
   the repo ends up mirroring the folder (files the folder lacks are deleted).
5. Files go up in several commits of at most ``--files-per-commit`` files, each chained to
   the previous one (``parent_commit``): a commit is atomic, so an interruption (network,
   kill) loses at most the commit in flight, and re-running the same command resumes (the
   comparison of step 4 skips what is there; LFS objects already stored are not re-sent).
   ``README.md`` and ``manifest.json`` (and deletions) come in the last commit, so the card
   never lists files that are not there yet.
6. The remote tree is listed again and compared with the folder.

Exit codes (``fluorobench-c publish``): 0 published or already up to date; 1 the upload
failed part-way (network, interruption): re-run to resume; 2 refused before anything was
changed (bad arguments, folder fails verify, no or rejected token, repo holds other content).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthesis.runtime.errors import InputError, JobFailed, RefusedError
from synthesis.runtime.files import sha256_file

logger = logging.getLogger(__name__)

#: Committed last, in one commit (with any deletions): the card never lists missing files.
LAST_FILES: tuple[str, ...] = ("manifest.json", "README.md")
#: Files the Hub manages itself (created with the repo); never compared or deleted.
HUB_FILES: tuple[str, ...] = (".gitattributes",)
DEFAULT_FILES_PER_COMMIT = 100
DEFAULT_BYTES_PER_COMMIT = 4 << 30
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


class PublishError(JobFailed):
    """The upload failed part-way; the message says why. Re-running resumes (exit code 1)."""


class PublishRefused(PublishError, RefusedError):
    """Refused before anything was changed; the message says why and what to do (exit
    code 2)."""

    exit_code = 2


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


# --------------------------------------------------------------------------- the Hub
def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:  # huggingface_hub >= 1.0 speaks httpx (exported under this name)
        from huggingface_hub.utils import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    try:  # older huggingface_hub: requests
        import requests

        errors.append(requests.exceptions.ConnectionError)
        errors.append(requests.exceptions.Timeout)
    except ImportError:
        pass
    return tuple(errors)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Scrubbed:
    """Replaces the token in any text that leaves this module (it is never printed)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


def _remote_tree(api: Any, repo_id: str, revision: str) -> dict[str, RemoteFile]:
    out = {}
    for e in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True):
        if getattr(e, "size", None) is None:  # a folder
            continue
        lfs = e.lfs.sha256 if e.lfs is not None else None
        out[e.path] = RemoteFile(e.path, e.size, e.blob_id, lfs)
    return out


@dataclass
class _Remote:
    exists: bool
    branch_exists: bool
    head: str | None
    private: bool | None
    tree: dict[str, RemoteFile] | None


def _read_remote(api: Any, repo_id: str, revision: str) -> _Remote:
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = api.dataset_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        info = api.dataset_info(repo_id)  # the new branch starts from main
        return _Remote(True, False, info.sha, info.private, _remote_tree(api, repo_id, info.sha))
    except RepositoryNotFoundError:
        return _Remote(False, False, None, None, None)
    return _Remote(True, True, info.sha, info.private, _remote_tree(api, repo_id, info.sha))


@dataclass
class PublishResult:
    """What a publish did. ``commits``: the commit ids made, oldest first (none if up to date)."""

    repo_id: str
    revision: str
    url: str
    plan: Plan
    commits: list[str] = field(default_factory=list)
    dry_run: bool = False


@contextmanager
def _errors(endpoint: str, scrub: _Scrubbed, what: str) -> Iterator[None]:
    """Turn transport and HTTP errors into one clear line (token scrubbed)."""
    from huggingface_hub.utils import HfHubHTTPError

    try:
        yield
    except PublishError:
        raise
    except _transport_errors() as exc:
        raise PublishError(
            scrub(
                f"cannot reach the Hub at {endpoint} while {what} ({_short(exc)}); check the "
                "network connection (and HF_ENDPOINT), then re-run the same command: files "
                "already uploaded are not sent again"
            )
        ) from None
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise PublishRefused(
                scrub(
                    f"the Hub at {endpoint} refused access while {what} (HTTP {status}): the "
                    "token needs write access to this namespace"
                )
            ) from None
        raise PublishError(scrub(f"the Hub failed while {what}: {_short(exc)}")) from None


def _token(explicit: str | None) -> tuple[str | None, str]:
    from huggingface_hub import get_token

    token = explicit or get_token()
    if explicit:
        source = "the token passed in"
    elif token and os.environ.get("HF_TOKEN") == token:
        source = "HF_TOKEN"
    else:
        source = "the logged-in user's token"
    return token, source


def publish(
    out: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    load_check: bool = True,
    token: str | None = None,
    endpoint: str | None = None,
    files_per_commit: int = DEFAULT_FILES_PER_COMMIT,
    bytes_per_commit: int = DEFAULT_BYTES_PER_COMMIT,
) -> PublishResult:
    """Publish the package ``out`` as the Hub dataset ``repo_id`` (see the module docstring).

    Args:
        out: the package folder (``fluorobench-c build`` output).
        repo_id: ``ORG/NAME``.
        revision: the branch to upload to (default ``main``); created from ``main`` if absent.
        private: create the repo private (an existing public repo is refused).
        commit_message: summary of the commits (numbered when there are several).
        overwrite: replace a repo that holds other content; it ends up mirroring ``out``.
        dry_run: plan only: read the remote if it can, change nothing.
        load_check: let ``verify`` load every split through ``datasets`` (slower, thorough).
        token: a Hub token (default: ``HF_TOKEN`` or the logged-in user's).
        endpoint: the Hub URL (default: ``HF_ENDPOINT`` or https://huggingface.co).
        files_per_commit, bytes_per_commit: the size of each commit.

    Returns:
        A :class:`PublishResult`: the plan and the commits made.

    Raises:
        ValueError: a malformed ``repo_id``, ``revision`` or commit size.
        PublishRefused: refused before anything changed (verify failed, no or rejected token,
            other content without ``overwrite``, ``private`` on an existing public repo).
        PublishError: the upload failed part-way; re-running the same call resumes.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    from builder.package.manifest import BuildError, read_manifest
    from builder.package.verify import verify

    check_repo_id(repo_id)
    revision = check_revision(revision or "main")
    if files_per_commit < 1 or bytes_per_commit < 1:
        raise InputError(
            f"files and bytes per commit must be >= 1. Got {files_per_commit}, {bytes_per_commit}"
        )
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no such folder")
    problems = verify(out, load=load_check)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PublishRefused(
            f"{out} fails verify ({len(problems)} problem(s)); nothing was uploaded. Fix or "
            f"rebuild it, then publish:\n{lines}{more}"
        )
    try:
        manifest = read_manifest(out)
    except BuildError as exc:
        raise PublishRefused(str(exc)) from None
    assert manifest is not None  # verify passed
    files = package_files(out, manifest, repo_id)

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    token, source = _token(token)
    scrub = _Scrubbed(token)
    url = f"{endpoint}/datasets/{repo_id}"
    api = HfApi(endpoint=endpoint, token=token)

    def plan_for(tree: dict[str, RemoteFile] | None, new_branch: bool = False) -> Plan:
        return make_plan(
            files,
            tree,
            repo_id=repo_id,
            revision=revision,
            overwrite=overwrite,
            new_branch=new_branch,
            files_per_commit=files_per_commit,
            bytes_per_commit=bytes_per_commit,
        )

    if dry_run:
        from huggingface_hub.utils import HfHubHTTPError

        try:
            remote = _read_remote(api, repo_id, revision)
        except (HfHubHTTPError, *_transport_errors()) as exc:
            plan = plan_for(None)
            plan.remote = "unknown"
            plan.note = scrub(
                f"could not read {repo_id} at {endpoint} ({_short(exc)}): every file is "
                "listed as new"
            )
            return PublishResult(repo_id, revision, url, plan, dry_run=True)
        plan = plan_for(remote.tree, remote.exists and not remote.branch_exists)
        plan.head = remote.head
        if not remote.exists:
            visibility = "private" if private else "public"
            plan.note = f"the repo does not exist; it would be created ({visibility})"
        return PublishResult(repo_id, revision, url, plan, dry_run=True)

    if not token:
        raise PublishRefused(
            "no Hugging Face token: set HF_TOKEN to a token with write access, or log in with "
            "`hf auth login`; nothing was uploaded"
        )
    from huggingface_hub.utils import HfHubHTTPError

    with _errors(endpoint, scrub, "checking the token"):
        try:
            user = api.whoami(token=token)
        except HfHubHTTPError as exc:
            if _status(exc) == 401:
                raise PublishRefused(
                    f"the Hub at {endpoint} rejected {source} (HTTP 401): set HF_TOKEN to a "
                    "valid token or log in again with `hf auth login`; nothing was uploaded"
                ) from None
            raise
    logger.info("publishing %s to %s as %s", out, url, user.get("name", "?"))

    with _errors(endpoint, scrub, "reading the repo"):
        remote = _read_remote(api, repo_id, revision)
    if remote.exists and private and remote.private is False:
        raise PublishRefused(
            f"{repo_id} exists and is public; --private only applies to a repo it creates. "
            "Make the repo private on the Hub first, or drop --private; nothing was uploaded"
        )
    new_branch = remote.exists and not remote.branch_exists
    plan = plan_for(remote.tree, new_branch)
    plan.head = remote.head
    if plan.conflicts and not (overwrite or new_branch):
        shown = ", ".join(plan.conflicts[:5]) + (" ..." if len(plan.conflicts) > 5 else "")
        raise PublishRefused(
            f"{repo_id}@{revision} already holds other content ({len(plan.conflicts)} file(s) "
            f"differ from {out} or are not in it: {shown}); pass --overwrite to replace it "
            "(files not in the folder are deleted), or choose another --repo-id or --revision; "
            "nothing was uploaded"
        )

    with _errors(endpoint, scrub, "creating the repo"):
        if not remote.exists:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            logger.info("created %s (%s)", url, "private" if private else "public")
        if revision != "main" and not remote.branch_exists:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
            logger.info("created branch %s", revision)
        if not remote.exists or new_branch:
            info = api.dataset_info(repo_id, revision=revision)
            plan.head = info.sha
            tree = _remote_tree(api, repo_id, info.sha)
            plan = plan_for(tree, new_branch)
            plan.head = info.sha

    result = PublishResult(repo_id, revision, url, plan)
    logger.info("%s", plan.summary())
    if not plan.commits:
        logger.info("%s@%s is up to date: nothing to upload", repo_id, revision)
        return result
    version = manifest.get("package_version", "?")
    message = commit_message or (
        f"Publish FluoroBench-C {version} ({', '.join(manifest['configs'])})"
    )
    description = (
        f"Uploaded by `fluorobench-c publish` from a package that passed `verify`.\n\n"
        f"manifest.json sha256: {sha256_file(out / 'manifest.json')}"
    )
    parent = plan.head
    n = len(plan.commits)
    for i, batch in enumerate(plan.commits, start=1):
        ops: list[Any] = [
            CommitOperationAdd(
                path_in_repo=f.path,
                path_or_fileobj=f.source if isinstance(f.source, bytes) else str(f.source),
            )
            for f in batch
        ]
        if i == n:
            ops += [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
        title = message if n == 1 else f"{message} ({i}/{n})"
        what = f"uploading commit {i} of {n} ({len(batch)} files, {megabytes(sum(f.size for f in batch))})"
        logger.info("%s", what)
        try:
            with _errors(endpoint, scrub, what):
                info = api.create_commit(
                    repo_id,
                    ops,
                    commit_message=title,
                    commit_description=description,
                    repo_type="dataset",
                    revision=revision,
                    parent_commit=parent,
                )
        except PublishRefused:
            raise
        except PublishError as exc:
            done = f"{i - 1} of {n} commits were made" if i > 1 else "no commit was made"
            raise PublishError(
                f"upload interrupted: {exc} ({done}). Re-run the same command to resume: "
                "files already on the Hub are not uploaded again"
            ) from None
        parent = info.oid
        result.commits.append(info.oid)

    with _errors(endpoint, scrub, "checking the upload"):
        final = _remote_tree(api, repo_id, parent or revision)
    after = plan_for(final)
    if after.upload or (after.extra and (overwrite or new_branch)):
        missing = [f.path for f in after.upload] + after.extra
        raise PublishError(
            f"{repo_id}@{revision} does not match {out} after the upload "
            f"({', '.join(missing[:5])}); re-run the same command"
        )
    logger.info("published %s@%s (%d commit(s))", repo_id, revision, len(result.commits))
    return result
