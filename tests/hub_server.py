"""A loopback, in-memory, Hugging Face Hub-compatible HTTP server for the test suite.

Why: the real Hub is unreachable from CI, and huggingface_hub 2.x talks HTTP through `httpx2`, which
respx / responses cannot intercept. So the tests run the REAL huggingface_hub / datasets / transformers
clients against this server (``HF_ENDPOINT=http://127.0.0.1:<port>``, ``HF_HUB_DISABLE_XET=1``).

What it speaks (the endpoints the clients call; ``{prefix}`` is "" for models, "datasets/" or "spaces/"):

* ``GET  /api/whoami-v2``                                  -> user info (needs ``Authorization: Bearer <any>``)
* ``POST /api/repos/create``                               -> model / dataset / space (space needs ``sdk``); 409 if it
  exists
* ``POST /api/validate-yaml``                              -> always valid (no warnings, no errors)
* ``POST /api/{type}s/{id}/preupload/{rev}``               -> per file ``uploadMode`` ("lfs" when the path matches the
  repo's ``.gitattributes`` LFS patterns, the sample holds a NUL byte, or the file is > 10 MiB; so parquet and
  safetensors are always "lfs"), ``shouldIgnore`` false, ``oid`` of the file already at that path (sha256 for
  LFS files, git blob sha1 otherwise) so the clients skip unchanged files
* ``POST /{prefix}{id}.git/info/lfs/objects/batch``        -> "basic" transfer: ``upload`` + ``verify`` actions, no
  actions for objects the server already has
* ``PUT  /__lfs__/upload/{sha256}`` / ``POST /__lfs__/verify`` -> stores the object, checks its sha256 and size
  (Content-Length or chunked bodies)
* ``POST /api/{type}s/{id}/commit/{rev}``                  -> NDJSON: header (``parentCommit`` checked), ``file``
  (base64), ``lfsFile`` (object must have been uploaded), ``deletedFile``, ``deletedFolder``; each commit gets a new
  sha and the history is kept per repo, so re-pushing and pinned revisions work
* ``GET  /api/{type}s/{id}`` and ``.../revision/{rev}``    -> repo info: id, sha, private, siblings (with size, blobId
  and lfs), cardData (README YAML), sdk for spaces
* ``GET  /api/{type}s/{id}/tree/{rev}[/{path}]``           -> files and folders (``recursive=true`` honoured);
  a missing folder is 404 with ``X-Error-Code: EntryNotFound``
* ``POST /api/{type}s/{id}/paths-info/{rev}``              -> info for the paths that exist (form or JSON body)
* ``HEAD|GET /{prefix}{id}/resolve/{rev}/{path}``          -> regular files: 200 with ``ETag`` (git blob sha1),
  ``X-Repo-Commit``, ``Content-Length``; LFS files: 302 to a "CDN" URL on another origin
  (``http://localhost:<port>/__lfs__/objects/...``, a different host than 127.0.0.1 so the clients treat it as
  off-Hub, exactly like the real CDN) with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``.
  ``Range`` requests get 206. Missing repo / revision / file -> 404 with ``X-Error-Code`` RepoNotFound /
  RevisionNotFound / EntryNotFound.
* ``GET  /api/{type}s/{id}/commits/{rev}``                 -> the commit history (newest first)
* ``POST /api/{type}s/{id}/branch/{branch}``               -> a branch from ``startingPoint`` (default: main); 409 if
  it exists. Commits, preuploads, downloads and repo info take a branch name (or ``refs/heads/<name>``) as revision.
* Pull requests: a commit with ``?create_pr=1`` goes onto a new ``refs/pr/N`` (N = 1, 2, ...) whose parent is the
  given revision, leaves that revision unchanged, and answers ``pullRequestUrl`` ``.../{prefix}{id}/discussions/N``;
  ``refs/pr/N`` then works as a revision everywhere. ``branch(...)`` and ``pull_request(...)`` are test helpers.
* ``DELETE /api/repos/delete``                             -> deletes a repo (404 RepoNotFound if absent)

Test helpers: ``files(repo_id, repo_type, revision)`` -> {path: bytes}; ``commit_count(...)``; ``repo(...)``
(``.private``, ``.sdk``, ``.commits``, ``.files_lfs()``); ``create_repo(...)`` without HTTP; ``requests`` (a log of
(method, path, status)); ``unhandled`` (requests no route matched: a client calling an endpoint this server
lacks shows up there); ``rejected_tokens`` (tokens answered 401); ``reset()``.

Failure injection (for resume / error-message tests): ``server.inject_failure("commit", mode="500", times=1)``
makes the next matching request answer HTTP 500; ``mode="drop"`` closes the socket without any response;
``mode="drop_after_commit"`` applies the commit and then drops the connection (a lost response). Faults can be
limited to one repo (``repo_id=``) and are consumed one per matching request; ``mode`` may also be any other
HTTP status ("503", "429"...). Route names: "commit", "preupload", "lfs_batch", "lfs_upload", "create_repo",
"whoami", "resolve", "tree", "info", "paths_info", or "any". ``Fault.triggered`` counts the hits.
Note that the clients retry preupload / LFS calls (5xx and dropped connections) with 1 s, 2 s, 4 s... backoff,
but not the commit POST, so commit faults are the fast, deterministic ones.

What it does NOT check, compared with the real Hub (tests against it prove the client-side protocol only; the
opt-in ``tests/test_hub_live.py`` covers the real server):

* auth: any non-empty Bearer token is a valid write token for the single user ``username`` (default "tester")
  and its ``orgs``, except tokens listed in ``rejected_tokens``; no fine-grained / read-only tokens, no rate
  limits. Writes need a token, reads of public repos do not, private repos need any token.
* repo names are only checked against ``[A-Za-z0-9][A-Za-z0-9._-]{0,95}`` (the Hub also forbids "--", "..",
  reserved names...); creating outside the user's namespace and ``orgs`` is 403.
* no YAML / model-card / dataset-card validation, no gating, no disabled repos, no storage quotas, no file-size limits, no Xet (clients must set ``HF_HUB_DISABLE_XET=1``),
  no multipart LFS, no tags, no discussions API (a pull request exists only as its ``refs/pr/N`` revision: it cannot
  be listed, commented, merged or closed), no branch deletion, no pagination of tree listings, no
  ``.gitignore`` handling, no dataset viewer / parquet conversion (``refs/convert/parquet`` is a
  RevisionNotFound), no security scans, no Space builds.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "\n".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
) + "\n"


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        """What git would store: the blob itself, or the LFS pointer for LFS files."""
        return git_blob_oid(lfs_pointer(self.sha256, self.size) if self.lfs else self.content)

    @property
    def preupload_oid(self) -> str:
        """The oid the client compares with its local file (see CommitOperationAdd._local_oid)."""
        return self.sha256 if self.lfs else git_blob_oid(self.content)

    def entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.git_oid, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size,
                            "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return entry


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None = None
    commits: list[Commit] = field(default_factory=list)  # oldest first; commits[-1] is `main`
    created_at: str = ""
    branches: dict[str, Commit] = field(default_factory=dict)  # other branches than main: name -> head commit
    pull_requests: list[Commit] = field(default_factory=list)  # head of refs/pr/<index + 1>
    side_commits: list[Commit] = field(default_factory=list)  # commits made on branches and pull requests

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def files_lfs(self, revision: str = "main") -> set[str]:
        """Paths stored as LFS objects at `revision`."""
        commit = self.find_commit(revision)
        return {path for path, f in commit.files.items() if f.lfs} if commit else set()

    def find_commit(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in ("main", "refs/heads/main", "HEAD"):
            return self.head
        branch = revision.removeprefix("refs/heads/")
        if branch in self.branches:
            return self.branches[branch]
        pr = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr:
            number = int(pr.group(1))
            return self.pull_requests[number - 1] if 1 <= number <= len(self.pull_requests) else None
        for commit in [*self.commits, *self.side_commits]:
            if commit.sha == revision or (len(revision) >= 7 and commit.sha.startswith(revision)):
                return commit
        return None


@dataclass
class Fault:
    route: str
    mode: str  # "500" | "drop" | "drop_after_commit" | any other HTTP status code as a string
    times: int
    repo_id: str | None = None
    triggered: int = 0


class _DropConnection(Exception):
    """Raised inside a handler: close the socket without sending any response."""


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


class HubServer:
    """In-memory Hub. ``start()`` binds 127.0.0.1:<port> (0 = any free port) in a daemon thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", username: str = "tester",
                 orgs: tuple[str, ...] = (), cdn_host: str = "localhost"):
        self.host, self.requested_port = host, port
        self.username, self.orgs = username, tuple(orgs)
        self.cdn_host = cdn_host
        self.rejected_tokens: set[str] = set()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for debugging
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._commit_counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        server = self

        class Handler(_Handler):
            hub = server

        if self.cdn_host != self.host and not _resolves_to(self.cdn_host, self.host):
            self.cdn_host = self.host  # same origin: clients follow the redirect; the CDN echoes the metadata
        self._httpd = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "HubServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def reset(self) -> None:
        """Forget all repos, objects, faults and logs (the user and rejected tokens are kept)."""
        with self.lock:
            self.repos.clear()
            self.lfs_objects.clear()
            self.faults.clear()
            self.requests.clear()
            self.unhandled.clear()

    def inject_failure(self, route: str = "commit", mode: str = "500", times: int = 1,
                       repo_id: str | None = None) -> Fault:
        """Make the next `times` requests on `route` (optionally for one repo) fail with `mode`."""
        fault = Fault(route=route, mode=str(mode), times=times, repo_id=repo_id)
        with self.lock:
            self.faults.append(fault)
        return fault

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """{path: content} of the repo at `revision`."""
        with self.lock:
            commit = self.repo(repo_id, repo_type).find_commit(revision)
            assert commit is not None, f"unknown revision {revision}"
            return {path: f.content for path, f in commit.files.items()}

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        """Commits on main."""
        return len(self.repo(repo_id, repo_type).commits)

    def branch(self, repo_id: str, name: str, repo_type: str = "model") -> Commit | None:
        """The head commit of branch `name` (None if there is no such branch)."""
        return self.repo(repo_id, repo_type).branches.get(name)

    def pull_request(self, repo_id: str, number: int, repo_type: str = "model") -> Commit | None:
        """The head commit of pull request `number` (refs/pr/<number>), None if there is none."""
        prs = self.repo(repo_id, repo_type).pull_requests
        return prs[number - 1] if 1 <= number <= len(prs) else None

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False,
                    sdk: str | None = None) -> Repo:
        """Create a repo directly (with its initial `.gitattributes` commit), bypassing HTTP."""
        with self.lock:
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, sdk=sdk, created_at=_now())
            self.repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "initial commit", "", {".gitattributes": StoredFile(
                DEFAULT_GITATTRIBUTES.encode(), lfs=False)})
            return repo

    # ------------------------------------------------------------------ internals
    def _add_commit(self, repo: Repo, title: str, message: str, files: dict[str, StoredFile],
                    base: Commit | None = None, branch: str | None = None, create_pr: bool = False) -> Commit:
        """A new commit on main, on `branch` (from its head `base`) or on a new pull request (from `base`)."""
        self._commit_counter += 1
        if branch is None and not create_pr:
            base = repo.head if repo.commits else None
        parent = base.sha if base is not None else None
        digest = hashlib.sha1(json.dumps(
            [parent, title, message, sorted((p, f.git_oid) for p, f in files.items()), self._commit_counter,
             repo.repo_type, repo.repo_id]).encode()).hexdigest()
        commit = Commit(sha=digest, parent=parent, title=title, message=message, files=files, date=_now())
        if create_pr:
            repo.pull_requests.append(commit)
            repo.side_commits.append(commit)
        elif branch is not None:
            repo.branches[branch] = commit
            repo.side_commits.append(commit)
        else:
            repo.commits.append(commit)
        return commit

    def _take_fault(self, route: str, repo_id: str | None) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.route in (route, "any") and (
                        fault.repo_id is None or fault.repo_id == repo_id):
                    fault.times -= 1
                    fault.triggered += 1
                    return fault
        return None

    def is_lfs_path(self, files: dict[str, StoredFile], path: str) -> bool:
        attributes = files.get(".gitattributes")
        text = attributes.content.decode(errors="replace") if attributes else DEFAULT_GITATTRIBUTES
        name = path.rsplit("/", 1)[-1]
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2 or "filter=lfs" not in parts[1:]:
                continue
            pattern = parts[0]
            target = path if "/" in pattern else name
            if fnmatch.fnmatch(target, pattern) or fnmatch.fnmatch(path, pattern):
                return True
        return False


