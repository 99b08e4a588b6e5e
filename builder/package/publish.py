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

Where: :mod:`builder.package.upload_plan` computes what to upload (no network);
:mod:`builder.package.hub` makes every Hub call and translates its failures into
:class:`PublishError` / :class:`PublishRefused` (token scrubbed); :func:`publish` runs the
steps above, a function each: ``_verified_manifest`` (1), ``_check_token`` (2),
``_plan_against_remote`` (the comparison of 4 and its refusals), ``_prepare_repo`` (3, then
the plan made again against the new head), ``_upload`` (5), ``_check_upload`` (6);
``_dry_run`` plans only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.package.hub import Hub, PublishError, PublishRefused, RemoteState
from builder.package.upload_plan import (
    DEFAULT_BYTES_PER_COMMIT,
    DEFAULT_FILES_PER_COMMIT,
    HUB_FILES,
    LAST_FILES,
    LocalFile,
    Plan,
    RemoteFile,
    check_repo_id,
    check_revision,
    make_plan,
    megabytes,
    package_files,
)
from synthesis.runtime.errors import InputError
from synthesis.runtime.files import sha256_file

__all__ = [
    "DEFAULT_BYTES_PER_COMMIT",
    "DEFAULT_FILES_PER_COMMIT",
    "HUB_FILES",
    "LAST_FILES",
    "LocalFile",
    "Plan",
    "PublishError",
    "PublishRefused",
    "PublishResult",
    "RemoteFile",
    "check_repo_id",
    "check_revision",
    "make_plan",
    "megabytes",
    "package_files",
    "publish",
]

logger = logging.getLogger(__name__)


@dataclass
class PublishResult:
    """What a publish did. ``commits``: the commit ids made, oldest first (none if up to date)."""

    repo_id: str
    revision: str
    url: str
    plan: Plan
    commits: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True)
class _Target:
    """One publish: the package's files, where they go and how the work is split."""

    out: Path
    repo_id: str
    revision: str
    files: list[LocalFile]
    overwrite: bool
    files_per_commit: int
    bytes_per_commit: int

    def plan(self, tree: dict[str, RemoteFile] | None, new_branch: bool = False) -> Plan:
        return make_plan(
            self.files,
            tree,
            repo_id=self.repo_id,
            revision=self.revision,
            overwrite=self.overwrite,
            new_branch=new_branch,
            files_per_commit=self.files_per_commit,
            bytes_per_commit=self.bytes_per_commit,
        )


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
    out, revision = _check_arguments(out, repo_id, revision, files_per_commit, bytes_per_commit)
    manifest = _verified_manifest(out, load_check)
    target = _Target(
        out,
        repo_id,
        revision,
        package_files(out, manifest, repo_id),
        overwrite,
        files_per_commit,
        bytes_per_commit,
    )
    hub = Hub(endpoint=endpoint, token=token)
    url = hub.dataset_url(repo_id)
    if dry_run:
        return _dry_run(hub, target, url, private)
    _check_token(hub, out, url)
    remote, plan = _plan_against_remote(hub, target, private)
    new_branch = remote.exists and not remote.branch_exists
    plan = _prepare_repo(hub, target, remote, plan, url, private)
    result = PublishResult(repo_id, revision, url, plan)
    logger.info("%s", plan.summary())
    if not plan.commits:
        logger.info("%s@%s is up to date: nothing to upload", repo_id, revision)
        return result
    result.commits = _upload(hub, target, plan, manifest, commit_message)
    _check_upload(hub, target, result.commits[-1], new_branch)
    logger.info("published %s@%s (%d commit(s))", repo_id, revision, len(result.commits))
    return result


# --------------------------------------------------------------------------- the steps
def _check_arguments(
    out: Path, repo_id: str, revision: str | None, files_per_commit: int, bytes_per_commit: int
) -> tuple[Path, str]:
    """``(out as a Path, the branch)`` once the arguments are checked.

    Raises:
        InputError: a malformed repo id, branch or commit size, or no folder ``out``.
    """
    check_repo_id(repo_id)
    revision = check_revision(revision or "main")
    if files_per_commit < 1 or bytes_per_commit < 1:
        raise InputError(
            f"files and bytes per commit must be >= 1. Got {files_per_commit}, {bytes_per_commit}"
        )
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no such folder")
    return out, revision


def _verified_manifest(out: Path, load_check: bool) -> dict[str, Any]:
    """The manifest of ``out`` once ``verify`` passes.

    Raises:
        PublishRefused: ``out`` fails verify (the first 20 problems listed).
    """
    from builder.package.manifest import BuildError, read_manifest
    from builder.package.verify import verify

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
    return manifest


def _dry_run(hub: Hub, target: _Target, url: str, private: bool) -> PublishResult:
    """The plan against the remote as it can be read (every file new if it cannot); nothing
    is changed and no token is needed."""
    remote, problem = hub.peek_remote(target.repo_id, target.revision)
    if remote is None:
        plan = target.plan(None)
        plan.remote = "unknown"
        plan.note = hub.scrub(
            f"could not read {target.repo_id} at {hub.endpoint} ({problem}): every file is "
            "listed as new"
        )
        return PublishResult(target.repo_id, target.revision, url, plan, dry_run=True)
    plan = target.plan(remote.tree, remote.exists and not remote.branch_exists)
    plan.head = remote.head
    if not remote.exists:
        visibility = "private" if private else "public"
        plan.note = f"the repo does not exist; it would be created ({visibility})"
    return PublishResult(target.repo_id, target.revision, url, plan, dry_run=True)


