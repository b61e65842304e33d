"""A local server that answers the Hugging Face Hub's HTTP API as huggingface_hub calls it.

Enough of the Hub for `HfApi.model_info`, `HfApi.list_repo_tree`, `hf_hub_download` and
`snapshot_download` (huggingface_hub 1.x/2.x, plain HTTP, no Xet): point HF_ENDPOINT at
`FakeHub.url`.

- GET  /api/models/{repo}/revision/{rev}   model info: sha, siblings (with sizes)
- GET  /api/models/{repo}/tree/{rev}[/path] the file listing (one page)
- HEAD /{repo}/resolve/{rev}/{path}        X-Repo-Commit, ETag, Content-Length
- GET  /{repo}/resolve/{rev}/{path}        the bytes; `Range: bytes=N-` answers 206

Unknown repos, revisions and files answer 404 with the X-Error-Code the Hub sends, so
huggingface_hub raises its own RepositoryNotFoundError & co. Faults for tests: `cut_after`
drops the connection after N bytes of a file's next GET (a network cut mid-download);
`failing` answers 500 to every GET of a file; `slow` waits that many seconds before each GET
of a file. `requests` records (method, path, Range).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

INFO = re.compile(r"^/api/models/(?P<repo>.+?)/revision/(?P<rev>[^/]+)$")
TREE = re.compile(r"^/api/models/(?P<repo>.+?)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def commit_sha(files: dict[str, bytes]) -> str:
    """A 40-hex commit id that depends on the content, as a Hub commit would."""
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    return digest.hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of a saved model folder, by its path relative to the folder."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_after: dict[str, int] = {}
        self.failing: set[str] = set()
        self.slow: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], ref: str = "main") -> str:
        """Commit `files` as the whole tree of `repo_id` and point `ref` at it; the sha."""
        sha = commit_sha(files)
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[sha] = dict(files)
        repo.refs[ref] = sha
        return sha

    def resolve(self, repo_id: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        sha = repo.refs.get(rev, rev)
        files = repo.commits.get(sha)
        return None if files is None else (sha, files)

    def gets(self, name: str) -> list[str | None]:
        """The Range header of every GET of a file named `name` (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + name)]


def _etag(name: str, data: bytes) -> str:
    # the Hub's ETag is the sha256 for LFS files (weights) and the git blob sha1 otherwise
    if name.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            head: bool = False,
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _missing(self, code: str, head: bool = False) -> None:
            body = json.dumps({"error": code}).encode()
            self._send(404, body, {"X-Error-Code": code, "X-Error-Message": code}, head)

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_GET(self) -> None:
            self._route("GET")

        def _route(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub._lock:
                hub.requests.append((method, path, self.headers.get("Range")))
            for pattern, serve in ((INFO, self._info), (TREE, self._tree)):
                match = pattern.match(path)
                if match and method == "GET":
                    return serve(match)
            match = RESOLVE.match(path)
            if match:
                return self._resolve(match, head=method == "HEAD")
            self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head=method == "HEAD")

        def _lookup(
            self, match: re.Match[str], head: bool = False
        ) -> tuple[str, dict[str, bytes]] | None:
            repo_id, rev = match["repo"], match["rev"]
            if repo_id not in hub.repos:
                self._missing("RepoNotFound", head)
                return None
            found = hub.resolve(repo_id, rev)
            if found is None:
                self._missing("RevisionNotFound", head)
            return found

        def _info(self, match: re.Match[str]) -> None:
            found = self._lookup(match)
            if found is None:
                return
            sha, files = found
            siblings = [{"rfilename": n, "size": len(d)} for n, d in sorted(files.items())]
            self._json({"id": match["repo"], "sha": sha, "siblings": siblings, "private": False})

        def _tree(self, match: re.Match[str]) -> None:
            found = self._lookup(match)
            if found is None:
                return
            prefix = (match["path"] or "").strip("/")
            entries = []
            for name, data in sorted(found[1].items()):
                if prefix and not name.startswith(prefix + "/"):
                    continue
                entry: dict[str, object] = {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest(),
                }
                if name.endswith(".safetensors"):
                    entry["lfs"] = {"oid": _etag(name, data), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._json(entries)

        def _resolve(self, match: re.Match[str], head: bool) -> None:
            found = self._lookup(match, head)
            if found is None:
                return
            sha, files = found
            name = match["path"]
            if name not in files:
                self._missing("EntryNotFound", head)
                return
            data = files[name]
            headers = {
                "X-Repo-Commit": sha,
                "ETag": f'"{_etag(name, data)}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            if head:
                self._send(200, data, headers, head=True)
                return
            time.sleep(hub.slow.get(name, 0.0))
            if name in hub.failing:
                self._send(500, b'{"error": "injected"}', {"Content-Type": "application/json"})
                return
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if ranged:
                start = int(ranged[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            with hub._lock:
                cut = hub.cut_after.pop(name, None)
            self.send_response(206 if ranged else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])  # then the connection drops mid-body
            self.wfile.flush()
            self.close_connection = True

    return Handler
