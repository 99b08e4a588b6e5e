"""A Hub-compatible HTTP server on loopback, for testing uploads and downloads offline.

Why not ``hf-local-hub``: its PyPI wheel (3.0.0) is a Python client only; the server is a Go
binary that the wheel does not ship, and nothing may be downloaded here. So this module serves
the endpoints that ``huggingface_hub`` 2.x (with ``HF_HUB_DISABLE_XET=1``) and ``datasets``
(``HfFileSystem``) use, with the JSON shapes read from their sources:

==========================================================  =================================
endpoint                                                    used by
==========================================================  =================================
``POST /api/repos/create``                                  ``HfApi.create_repo``
``GET  /api/whoami-v2``                                     ``HfApi.whoami``
``POST /api/validate-yaml``                                 ``create_commit`` (README.md)
``GET  /api/{type}s/{repo}[/revision/{rev}]``               ``repo_info`` / ``dataset_info``
``POST /api/{type}s/{repo}/preupload/{rev}``                upload mode (regular or LFS)
``POST /{prefix}{repo}.git/info/lfs/objects/batch``         LFS batch API (basic transfer)
``PUT  /_lfs/{type}/{repo}/{oid}`` (+ ``/verify``)           LFS object upload
``POST /api/{type}s/{repo}/commit/{rev}``                   NDJSON commit
``POST /api/{type}s/{repo}/branch/{branch}``                ``create_branch``
``GET  /api/{type}s/{repo}/refs``                           ``list_repo_refs``
``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``            ``list_repo_tree``, ``HfFileSystem``
``POST /api/{type}s/{repo}/paths-info/{rev}``               ``get_paths_info``, ``HfFileSystem``
``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}`` (Range)   ``hf_hub_download``, file reads
==========================================================  =================================

Git is modelled, not run: a commit is a dict path -> blob; blob ids are real git blob sha1s
(of the LFS pointer for LFS files), so the client's change detection works as on the Hub.
The server binds 127.0.0.1 only, serves from daemon threads and stops with :meth:`stop`.
Every request is logged (``state.requests``) and faults can be injected per route
(:meth:`HubState.add_fault`): an HTTP error status, or a request that hangs until released
and then drops the connection (an interrupted upload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger(__name__)

#: Files committed as LFS whatever their content (the Hub's default .gitattributes patterns).
LFS_SUFFIXES = (".parquet", ".safetensors", ".png", ".bin", ".arrow", ".pt", ".zip", ".tif")
GITATTRIBUTES = b"".join(
    f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES
)
#: Regular (git) files above this size are refused by the Hub and go to LFS.
REGULAR_MAX_BYTES = 10 * 1024 * 1024
#: Longest a hanging fault waits to be released (bounded: the server must stop by itself).
HOLD_TIMEOUT_S = 60.0
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Blob:
    size: int
    data: bytes | None = None  # regular file
    lfs_oid: str | None = None  # sha256 of an LFS object

    @property
    def oid(self) -> str:
        if self.lfs_oid is not None:
            return git_blob_oid(lfs_pointer(self.lfs_oid, self.size))
        assert self.data is not None
        return git_blob_oid(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)

    def commit(self, branch: str, files: dict[str, Blob], title: str) -> Commit:
        parent = self.branches.get(branch)
        tree = json.dumps({p: b.oid for p, b in sorted(files.items())})
        oid = hashlib.sha1(f"{parent}\n{title}\n{tree}\n{time.time_ns()}".encode()).hexdigest()
        c = Commit(oid, parent, title, _now(), dict(files))
        self.commits[oid] = c
        self.branches[branch] = oid
        return c


@dataclass
class Fault:
    """Make request number ``after + 1`` (and the ``times - 1`` after it) to ``route`` fail.

    ``status``: answer with that HTTP status; ``status=None``: hang until :attr:`release` is
    set (or :data:`HOLD_TIMEOUT_S`), then drop the connection. :attr:`reached` is set when the
    fault fires. ``message``: the error message answered (default ``injected fault on
    ROUTE``); ``{token}`` in it becomes the request's bearer token, as a server that echoes
    credentials would answer.
    """

    route: str
    after: int = 0
    times: int = 1
    status: int | None = 500
    message: str | None = None
    seen: int = 0
    fired: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class HubState:
    """Everything the server knows: tokens, repos, the request log and the faults."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)  # token -> user name
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, route, path)
        self.faults: list[Fault] = []
        self.ranges = 0  # partial (Range) file reads served
        self.lock = threading.RLock()

    def add_fault(self, route: str, **kwargs: Any) -> Fault:
        fault = Fault(route, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def seed(
        self, repo_id: str, files: dict[str, bytes], *, private: bool = False, branch: str = "main"
    ) -> None:
        """Create ``repo_id`` (a dataset) holding ``files``, as if someone else had pushed them."""
        with self.lock:
            repo = self.repos.get(("dataset", repo_id))
            if repo is None:
                repo = self.repos[("dataset", repo_id)] = Repo("dataset", repo_id, private)
                ga = {".gitattributes": Blob(len(GITATTRIBUTES), GITATTRIBUTES)}
                repo.commit("main", ga, "initial commit")
            head = repo.resolve(branch) or repo.resolve("main")
            blobs = dict(head.files) if head else {}
            for path, data in files.items():
                if path.endswith(LFS_SUFFIXES):
                    oid = hashlib.sha256(data).hexdigest()
                    repo.lfs[oid] = data
                    blobs[path] = Blob(len(data), lfs_oid=oid)
                else:
                    blobs[path] = Blob(len(data), data=data)
            repo.commit(branch, blobs, "someone else's commit")

    def count(self, route: str) -> int:
        with self.lock:
            return sum(1 for _, r, _ in self.requests if r == route)

    def files(
        self, repo_id: str, rev: str = "main", repo_type: str = "dataset"
    ) -> dict[str, bytes]:
        """Path -> content of a revision (LFS objects resolved)."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            commit = repo.resolve(rev)
            assert commit is not None, rev
            return {
                p: b.data if b.data is not None else repo.lfs[b.lfs_oid]  # type: ignore[index]
                for p, b in commit.files.items()
            }

    def history(self, repo_id: str, rev: str = "main", repo_type: str = "dataset") -> list[str]:
        """Commit titles, newest first."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            out, c = [], repo.resolve(rev)
            while c is not None:
                out.append(c.title)
                c = repo.commits.get(c.parent) if c.parent else None
            return out


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Drop(Exception):
    """Close the connection without an answer."""


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_TYPE = r"(?P<type>model|dataset|space)s"
_ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    (m, name, re.compile(p))
    for m, name, p in [
        ("POST", "create", r"^/api/repos/create$"),
        ("GET", "whoami", r"^/api/whoami-v2$"),
        ("POST", "validate_yaml", r"^/api/validate-yaml$"),
        ("POST", "preupload", rf"^/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)$"),
        ("POST", "commit", rf"^/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)$"),
        ("POST", "branch", rf"^/api/{_TYPE}/{_REPO}/branch/(?P<rev>[^/]+)$"),
        ("GET", "refs", rf"^/api/{_TYPE}/{_REPO}/refs$"),
        ("GET", "tree", rf"^/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
        ("POST", "paths_info", rf"^/api/{_TYPE}/{_REPO}/paths-info/(?P<rev>[^/]+)$"),
        ("GET", "info", rf"^/api/{_TYPE}/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"),
        (
            "POST",
            "lfs_batch",
            rf"^/(?P<prefix>datasets/|spaces/)?{_REPO}\.git/info/lfs/objects/batch$",
        ),
        (
            "PUT",
            "lfs_put",
            rf"^/_lfs/(?P<type>model|dataset|space)/{_REPO}/(?P<oid>[0-9a-f]{{64}})$",
        ),
        (
            "POST",
            "lfs_verify",
            r"^/_lfs/(?P<type>model|dataset|space)/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})/verify$",
        ),
        (
            "GET",
            "resolve",
            rf"^/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
        ),
        (
            "HEAD",
            "resolve",
            rf"^/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
        ),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    server: _Server

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("hub %s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise _HTTPError(400, f"invalid JSON body: {exc}") from None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        state = self.server.state
        route, match = "unknown", None
        for m, name, pattern in _ROUTES:
            if m == method and (match := pattern.match(url.path)):
                route = name
                break
        with state.lock:
            state.requests.append((method, route, url.path))
        body = b"" if method in ("GET", "HEAD") else self._body()
        try:
            self._fault(route)
            if match is None:
                raise _HTTPError(404, f"no route for {method} {url.path}")
            params = {
                k: unquote(v) if v is not None else None for k, v in match.groupdict().items()
            }
            getattr(self, f"_r_{route}")(params, parse_qs(url.query), body)
        except _Drop:
            self.close_connection = True
        except _HTTPError as exc:
            headers = {"X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self._send_json({"error": exc.message}, exc.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _fault(self, route: str) -> None:
        state = self.server.state
        with state.lock:
            todo = None
            for f in state.faults:
                if f.route != route:
                    continue
                f.seen += 1
                if f.seen > f.after and f.fired < f.times:
                    f.fired += 1
                    todo = f
                    break
        if todo is None:
            return
        todo.reached.set()
        if todo.status is None:
            todo.release.wait(HOLD_TIMEOUT_S)
            raise _Drop
        if todo.message is None:
            raise _HTTPError(todo.status, f"injected fault on {route}")
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        raise _HTTPError(todo.status, todo.message.replace("{token}", token))

    # ------------------------------------------------------------------ helpers
    def _user(self, required: bool) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if token is None:
            if required:
                raise _HTTPError(401, "You must be authenticated to do this.")
            return None
        user = self.server.state.tokens.get(token)
        if user is None:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, params: dict[str, str | None], *, write: bool = False) -> Repo:
        repo_type = params.get("type") or {"datasets/": "dataset", "spaces/": "space"}.get(
            params.get("prefix") or "", "model"
        )
        user = self._user(required=write)
        repo = self.server.state.repos.get((repo_type, str(params["repo"])))
        if repo is None or (repo.private and user is None):
            raise _HTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str | None) -> Commit:
        commit = repo.resolve(rev or "main")
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        blob = commit.files[path]
        entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
        if blob.lfs_oid is not None:
            pointer = lfs_pointer(blob.lfs_oid, blob.size)
            entry["lfs"] = {"oid": blob.lfs_oid, "size": blob.size, "pointerSize": len(pointer)}
        if expand:
            entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return entry

    def _folder(self, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        oid = hashlib.sha1(f"{commit.oid}/{path}".encode()).hexdigest()
        entry: dict[str, Any] = {"type": "directory", "oid": oid, "path": path}
        if expand:
            entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return entry

    @staticmethod
    def _dirs(commit: Commit) -> set[str]:
        dirs = set()
        for p in commit.files:
            parts = p.split("/")[:-1]
            dirs |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        return dirs

    # ------------------------------------------------------------------ routes
    def _r_whoami(self, params: dict, query: dict, body: bytes) -> None:
        user = self._user(required=True)
        self._send_json(
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "t", "role": "write"},
                },
            }
        )

    def _r_validate_yaml(self, params: dict, query: dict, body: bytes) -> None:
        import yaml

        content = self._json(body).get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
        try:
            if m:
                yaml.safe_load(m.group(1))
        except yaml.YAMLError as exc:
            self._send_json({"errors": [{"message": str(exc)}]}, 400)
            return
        self._send_json({"errors": [], "warnings": []})

    def _r_create(self, params: dict, query: dict, body: bytes) -> None:
        user = self._user(required=True)
        payload = self._json(body)
        name, org = payload.get("name"), payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        repo_id = f"{org}/{name}"
        state = self.server.state
        url = f"{self._base()}/{PREFIX[repo_type]}{repo_id}"
        with state.lock:
            if (repo_type, repo_id) in state.repos:  # the Hub answers the url with the 409
                msg = "You already created this dataset repo"
                self._send_json({"error": msg, "url": url}, 409, {"X-Error-Message": msg})
                return
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = Repo(repo_type, repo_id, private)
            repo.commit(
                "main",
                {".gitattributes": Blob(len(GITATTRIBUTES), GITATTRIBUTES)},
                "initial commit",
            )
            state.repos[(repo_type, repo_id)] = repo
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _r_info(self, params: dict, query: dict, body: bytes) -> None:
        state = self.server.state
        with state.lock:
            repo = self._repo(params)
            commit = self._commit(repo, params.get("rev"))
            blobs = "blobs" in query and query["blobs"][0].lower() in ("1", "true")
            siblings = []
            for p in sorted(commit.files):
                sib: dict[str, Any] = {"rfilename": p}
                if blobs:
                    e = self._entry(repo, commit, p, False)
                    sib.update(size=e["size"], blobId=e["oid"])
                    if "lfs" in e:
                        sib["lfs"] = {
                            "sha256": e["lfs"]["oid"],
                            "size": e["size"],
                            "pointerSize": e["lfs"]["pointerSize"],
                        }
                siblings.append(sib)
            first = min(repo.commits.values(), key=lambda c: c.date).date
        self._send_json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": first,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _r_refs(self, params: dict, query: dict, body: bytes) -> None:
        with self.server.state.lock:
            repo = self._repo(params)
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                for b, oid in sorted(repo.branches.items())
            ]
        self._send_json({"branches": branches, "converts": [], "tags": []})

    def _r_branch(self, params: dict, query: dict, body: bytes) -> None:
        payload = self._json(body)
        with self.server.state.lock:
            repo = self._repo(params, write=True)
            branch = str(params["rev"])
            if branch in repo.branches:
                raise _HTTPError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._commit(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        self._send_json({})

    def _r_preupload(self, params: dict, query: dict, body: bytes) -> None:
        payload = self._json(body)
        with self.server.state.lock:
            repo = self._repo(params, write=True)
            commit = self._commit(repo, params["rev"])
            files = []
            for f in payload.get("files", []):
                sample = base64.b64decode(f.get("sample", ""))
                path, size = f["path"], int(f["size"])
                lfs = path.endswith(LFS_SUFFIXES) or size > REGULAR_MAX_BYTES or b"\0" in sample
                info: dict[str, Any] = {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                }
                old = commit.files.get(path)
                if old is not None:  # the client skips files whose oid it computes the same
                    info["oid"] = old.lfs_oid if old.lfs_oid is not None else old.oid
                files.append(info)
        self._send_json({"files": files, "commitOid": commit.oid})

    def _r_lfs_batch(self, params: dict, query: dict, body: bytes) -> None:
        payload = self._json(body)
        if payload.get("operation") != "upload":
            raise _HTTPError(400, f"only upload is served. Got {payload.get('operation')!r}")
        with self.server.state.lock:
            repo = self._repo(params, write=True)
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs:  # objects already stored get no action: not re-sent
                    href = f"{self._base()}/_lfs/{repo.repo_type}/{quote(repo.repo_id)}/{oid}"
                    out["actions"] = {
                        "upload": {"href": href},
                        "verify": {"href": f"{href}/verify"},
                    }
                objects.append(out)
        self._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _r_lfs_put(self, params: dict, query: dict, body: bytes) -> None:
        oid = str(params["oid"])
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HTTPError(400, "uploaded content does not match its sha256")
        with self.server.state.lock:  # a presigned URL: no token, private repos too
            repo = self.server.state.repos.get((str(params["type"]), str(params["repo"])))
            if repo is None:
                raise _HTTPError(404, "Repository not found", "RepoNotFound")
            repo.lfs[oid] = body
        self._send(200, b"", content_type="text/plain")

    def _r_lfs_verify(self, params: dict, query: dict, body: bytes) -> None:
        payload = self._json(body)
        with self.server.state.lock:
            repo = self._repo(params, write=True)
            data = repo.lfs.get(str(params["oid"]))
        if data is None or len(data) != int(payload.get("size", -1)):
            raise _HTTPError(404, "object not found or wrong size")
        self._send_json({})

    def _r_commit(self, params: dict, query: dict, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HTTPError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        branch = str(params["rev"])
        with self.server.state.lock:
            repo = self._repo(params, write=True)
            if branch not in repo.branches:
                raise _HTTPError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = self._commit(repo, branch)
            parent = header.get("parentCommit")
            if parent and parent != head.oid:
                raise _HTTPError(412, f"parent commit {parent} is not the head of {branch}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    files[path] = Blob(len(data), data=data)
                elif key == "lfsFile":
                    oid = value["oid"]
                    if oid not in repo.lfs:
                        raise _HTTPError(422, f"LFS object {oid} of {path} was not uploaded")
                    files[path] = Blob(len(repo.lfs[oid]), lfs_oid=oid)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise _HTTPError(
                            404, "A file with this name doesn't exist", "EntryNotFound"
                        )
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                else:
                    raise _HTTPError(400, f"unknown commit operation {key!r}")
            commit = repo.commit(branch, files, header.get("summary", ""))
        url = f"{self._base()}/{PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        self._send_json(
            {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}
        )

    def _r_tree(self, params: dict, query: dict, body: bytes) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        path = (params.get("path") or "").strip("/")
        with self.server.state.lock:
            repo = self._repo(params)
            commit = self._commit(repo, params["rev"])
            dirs = self._dirs(commit)
            if path and path not in dirs:
                raise _HTTPError(404, f"{path} is not a folder of {repo.repo_id}", "EntryNotFound")
            prefix = f"{path}/" if path else ""
            out = []
            for d in sorted(dirs):
                rest = d[len(prefix) :] if d.startswith(prefix) else None
                if rest and (recursive or "/" not in rest):
                    out.append(self._folder(commit, d, expand))
            for p in sorted(commit.files):
                rest = p[len(prefix) :] if p.startswith(prefix) else None
                if rest and (recursive or "/" not in rest):
                    out.append(self._entry(repo, commit, p, expand))
        self._send_json(out)

    def _r_paths_info(self, params: dict, query: dict, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            payload = self._json(body)
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths = form.get("paths", [])
            expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
        with self.server.state.lock:
            repo = self._repo(params)
            commit = self._commit(repo, params["rev"])
            dirs = self._dirs(commit)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in commit.files:
                    out.append(self._entry(repo, commit, p, expand))
                elif p in dirs:
                    out.append(self._folder(commit, p, expand))
        self._send_json(out)

    def _r_resolve(self, params: dict, query: dict, body: bytes) -> None:
        path = str(params["path"])
        with self.server.state.lock:
            repo = self._repo(params)
            commit = self._commit(repo, params["rev"])
            blob = commit.files.get(path)
            if blob is None:
                raise _HTTPError(404, f"Entry not found: {path}", "EntryNotFound")
            data = blob.data if blob.data is not None else repo.lfs[blob.lfs_oid]  # type: ignore[index]
        etag = f'"{blob.lfs_oid or blob.oid}"'
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": etag,
            "Accept-Ranges": "bytes",
        }
        if blob.lfs_oid is not None:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(blob.size)})
        status, content = 200, data
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise _HTTPError(416, f"bad Range header {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            else:
                start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise _HTTPError(416, f"range {rng} outside 0-{len(data) - 1}")
            status, content = 206, data[start : end + 1]
            with self.server.state.lock:
                self.server.state.ranges += 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, content, headers, content_type="application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class LoopbackHub:
    """A running server: ``endpoint`` is ``http://127.0.0.1:PORT``; ``stop()`` ends it.

    Use as a context manager, or call :meth:`stop` in a fixture finalizer.
    """

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.state = HubState(tokens or {})
        self._server = _Server(self.state)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self.state.lock:
            for f in self.state.faults:
                f.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> LoopbackHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hub_env(endpoint: str, home: str | os.PathLike[str], token: str | None) -> dict[str, str]:
    """Environment for a subprocess that talks to ``endpoint`` only.

    ``huggingface_hub`` and ``datasets`` read these at import time, hence a subprocess. Xet is
    disabled (the loopback hub serves plain LFS); telemetry, update checks and download
    counting (a request to a third-party host) are off; caches and stored tokens live in
    ``home``.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_UPDATE_DOWNLOAD_COUNTS="0",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(home),
        HF_HUB_ETAG_TIMEOUT="10",
        HF_HUB_DOWNLOAD_TIMEOUT="30",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


# --------------------------------------------------------------------------- client side
def _digest(value: Any) -> str:
    """sha256 of a decoded image (dtype, shape and pixels) or of raw bytes."""
    import numpy as np

    if isinstance(value, dict) and value.get("bytes") is not None:
        return "bytes:" + hashlib.sha256(value["bytes"]).hexdigest()
    a = np.asarray(value)
    return f"{a.dtype}{a.shape}:" + hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def row_digest(row: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able summary of a row that changes if any value of the row changes."""
    out: dict[str, Any] = {}
    for k, v in sorted(row.items()):
        if k in ("image", "preview", "mask", "instances"):
            out[k] = None if v is None else _digest(v)
        else:
            out[k] = json.loads(json.dumps(v, sort_keys=True, default=str))
    return out


def _load_main(argv: list[str] | None = None) -> None:
    """``python -m tests.hub_server load REPO OUT.json --cache DIR --config C --split S ...``.

    Run in a subprocess whose environment comes from :func:`hub_env`: loads each split
    streaming (decoded images) and each config non-streaming into a fresh ``--cache`` (raw
    image bytes), and writes their row digests to ``OUT.json``.
    """
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["load"])
    p.add_argument("repo")
    p.add_argument("result")
    p.add_argument("--cache", required=True)
    p.add_argument("--revision", default=None)
    p.add_argument("--stream", nargs="+", default=[], metavar="CONFIG/SPLIT")
    p.add_argument("--full", nargs="+", default=[], metavar="CONFIG")
    args = p.parse_args(argv)

    import datasets
    from datasets import Image

    # The Parquet-export lookup asks a datasets-server host derived from HF_ENDPOINT: not a
    # loopback address. The package's YAML has everything, so the lookup is not needed.
    datasets.config.USE_PARQUET_EXPORT = False
    result: dict[str, Any] = {"stream": {}, "full": {}}
    for item in args.stream:
        config, split = item.split("/")
        ds = datasets.load_dataset(
            args.repo, config, split=split, streaming=True, revision=args.revision
        )
        result["stream"][item] = [row_digest(r) for r in ds]
    for config in args.full:
        dd = datasets.load_dataset(args.repo, config, cache_dir=args.cache, revision=args.revision)
        result["full"][config] = {}
        for split, ds in dd.items():
            for col in ("image", "preview", "mask", "instances"):
                if col in ds.features:
                    ds = ds.cast_column(col, Image(decode=False))
            result["full"][config][split] = [row_digest(r) for r in ds]
    with open(args.result, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _load_main()