def _check_token(hub: Hub, out: Path, url: str) -> None:
    """Refuse without a token; check it with ``whoami``.

    Raises:
        PublishRefused: no token, or one the Hub rejects.
    """
    if not hub.token:
        raise PublishRefused(
            "no Hugging Face token: set HF_TOKEN to a token with write access, or log in with "
            "`hf auth login`; nothing was uploaded"
        )
    user = hub.whoami()
    logger.info("publishing %s to %s as %s", out, url, user)


def _plan_against_remote(hub: Hub, target: _Target, private: bool) -> tuple[RemoteState, Plan]:
    """Read the remote and plan against it.

    Raises:
        PublishRefused: ``private`` for an existing public repo, or a repo holding other
            content without ``overwrite`` (unless the branch is new).
    """
    repo_id, revision = target.repo_id, target.revision
    remote = hub.read_remote(repo_id, revision, what="reading the repo")
    if remote.exists and private and remote.private is False:
        raise PublishRefused(
            f"{repo_id} exists and is public; --private only applies to a repo it creates. "
            "Make the repo private on the Hub first, or drop --private; nothing was uploaded"
        )
    new_branch = remote.exists and not remote.branch_exists
    plan = target.plan(remote.tree, new_branch)
    plan.head = remote.head
    if plan.conflicts and not (target.overwrite or new_branch):
        shown = ", ".join(plan.conflicts[:5]) + (" ..." if len(plan.conflicts) > 5 else "")
        raise PublishRefused(
            f"{repo_id}@{revision} already holds other content ({len(plan.conflicts)} file(s) "
            f"differ from {target.out} or are not in it: {shown}); pass --overwrite to replace "
            "it (files not in the folder are deleted), or choose another --repo-id or "
            "--revision; nothing was uploaded"
        )
    return remote, plan


def _prepare_repo(
    hub: Hub, target: _Target, remote: RemoteState, plan: Plan, url: str, private: bool
) -> Plan:
    """Create the repo and the branch if needed; return the plan, made again against the
    new head when either was created."""
    repo_id, revision = target.repo_id, target.revision
    new_branch = remote.exists and not remote.branch_exists
    what = "creating the repo"
    if not remote.exists:
        hub.create_repo(repo_id, repo_type="dataset", private=private, what=what)
        logger.info("created %s (%s)", url, "private" if private else "public")
    if revision != "main" and not remote.branch_exists:
        hub.create_branch(repo_id, revision, what=what)
        logger.info("created branch %s", revision)
    if not remote.exists or new_branch:
        head = hub.head(repo_id, revision, what=what)
        plan = target.plan(hub.remote_tree(repo_id, head, what=what), new_branch)
        plan.head = head
    return plan


def _upload(
    hub: Hub,
    target: _Target,
    plan: Plan,
    manifest: dict[str, Any],
    commit_message: str | None,
) -> list[str]:
    """Make the plan's commits, each chained to the previous one; return their ids.

    Raises:
        PublishRefused: the Hub refuses access.
        PublishError: a commit failed ("upload interrupted", with how many were made).
    """
    version = manifest.get("package_version", "?")
    message = commit_message or (
        f"Publish FluoroBench-C {version} ({', '.join(manifest['configs'])})"
    )
    description = (
        f"Uploaded by `fluorobench-c publish` from a package that passed `verify`.\n\n"
        f"manifest.json sha256: {sha256_file(target.out / 'manifest.json')}"
    )
    commits: list[str] = []
    parent = plan.head
    n = len(plan.commits)
    for i, batch in enumerate(plan.commits, start=1):
        title = message if n == 1 else f"{message} ({i}/{n})"
        what = f"uploading commit {i} of {n} ({len(batch)} files, {megabytes(sum(f.size for f in batch))})"
        logger.info("%s", what)
        try:
            made = hub.commit(
                target.repo_id,
                [(f.path, f.source) for f in batch],
                delete=plan.delete if i == n else (),
                message=title,
                description=description,
                what=what,
                repo_type="dataset",
                revision=target.revision,
                parent=parent,
            )
        except PublishRefused:
            raise
        except PublishError as exc:
            done = f"{i - 1} of {n} commits were made" if i > 1 else "no commit was made"
            raise PublishError(
                f"upload interrupted: {exc} ({done}). Re-run the same command to resume: "
                "files already on the Hub are not uploaded again"
            ) from None
        parent = made.oid
        commits.append(made.oid)
    return commits


def _check_upload(hub: Hub, target: _Target, head: str, new_branch: bool) -> None:
    """List the remote tree at ``head`` again and compare it with the folder.

    Raises:
        PublishError: a file is missing or differs, or (when files are deleted) one is extra.
    """
    final = hub.remote_tree(target.repo_id, head, what="checking the upload")
    after = target.plan(final)
    if after.upload or (after.extra and (target.overwrite or new_branch)):
        missing = [f.path for f in after.upload] + after.extra
        raise PublishError(
            f"{target.repo_id}@{target.revision} does not match {target.out} after the upload "
            f"({', '.join(missing[:5])}); re-run the same command"
        )