def _resolves_to(name: str, address: str) -> bool:
    try:
        return any(info[4][0] == address for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM))
    except OSError:
        return False


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _card_data(files: dict[str, StoredFile]) -> dict | None:
    readme = files.get("README.md")
    if readme is None:
        return None
    text = readme.content.decode(errors="replace")
    match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return None
    try:
        import yaml

        data = yaml.safe_load(match.group(1))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub: every response carries Content-Length

    def log_message(self, format, *args):  # silence stderr
        pass

    # ---------------------------------------------------------------- plumbing
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._status = 0
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        path = split.path
        self._body: bytes | None = None
        try:
            self._route(method, path)
        except _DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._status = -1
        except HubError as err:
            self._json(err.status, {"error": err.message}, error_code=err.error_code)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a bug in this server: make it visible in the client error
            self._json(500, {"error": f"hub_server internal error: {type(err).__name__}: {err}"})
        with self.hub.lock:
            self.hub.requests.append((method, self.path, self._status))

    def body(self) -> bytes:
        if self._body is not None:
            return self._body
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self._body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(length) if length else b""
        return self._body

    def json_body(self) -> dict:
        try:
            return json.loads(self.body() or b"{}")
        except ValueError:
            raise HubError(400, "Invalid JSON body")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.body()  # always drain the request so the connection can be reused
        self._status = status
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, error_code: str | None = None, headers: dict | None = None) -> None:
        headers = dict(headers or {})
        if error_code:
            headers["X-Error-Code"] = error_code
        if status >= 400 and isinstance(payload, dict) and "error" in payload:
            message = str(payload["error"]).splitlines()[0][:200] if str(payload["error"]) else ""
            headers["X-Error-Message"] = message.encode("ascii", "replace").decode()
        self._send(status, json.dumps(payload).encode(), headers)

    def token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            return auth[7:].strip()
        return None

    def require_token(self) -> str:
        token = self.token()
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if token in self.hub.rejected_tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def fault(self, route: str, repo_id: str | None = None) -> Fault | None:
        fault = self.hub._take_fault(route, repo_id)
        if fault is None:
            return None
        self.body()
        if fault.mode == "drop":
            raise _DropConnection()
        if fault.mode == "drop_after_commit":
            return fault  # the caller applies the commit, then drops
        status = int(fault.mode)
        raise HubError(status, f"Injected failure ({status}) on {route}")

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        with self.hub.lock:
            repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (self.token() is None or self.token() in self.hub.rejected_tokens)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.find_commit(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def base_url(self) -> str:
        return self.hub.url

    # ---------------------------------------------------------------- routing
    def _route(self, method: str, path: str) -> None:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        raw_segments = path.strip("/").split("/")

        if path == "/api/whoami-v2" and method == "GET":
            return self.whoami()
        if path == "/api/repos/create" and method == "POST":
            return self.create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            return self.delete_repo()
        if path == "/api/agent-harnesses" and method == "GET":  # huggingface_hub's agent detection registry
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if path == "/api/validate-yaml" and method == "POST":
            self.body()
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/__lfs__/"):
            return self.lfs_endpoint(method, segments[1:])

        # /api/{type}s/{ns}/{name}[/{action}/{rev}[/{path...}]]
        if len(segments) >= 4 and segments[0] == "api" and segments[1] in REPO_TYPES:
            repo_type = REPO_TYPES[segments[1]]
            repo_id = f"{segments[2]}/{segments[3]}"
            rest, raw_rest = segments[4:], raw_segments[4:]
            if not rest and method in ("GET", "HEAD"):
                return self.repo_info(repo_type, repo_id, "main")
            if rest and rest[0] == "revision" and len(rest) >= 2 and method == "GET":
                return self.repo_info(repo_type, repo_id, "/".join(rest[1:]))
            if rest and rest[0] == "preupload" and len(rest) >= 2 and method == "POST":
                return self.preupload(repo_type, repo_id, unquote(raw_rest[1]))
            if rest and rest[0] == "commit" and len(rest) >= 2 and method == "POST":
                return self.commit(repo_type, repo_id, unquote(raw_rest[1]))
            if rest and rest[0] == "tree" and len(rest) >= 2 and method == "GET":
                return self.tree(repo_type, repo_id, unquote(raw_rest[1]), "/".join(rest[2:]))
            if rest and rest[0] == "paths-info" and len(rest) >= 2 and method == "POST":
                return self.paths_info(repo_type, repo_id, unquote(raw_rest[1]))
            if rest and rest[0] == "commits" and len(rest) >= 2 and method == "GET":
                return self.list_commits(repo_type, repo_id, unquote(raw_rest[1]))
            if rest and rest[0] == "branch" and len(rest) >= 2 and method == "POST":
                return self.create_branch(repo_type, repo_id, unquote("/".join(raw_rest[1:])))

        # /{prefix}{ns}/{name}.git/info/lfs/objects/batch
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            repo_type, repo_segments = self._split_prefix(segments)
            if len(repo_segments) == 6 and repo_segments[1].endswith(".git"):
                return self.lfs_batch(repo_type, f"{repo_segments[0]}/{repo_segments[1][:-4]}")

        # /{prefix}{ns}/{name}/resolve/{rev}/{path...}
        if method in ("GET", "HEAD"):
            repo_type, repo_segments = self._split_prefix(segments)
            offset = len(segments) - len(repo_segments)
            if len(repo_segments) >= 5 and repo_segments[2] == "resolve":
                raw_rev = raw_segments[offset + 3]
                return self.resolve(repo_type, f"{repo_segments[0]}/{repo_segments[1]}", unquote(raw_rev),
                                    "/".join(repo_segments[4:]))

        with self.hub.lock:
            self.hub.unhandled.append((method, self.path))
        raise HubError(404, f"hub_server: no route for {method} {path}")

    @staticmethod
    def _split_prefix(segments: list[str]) -> tuple[str, list[str]]:
        if segments and segments[0] in REPO_TYPES and segments[0] != "models":
            return REPO_TYPES[segments[0]], segments[1:]
        return "model", segments

    # ---------------------------------------------------------------- endpoints
    def whoami(self) -> None:
        self.fault("whoami")
        self.require_token()
        self._json(200, {
            "type": "user", "id": "0" * 24, "name": self.hub.username, "fullname": self.hub.username.title(),
            "email": f"{self.hub.username}@example.invalid", "emailVerified": True, "canPay": False,
            "isPro": False, "periodEnd": None, "avatarUrl": "",
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in self.hub.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "hub_server", "role": "write",
                                                              "createdAt": _now()}},
        })

    def create_repo(self) -> None:
        self.require_token()
        payload = self.json_body()
        name = payload.get("name")
        namespace = payload.get("organization") or self.hub.username
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{name}"
        self.fault("create_repo", repo_id)
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type}")
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise HubError(400, f"Invalid repo name {name!r}")
        if namespace != self.hub.username and namespace not in self.hub.orgs:
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace "
                                f"{namespace}")
        if repo_type == "space" and not payload.get("sdk"):
            raise HubError(400, "Missing sdk for a space")
        url = f"{self.base_url()}/{URL_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._json(409, {"error": f"You already created this {repo_type} repo", "url": url})
            private = payload.get("private")
            if private is None:
                private = payload.get("visibility") == "private"
            self.hub.create_repo(repo_id, repo_type, private=bool(private), sdk=payload.get("sdk"))
        self._json(200, {"url": url, "name": repo_id, "id": "0" * 24})

    def delete_repo(self) -> None:
        self.require_token()
        payload = self.json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload.get('name')}"
        with self.hub.lock:
            if self.hub.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        self._send(200, b"", content_type="text/plain")

    def repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        self.fault("info", repo_id)
        repo = self.get_repo(repo_type, repo_id)
        with self.hub.lock:
            commit = self.get_commit(repo, revision)
            files = dict(commit.files)
        siblings = []
        for path in sorted(files):
            stored = files[path]
            sibling = {"rfilename": path, "size": stored.size, "blobId": stored.git_oid}
            if stored.lfs:
                sibling["lfs"] = {"sha256": stored.sha256, "size": stored.size,
                                  "pointerSize": len(lfs_pointer(stored.sha256, stored.size))}
            siblings.append(sibling)
        namespace, _name = repo_id.split("/", 1)
        info = {
            "_id": "0" * 24, "id": repo_id, "author": namespace, "sha": commit.sha, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": repo.created_at, "lastModified": commit.date, "siblings": siblings,
            "usedStorage": sum(f.size for f in files.values()),
        }
        card = _card_data(files)
        if card is not None:
            info["cardData"] = card
        if repo_type == "model":
            info["modelId"] = repo_id
            info["library_name"] = (card or {}).get("library_name")
            info["pipeline_tag"] = (card or {}).get("pipeline_tag")
        if repo_type == "space":
            info["sdk"] = repo.sdk
            info["runtime"] = {"stage": "NO_APP_FILE" if "app.py" not in files else "BUILDING",
                               "hardware": {"current": None, "requested": "cpu-basic"}}
        self._json(200, info)

    def preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self.require_token()
        self.fault("preupload", repo_id)
        repo = self.get_repo(repo_type, repo_id)
        payload = self.json_body()
        with self.hub.lock:
            commit = self.get_commit(repo, revision)
            files = dict(commit.files)
        answer = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample") or "")
            size = int(item.get("size") or 0)
            lfs = self.hub.is_lfs_path(files, path) or size > LFS_SIZE_THRESHOLD or b"\0" in sample
            existing = files.get(path)
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                           "oid": existing.preupload_oid if existing is not None else None})
        self._json(200, {"files": answer, "commitOid": commit.sha})

    def lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self.require_token()
        self.fault("lfs_batch", repo_id)
        self.get_repo(repo_type, repo_id)
        payload = self.json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "hub_server only supports LFS uploads")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry = {"oid": oid, "size": size, "authenticated": True}
            with self.hub.lock:
                present = oid in self.hub.lfs_objects
            if not present:
                entry["actions"] = {
                    "upload": {"href": f"{self.base_url()}/__lfs__/upload/{oid}?size={size}", "header": {}},
                    "verify": {"href": f"{self.base_url()}/__lfs__/verify", "header": {}},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def lfs_endpoint(self, method: str, segments: list[str]) -> None:
        if method == "PUT" and len(segments) == 2 and segments[0] == "upload":
            oid = segments[1]
            self.fault("lfs_upload")
            data = self.body()
            if hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, f"LFS object does not match its oid {oid}")
            expected = self.query.get("size", [None])[0]
            if expected is not None and int(expected) != len(data):
                raise HubError(400, "LFS object size mismatch")
            with self.hub.lock:
                self.hub.lfs_objects[oid] = data
            return self._send(200, b"")
        if method == "POST" and segments == ["verify"]:
            payload = self.json_body()
            with self.hub.lock:
                data = self.hub.lfs_objects.get(payload.get("oid"))
            if data is None or len(data) != int(payload.get("size", -1)):
                raise HubError(404, "LFS object not found")
            return self._json(200, {"success": True})
        if method in ("GET", "HEAD") and len(segments) == 2 and segments[0] == "objects":
            # The "CDN" (reached through http://localhost:<port>, another origin than the Hub endpoint).
            with self.hub.lock:
                data = self.hub.lfs_objects.get(segments[1])
            if data is None:
                raise HubError(404, "Not found")
            headers = {"ETag": f'"{segments[1]}"'}
            commit = self.query.get("commit", [None])[0]
            if commit:
                headers["X-Repo-Commit"] = commit
            return self._send_content(data, headers, content_type="application/octet-stream")
        with self.hub.lock:
            self.hub.unhandled.append((method, self.path))
        raise HubError(404, "hub_server: unknown LFS route")

    def commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self.require_token()
        fault = self.fault("commit", repo_id)
        repo = self.get_repo(repo_type, repo_id)
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must be NDJSON starting with a header line")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        branch = unquote(revision).removeprefix("refs/heads/")
        branch = None if branch in ("main", "HEAD") else branch
        with self.hub.lock:
            base = self.get_commit(repo, revision)
            if not create_pr and base is not (repo.branches.get(branch) if branch else repo.head):
                raise HubError(400, "hub_server commits only on the head of a branch (or with create_pr)")
            parent = header.get("parentCommit")
            if parent and not base.sha.startswith(parent):
                raise HubError(412, f"A commit has happened since. Please refresh and try again. ({parent})")
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path", "")
                if path.startswith("/") or ".." in path.split("/") or not path:
                    raise HubError(400, f"Invalid path {path!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, "Only base64 encoding is supported")
                    files[path] = StoredFile(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs_objects.get(value.get("oid"))
                    if data is None:
                        raise HubError(422, f"LFS object {value.get('oid')} for {path} was not uploaded")
                    if value.get("size") is not None and int(value["size"]) != len(data):
                        raise HubError(422, f"Size mismatch for {path}")
                    files[path] = StoredFile(data, lfs=True)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            new = self.hub._add_commit(repo, header.get("summary") or "", header.get("description") or "",
                                       files, base=base, branch=branch, create_pr=create_pr)
            pr_url = (f"{self.base_url()}/{URL_PREFIX[repo_type]}{repo_id}/discussions/{len(repo.pull_requests)}"
                      if create_pr else None)
        if fault is not None and fault.mode == "drop_after_commit":
            raise _DropConnection()
        url = f"{self.base_url()}/{URL_PREFIX[repo_type]}{repo_id}/commit/{new.sha}"
        self._json(200, {"success": True, "commitOid": new.sha, "commitUrl": url, "hookOutput": "",
                         "pullRequestUrl": pr_url})

    def create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        self.require_token()
        repo = self.get_repo(repo_type, repo_id)
        payload = self.json_body()
        if branch in ("main", "HEAD") or branch.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", branch):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        with self.hub.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = self.get_commit(repo, payload.get("startingPoint") or "main")
        self._json(200, {})

    def _entries(self, files: dict[str, StoredFile], folder: str, recursive: bool) -> list[dict] | None:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        found = not prefix
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            found = True
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                sub = prefix + "/".join(rest[:depth])
                if sub not in entries:
                    entries[sub] = {"type": "directory", "oid": hashlib.sha1(sub.encode()).hexdigest(),
                                    "size": 0, "path": sub}
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                entries[path] = files[path].entry(path)
        if not found:
            return None
        return sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))

    def tree(self, repo_type: str, repo_id: str, revision: str, folder: str) -> None:
        self.fault("tree", repo_id)
        repo = self.get_repo(repo_type, repo_id)
        with self.hub.lock:
            files = dict(self.get_commit(repo, revision).files)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = self._entries(files, folder, recursive)
        if entries is None or folder.strip("/") in files:
            raise HubError(404, f"{folder} does not exist on \"{revision}\"", "EntryNotFound")
        self._json(200, entries)

    def paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        self.fault("paths_info", repo_id)
        repo = self.get_repo(repo_type, repo_id)
        body = self.body()
        if (self.headers.get("Content-Type") or "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        with self.hub.lock:
            files = dict(self.get_commit(repo, revision).files)
        result = []
        for raw in paths:
            path = raw.strip("/")
            if path in files:
                result.append(files[path].entry(path))
            elif any(p.startswith(path + "/") for p in files) or path == "":
                result.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(),
                               "size": 0, "path": path})
        self._json(200, result)

    def list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.get_repo(repo_type, repo_id)
        with self.hub.lock:
            commit = self.get_commit(repo, revision)
            by_sha = {c.sha: c for c in [*repo.commits, *repo.side_commits]}
            history = []
            while commit is not None:  # follow the parents: branches and pull requests start from main
                history.insert(0, commit)
                commit = by_sha.get(commit.parent) if commit.parent else None
        self._json(200, [{"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
                          "authors": [{"user": self.hub.username}]} for c in reversed(history)])

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        self.fault("resolve", repo_id)
        repo = self.get_repo(repo_type, repo_id)
        with self.hub.lock:
            commit = self.get_commit(repo, revision)
            stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if stored.lfs:
            location = (f"http://{self.hub.cdn_host}:{self.hub.port}/__lfs__/objects/{stored.sha256}"
                        f"?commit={commit.sha}&name={quote(path.rsplit('/', 1)[-1])}")
            headers.update({"ETag": f'"{stored.git_oid}"', "X-Linked-Etag": f'"{stored.sha256}"',
                            "X-Linked-Size": str(stored.size), "Location": location})
            return self._send(302, b"", headers, content_type="text/plain")
        headers["ETag"] = f'"{stored.git_oid}"'
        self._send_content(stored.content, headers)

    def _send_content(self, data: bytes, headers: dict, content_type: str = "application/octet-stream") -> None:
        headers = dict(headers)
        headers["Accept-Ranges"] = "bytes"
        range_header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip()) if range_header else None
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
            else:  # suffix range: last N bytes
                start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data) and len(data) > 0:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", headers, content_type=content_type)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, content_type=content_type)
        self._send(200, data, headers, content_type=content_type)


if __name__ == "__main__":  # manual use: python tests/hub_server.py [port]
    import sys

    hub = HubServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"Hub-compatible server on {hub.url} (HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
