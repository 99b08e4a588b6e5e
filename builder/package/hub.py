"""The Hub transport of ``fluorobench-c publish``: every ``huggingface_hub`` call of the
dataset upload (:mod:`builder.package.publish`) and of the model uploads
(:mod:`builder.package.model_repos`), and the translation of their failures.

:class:`Hub` holds the endpoint, the token (the one given, else ``HF_TOKEN`` or the logged-in
user's) and one ``HfApi`` client. Each call that talks to the Hub takes ``what`` (what it is
doing, for the message) and turns a failure into one line:

- the Hub cannot be reached (connection refused, timeout): :class:`PublishError` (exit
  code 1; re-running the same command resumes);
- HTTP 401 or 403: :class:`PublishRefused` (exit code 2; the token needs write access);
- any other HTTP error: :class:`PublishError`.

The token is replaced by ``***`` in every message this module builds, and it is never logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.package.upload_plan import RemoteFile
from synthesis.runtime.errors import JobFailed, RefusedError


class PublishError(JobFailed):
    """The upload failed part-way; the message says why. Re-running resumes (exit code 1)."""


class PublishRefused(PublishError, RefusedError):
    """Refused before anything was changed; the message says why and what to do (exit
    code 2)."""

    exit_code = 2


def transport_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a Hub that cannot be reached, whichever HTTP library the client uses."""
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


def short(exc: BaseException) -> str:
    """``Type: first line of the message`` (not scrubbed: pass it through :class:`Scrubbed`)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Scrubbed:
    """Replaces the token in any text that leaves this module (it is never printed)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text


@dataclass(frozen=True)
class RemoteState:
    """A dataset repo as read before publishing. ``exists`` False: no repo (``head`` and
    ``tree`` None). ``branch_exists`` False: ``head`` and ``tree`` are ``main``'s, where the
    new branch starts."""

    exists: bool
    branch_exists: bool
    head: str | None
    private: bool | None
    tree: dict[str, RemoteFile] | None


@dataclass(frozen=True)
class CommitMade:
    """A commit :meth:`Hub.commit` made: its id and its page on the Hub."""

    oid: str
    url: str


