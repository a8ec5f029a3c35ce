"""A small, in-memory Hugging Face Hub-protocol server for tests (standard library only).

It speaks just enough of the Hub's HTTP API for the *real* ``huggingface_hub`` client (and
therefore ``diffusers``' ``push_to_hub`` / ``from_pretrained``) to work against
``http://127.0.0.1:PORT``: repo creation, preupload, NDJSON commits, the legacy git-LFS
upload path (batch -> PUT -> verify), repo info, tree listing and ``resolve`` downloads.

What it mimics from the real Hub:

* every repo starts with an initial commit that holds ``.gitattributes``;
* every commit is addressable by its 40-hex sha, branches (``main`` + any created) point at
  commits, so downloads pinned to an old sha return old content;
* errors carry ``X-Error-Code`` (RepoNotFound / RevisionNotFound / EntryNotFound) and a JSON
  ``{"error": ...}`` body, which the client maps to its typed exceptions.

What it does not do: Xet (``xet-write-token`` answers 404, as for a Hub without Xet, so set
``HF_HUB_DISABLE_XET=1`` or use ``regular_only=True``), pull requests, tags, pagination,
multipart LFS. All LFS objects live in one content-addressed store shared by all repos.

Usage::

    with HubServer(lfs_threshold=1024) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, ...}   # then run the client in a subprocess

or ``python tests/hub_server.py --port 0`` to run it by hand.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.png", "*.pt", "*.pth", "*.ckpt", "*.npz")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS).encode()
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API = r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)"
_GIT = r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` (what the Hub reports as ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that a real Hub stores in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubError(Exception):
    """Turned into an HTTP error response with the Hub's ``X-Error-*`` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class FileEntry:
    sha256: str  # key into the blob store
    size: int
    lfs: bool
    git_oid: str  # git blob id: of the content for regular files, of the LFS pointer for LFS files


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, FileEntry]
    summary: str
    description: str = ""
    date: str = field(default_factory=_now)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedRequest:
    """One handled request. ``has_auth`` says whether an Authorization header was sent (the value is never kept)."""

    method: str
    path: str  # url-decoded, without the query string
    query: str
    has_auth: bool
    status: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every response has a Content-Length
    server_version = "TinyHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr logging
        pass

    def _handle(self):
        self.server.hub._dispatch(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for idle keep-alive connections on stop()


class HubServer:
    """In-memory Hub on ``127.0.0.1``; see the module docstring. All state is guarded by one lock."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, user: str = "tester",
                 lfs_threshold: int = 10 * 1024 * 1024, lfs_patterns=DEFAULT_LFS_PATTERNS,
                 regular_only: bool = False, require_token: str | None = None, fail_next_commits: int = 0):
        self.host, self.port, self.user = host, port, user
        self.lfs_threshold, self.lfs_patterns = lfs_threshold, tuple(lfs_patterns)
        self.regular_only, self.require_token = regular_only, require_token
        self.fail_next_commits = fail_next_commits
        self.requests: list[LoggedRequest] = []
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> content (regular and LFS files)
        self._lfs_uploaded: set[str] = set()  # sha256 of LFS objects received through PUT
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "HubServer":
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------- helpers for tests
    def seed(self, repo_id: str, files: dict[str, bytes], message: str = "seed", repo_type: str = "model",
             private: bool = False) -> str:
        """Commit ``files`` to ``main`` directly (creating the repo if needed); returns the commit sha."""
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                ns, name = repo_id.split("/")
                self._create_repo({"name": name, "organization": ns, "type": repo_type, "private": private})
            repo = self._repos[(repo_type, repo_id)]
            tree = dict(repo.commits[repo.branches["main"]].files)
            for path, data in files.items():
                tree[path] = self._store(data, self._is_lfs(path, len(data)))
                if tree[path].lfs:
                    self._lfs_uploaded.add(tree[path].sha256)
            return self._new_commit(repo, "main", tree, message, added=list(files)).sha

    def commits(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> list[Commit]:
        """Commits reachable from ``branch``, oldest first (the initial ``.gitattributes`` commit included)."""
        with self._lock:
            repo, out = self._get_repo(repo_type, repo_id), []
            sha = repo.branches[branch]
            while sha is not None:
                out.append(repo.commits[sha])
                sha = repo.commits[sha].parent
            return out[::-1]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Content of every file at ``revision`` (branch name or commit sha)."""
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
            return {p: self._blobs[e.sha256] for p, e in commit.files.items()}

    def committed_paths(self, repo_id: str | None = None) -> set[str]:
        """Every path ever added by a commit (in one repo, or in all repos)."""
        with self._lock:
            repos = [r for r in self._repos.values() if repo_id in (None, r.repo_id)]
            return {p for r in repos for c in r.commits.values() for p in c.added}

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------- state
    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, rev: str) -> Commit:
        sha = repo.branches.get(rev, rev)
        if sha not in repo.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[sha]

    def _new_commit(self, repo: Repo, branch: str, files: dict, summary: str, description: str = "",
                    added=(), deleted=()) -> Commit:
        self._counter += 1
        parent = repo.branches.get(branch)
        material = f"{repo.repo_id}\n{parent}\n{summary}\n{self._counter}\n{time.time()}\n{sorted(files)}"
        commit = Commit(hashlib.sha1(material.encode()).hexdigest(), parent, files, summary, description,
                        added=list(added), deleted=list(deleted))
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def _store(self, data: bytes, lfs: bool) -> FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        self._blobs[sha256] = data
        git_oid = git_blob_sha1(lfs_pointer(sha256, len(data)) if lfs else data)
        return FileEntry(sha256, len(data), lfs, git_oid)

    def _is_lfs(self, path: str, size: int) -> bool:
        if self.regular_only:
            return False
        name = path.rsplit("/", 1)[-1]
        return size > self.lfs_threshold or any(fnmatch.fnmatch(name, p) for p in self.lfs_patterns)

    def _tree_entry(self, path: str, entry: FileEntry | None) -> dict:
        if entry is None:  # a directory
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        out = {"type": "file", "path": path, "size": entry.size, "oid": entry.git_oid}
        if entry.lfs:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size,
                          "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
        return out

    # ------------------------------------------------------------- HTTP layer
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        path, query = unquote(url.path), parse_qs(url.query)
        try:
            body = self._read_body(h)
            with self._lock:
                status, payload, headers = self._route(h.command, url.path, query, h.headers, body)
        except HubError as err:
            status, headers = err.status, {**err.headers, "X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            payload = {"error": err.message}
        except Exception as err:  # pragma: no cover - a server bug or a malformed request; report it
            status, payload, headers = 500, {"error": f"{type(err).__name__}: {err}"}, {}
            h.close_connection = True  # the request body may not have been consumed
        with self._lock:
            self.requests.append(LoggedRequest(h.command, path, url.query, "Authorization" in h.headers, status))
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        h.send_response(status)
        headers.setdefault("Content-Length", str(len(payload)))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        """Read the request body, with either ``Content-Length`` or ``Transfer-Encoding: chunked``."""
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()  # CRLF after each chunk
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _check_auth(self, headers, *, required: bool = False) -> None:
        """Write routes: with ``require_token`` set, demand ``Authorization: Bearer <require_token>``."""
        auth = headers.get("Authorization", "")
        if (self.require_token is not None and auth != f"Bearer {self.require_token}") or (required and not auth):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _check_read(self, repo: Repo, headers) -> None:
        """Like the Hub, hide private repos from unauthenticated callers (only when a token is required)."""
        if repo.private and self.require_token and headers.get("Authorization") != f"Bearer {self.require_token}":
            raise HubError(401, "Repository not found", "RepoNotFound")

    def _route(self, method: str, raw: str, query: dict, headers, body: bytes):
        q = {k: v[-1] for k, v in query.items()}
        if method == "POST" and raw == "/api/repos/create":
            self._check_auth(headers)
            return self._create_repo(json.loads(body or b"{}"))
        if method == "DELETE" and raw == "/api/repos/delete":
            self._check_auth(headers)
            data = json.loads(body or b"{}")
            repo_id = f"{data.get('organization') or self.user}/{data['name']}"
            repo = self._get_repo(data.get("type") or "model", repo_id)
            del self._repos[(repo.repo_type, repo.repo_id)]
            return 200, b"", {}
        if method == "GET" and raw == "/api/whoami-v2":
            self._check_auth(headers, required=True)
            return 200, {"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}, {}
        if method == "POST" and raw == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        if m := re.fullmatch(r"/_lfs/(upload|verify)/([0-9a-f]{64})", raw):
            return self._lfs_object(method, m[1], m[2], headers, body)
        if m := re.match(_API + r"(/.*)?$", raw):
            repo = self._get_repo(_TYPES[m[1]], f"{unquote(m[2])}/{unquote(m[3])}")
            return self._api(method, repo, m[4] or "", q, headers, body)
        if m := re.fullmatch(_GIT + r"\.git/info/lfs/objects/batch", raw):
            self._check_auth(headers)
            self._get_repo(_TYPES[m[1]] if m[1] else "model", f"{unquote(m[2])}/{unquote(m[3])}")
            return self._lfs_batch(json.loads(body))
        if method in ("GET", "HEAD") and (m := re.fullmatch(_GIT + r"/resolve/([^/]+)/(.+)", raw)):
            repo = self._get_repo(_TYPES[m[1]] if m[1] else "model", f"{unquote(m[2])}/{unquote(m[3])}")
            self._check_read(repo, headers)
            return self._resolve_file(repo, unquote(m[4]), unquote(m[5]), headers)
        raise HubError(404, f"Not found: {method} {raw}")

    # ----------------------------------------------------------------- routes
    def _create_repo(self, data: dict):
        """``POST /api/repos/create``: 200 ``{"url"}``, or 409 with the same ``url`` when it exists."""
        repo_type = data.get("type") or "model"
        repo_id = f"{data.get('organization') or self.user}/{data['name']}"
        url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        private = data.get("private") or data.get("visibility") == "private"
        repo = self._repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, bool(private))
        self._new_commit(repo, "main", {".gitattributes": self._store(GITATTRIBUTES, False)},
                         "initial commit", added=[".gitattributes"])
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _api(self, method: str, repo: Repo, rest: str, q: dict, headers, body: bytes):
        """Routes under ``/api/{type}s/{ns}/{name}``."""
        rev = unquote(rest.split("/")[2]) if rest.count("/") >= 2 else "main"
        if method == "GET" and (rest == "" or rest.startswith("/revision/")):
            self._check_read(repo, headers)
            return 200, self._info(repo, self._resolve(repo, rev), q), {}
        if method == "GET" and rest.startswith("/tree/"):
            self._check_read(repo, headers)
            sub = unquote("/".join(rest.split("/")[3:])).strip("/")
            return 200, self._tree(self._resolve(repo, rev), sub, q.get("recursive", "").lower() in ("1", "true")), {}
        if method == "POST" and rest.startswith("/paths-info/"):
            self._check_read(repo, headers)
            commit = self._resolve(repo, rev)
            form = parse_qs(body.decode()) if not body.startswith(b"{") else json.loads(body)
            dirs = {p[:i] for p in commit.files for i, c in enumerate(p) if c == "/"}
            return 200, [self._tree_entry(p, commit.files.get(p)) for p in form.get("paths", [])
                         if p in commit.files or p in dirs], {}
        self._check_auth(headers)
        if method == "POST" and rest.startswith("/preupload/"):
            files = self._resolve(repo, rev).files
            return 200, {"files": [self._preupload(f, files.get(f["path"])) for f in json.loads(body)["files"]]}, {}
        if method == "POST" and rest.startswith("/commit/"):
            return self._commit(repo, rev, q, body)
        if rest.startswith("/branch/"):
            if method == "DELETE":
                repo.branches.pop(rev, None)
                return 200, b"", {}
            if rev in repo.branches:
                raise HubError(409, f"Branch {rev} already exists")
            start = self._resolve(repo, json.loads(body or b"{}").get("startingPoint") or "main")
            repo.branches[rev] = start.sha
            return 200, {}, {}
        raise HubError(404, f"Not found: {method} {rest}")

    def _info(self, repo: Repo, commit: Commit, q: dict) -> dict:
        """``GET /api/{type}s/{id}[/revision/{rev}]``: the fields ModelInfo / DatasetInfo read."""
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if q.get("blobs", "").lower() in ("1", "true"):
                sib.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sib["lfs"] = {"size": entry.size, "sha256": entry.sha256,
                                  "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            siblings.append(sib)
        return {"_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": commit.sha, "lastModified": commit.date, "createdAt": repo.created_at,
                "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": siblings}

    def _tree(self, commit: Commit, sub: str, recursive: bool) -> list[dict]:
        """``GET .../tree/{rev}[/{path}]``: files (with ``lfs`` info) and directories under ``sub``."""
        prefix = f"{sub}/" if sub else ""
        under = [p for p in commit.files if p.startswith(prefix)]
        if sub and not under:
            raise HubError(404, f"{sub} does not exist", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        entries: dict[str, FileEntry | None] = {}
        for path in under:
            parts = path[len(prefix):].split("/")
            for i in range(1, len(parts)):  # parent directories
                entries.setdefault(prefix + "/".join(parts[:i]), None)
            entries[path] = commit.files[path]
        if not recursive:
            entries = {p: e for p, e in entries.items() if "/" not in p[len(prefix):]}
        return [self._tree_entry(p, e) for p, e in sorted(entries.items())]

    def _preupload(self, f: dict, existing: FileEntry | None) -> dict:
        """Tell the client how to upload each file and which oid the Hub already holds (to skip unchanged ones)."""
        oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
        mode = "lfs" if self._is_lfs(f["path"], f["size"]) else "regular"
        return {"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}

    def _commit(self, repo: Repo, branch: str, q: dict, body: bytes):
        """``POST .../commit/{branch}`` with an NDJSON body: header, file, lfsFile, deletedFile, deletedFolder."""
        if self.fail_next_commits > 0:
            self.fail_next_commits -= 1
            raise HubError(500, "Injected failure (fail_next_commits)")
        if q.get("create_pr"):
            raise HubError(400, "This test server does not support pull requests")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        files, added, deleted, header = dict(head.files), [], [], {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                if value.get("parentCommit") not in (None, head.sha):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = self._store(base64.b64decode(value["content"]), False)
                added.append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self._lfs_uploaded:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = self._store(self._blobs[value["oid"]], True)
                added.append(value["path"])
            elif key in ("deletedFile", "deletedFolder"):
                target = value["path"].strip("/")
                gone = [p for p in files if p == target or (key == "deletedFolder" and p.startswith(target + "/"))]
                if not gone:
                    raise HubError(404, f"{target} does not exist", "EntryNotFound", {"X-Repo-Commit": head.sha})
                for p in gone:
                    del files[p]
                deleted.extend(gone)
        commit = self._new_commit(repo, branch, files, header.get("summary", ""), header.get("description", ""),
                                  added, deleted)
        url = f"{self.endpoint}/{_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.sha}"
        return 200, {"commitUrl": url, "commitOid": commit.sha, "pullRequestUrl": None}, {}

    def _lfs_batch(self, data: dict):
        """Git-LFS batch API: hand out upload/verify hrefs, or no ``actions`` if the object is already stored."""
        objects = []
        for obj in data.get("objects", []):
            out = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self._lfs_uploaded:
                base = f"{self.endpoint}/_lfs"
                out["actions"] = {"upload": {"href": f"{base}/upload/{obj['oid']}"},
                                  "verify": {"href": f"{base}/verify/{obj['oid']}"}}
            objects.append(out)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_object(self, method: str, action: str, oid: str, headers, body: bytes):
        """The upload href (a plain PUT, like a presigned S3 URL: no auth) and the verify href."""
        if method == "PUT" and action == "upload":
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "Uploaded content does not match the announced sha256")
            self._blobs[oid] = body
            self._lfs_uploaded.add(oid)
            return 200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}
        if method == "POST" and action == "verify":
            self._check_auth(headers)
            data = json.loads(body)
            if oid not in self._lfs_uploaded or data.get("size") != len(self._blobs[oid]):
                raise HubError(404, f"LFS object {oid} not found")
            return 200, {"success": True}, {}
        raise HubError(405, f"{method} not allowed on {action}")

    def _resolve_file(self, repo: Repo, rev: str, path: str, headers):
        """``HEAD|GET /{repo}/resolve/{rev}/{path}``: bytes plus the metadata headers the client needs."""
        commit = self._resolve(repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data = self._blobs[entry.sha256]
        etag = entry.sha256 if entry.lfs else entry.git_oid
        out = {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
        if entry.lfs:
            out.update({"X-Linked-Size": str(entry.size), "X-Linked-Etag": f'"{entry.sha256}"'})
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", "").strip())
        if m:
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            end = min(end, len(data) - 1)
            if start > end and len(data) > 0:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start:end + 1], out
        return 200, data, out


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the in-memory test Hub server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lfs-threshold", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--regular-only", action="store_true", help="never answer uploadMode 'lfs' (no Xet)")
    parser.add_argument("--require-token", default=None)
    args = parser.parse_args()
    server = HubServer(host=args.host, port=args.port, lfs_threshold=args.lfs_threshold,
                       regular_only=args.regular_only, require_token=args.require_token).start()
    print(server.endpoint, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