class Hub:
    """One Hub endpoint and token; every call that talks to it (see the module docstring).

    Making one reads the token (``token``, else ``HF_TOKEN`` or the logged-in user's) and
    sends nothing.
    """

    def __init__(self, *, endpoint: str | None = None, token: str | None = None) -> None:
        from huggingface_hub import HfApi, constants, get_token

        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token or get_token()
        if token:
            self.token_source = "the token passed in"
        elif self.token and os.environ.get("HF_TOKEN") == self.token:
            self.token_source = "HF_TOKEN"
        else:
            self.token_source = "the logged-in user's token"
        self.scrub = Scrubbed(self.token)
        self._api = HfApi(endpoint=self.endpoint, token=self.token)

    def dataset_url(self, repo_id: str) -> str:
        """The dataset repo's page, ``ENDPOINT/datasets/ORG/NAME``."""
        return f"{self.endpoint}/datasets/{repo_id}"

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn transport and HTTP errors raised inside into one clear line (token scrubbed)."""
        from huggingface_hub.utils import HfHubHTTPError

        try:
            yield
        except PublishError:
            raise
        except transport_errors() as exc:
            raise PublishError(
                self.scrub(
                    f"cannot reach the Hub at {self.endpoint} while {what} ({short(exc)}); "
                    "check the network connection (and HF_ENDPOINT), then re-run the same "
                    "command: files already uploaded are not sent again"
                )
            ) from None
        except HfHubHTTPError as exc:
            status = _status(exc)
            if status in (401, 403):
                raise PublishRefused(
                    self.scrub(
                        f"the Hub at {self.endpoint} refused access while {what} (HTTP "
                        f"{status}): the token needs write access to this namespace"
                    )
                ) from None
            raise PublishError(self.scrub(f"the Hub failed while {what}: {short(exc)}")) from None

    # ------------------------------------------------------------------ reads
    def whoami(self) -> str:
        """The name of the token's user.

        Raises:
            PublishRefused: the Hub rejects the token (HTTP 401), or refuses access (403).
            PublishError: the Hub cannot be reached or fails.
        """
        from huggingface_hub.utils import HfHubHTTPError

        with self.errors("checking the token"):
            try:
                user = self._api.whoami(token=self.token)
            except HfHubHTTPError as exc:
                if _status(exc) == 401:
                    raise PublishRefused(
                        self.scrub(
                            f"the Hub at {self.endpoint} rejected {self.token_source} (HTTP "
                            "401): set HF_TOKEN to a valid token or log in again with `hf auth "
                            "login`; nothing was uploaded"
                        )
                    ) from None
                raise
        return user.get("name", "?")

    def read_remote(self, repo_id: str, revision: str, *, what: str) -> RemoteState:
        """The dataset repo ``repo_id`` at branch ``revision`` (see :class:`RemoteState`)."""
        with self.errors(what):
            return self._read_remote(repo_id, revision)

    def peek_remote(self, repo_id: str, revision: str) -> tuple[RemoteState | None, str]:
        """:meth:`read_remote` for a dry run: ``(state, "")``, or ``(None, why)`` (one line,
        token scrubbed) when the Hub cannot be reached or answers an HTTP error."""
        from huggingface_hub.utils import HfHubHTTPError

        try:
            return self._read_remote(repo_id, revision), ""
        except (HfHubHTTPError, *transport_errors()) as exc:
            return None, self.scrub(short(exc))

    def head(self, repo_id: str, revision: str, *, what: str) -> str:
        """The commit id at the head of branch ``revision`` of the dataset repo ``repo_id``."""
        with self.errors(what):
            return self._api.dataset_info(repo_id, revision=revision).sha

    def remote_tree(self, repo_id: str, revision: str, *, what: str) -> dict[str, RemoteFile]:
        """Path -> :class:`RemoteFile`: every file of the dataset repo at ``revision``."""
        with self.errors(what):
            return self._tree(repo_id, revision)

    def _tree(self, repo_id: str, revision: str) -> dict[str, RemoteFile]:
        out = {}
        for e in self._api.list_repo_tree(
            repo_id, repo_type="dataset", revision=revision, recursive=True
        ):
            if getattr(e, "size", None) is None:  # a folder
                continue
            lfs = e.lfs.sha256 if e.lfs is not None else None
            out[e.path] = RemoteFile(e.path, e.size, e.blob_id, lfs)
        return out

    def _read_remote(self, repo_id: str, revision: str) -> RemoteState:
        from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

        api = self._api
        try:
            info = api.dataset_info(repo_id, revision=revision)
        except RevisionNotFoundError:
            info = api.dataset_info(repo_id)  # the new branch starts from main
            return RemoteState(True, False, info.sha, info.private, self._tree(repo_id, info.sha))
        except RepositoryNotFoundError:
            return RemoteState(False, False, None, None, None)
        return RemoteState(True, True, info.sha, info.private, self._tree(repo_id, info.sha))

    # ------------------------------------------------------------------ writes
    def create_repo(self, repo_id: str, *, repo_type: str, private: bool, what: str) -> None:
        """Create the repo (``private`` applies then); an existing one is left as it is."""
        with self.errors(what):
            self._api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)

    def create_branch(self, repo_id: str, branch: str, *, what: str) -> None:
        """Create ``branch`` of the dataset repo from ``main``; an existing one is kept."""
        with self.errors(what):
            self._api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)

    def commit(
        self,
        repo_id: str,
        files: Iterable[tuple[str, bytes | Path]],
        *,
        message: str,
        what: str,
        repo_type: str,
        delete: Sequence[str] = (),
        description: str | None = None,
        revision: str | None = None,
        parent: str | None = None,
    ) -> CommitMade:
        """One atomic commit: add ``files`` (path in the repo, bytes or a local file), delete
        the paths ``delete``. ``parent``: the head it must follow (the Hub refuses the commit
        otherwise)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops: list[Any] = [
            CommitOperationAdd(
                path_in_repo=path,
                path_or_fileobj=content if isinstance(content, bytes) else str(content),
            )
            for path, content in files
        ]
        ops += [CommitOperationDelete(path_in_repo=p) for p in delete]
        with self.errors(what):
            info = self._api.create_commit(
                repo_id,
                ops,
                commit_message=message,
                commit_description=description,
                repo_type=repo_type,
                revision=revision,
                parent_commit=parent,
            )
        return CommitMade(info.oid, info.commit_url)
