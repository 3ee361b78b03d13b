"""A local stand-in for the Hugging Face Hub's HTTP API, for `modelyard pull` tests (no network here).

It serves what huggingface_hub 2.x asks for (read from its source): `GET /api/models/{repo}[/revision/{rev}]`
(model_info: sha, siblings), `GET /api/models/{repo}/tree/{rev}` (list_repo_tree: files with size, oid and
LFS info), and `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with X-Repo-Commit, ETag or X-Linked-Etag,
X-Linked-Size, Content-Length, and byte ranges (206, Content-Range). Errors carry X-Error-Code
(RepoNotFound, GatedRepo, EntryNotFound) as the Hub's do. Every request is recorded for the tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pth")


@dataclass
class Repo:
    files: dict[str, bytes]
    gated_token: str | None = None  # when set, only this bearer token may read the repo

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
        return digest.hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class StubHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def add(self, repo: str, files: dict[str, bytes | Path], gated_token: str | None = None) -> None:
        self.repos[repo] = Repo({name: data if isinstance(data, bytes) else Path(data).read_bytes()
                                 for name, data in files.items()}, gated_token)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fetched(self, name: str) -> list[Request]:
        """Requests for a file's bytes (GET on its resolve URL)."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith("/" + name)]

    # ---- the API -----------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlparse(handler.path)
        path = unquote(url.path)
        self.requests.append(Request(handler.command, path, handler.headers.get("Range"),
                                     handler.headers.get("Authorization")))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = tree or api or resolve
        if match is None:
            return _error(handler, 404, "EntryNotFound", "no such endpoint")
        repo = self.repos.get(match.group(1))
        if repo is None:
            return _error(handler, 401, "RepoNotFound", "Repository not found")
        if repo.gated_token and handler.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            return _error(handler, 401, "GatedRepo", "Access to this repo is restricted")
        if tree:
            prefix = (tree.group(3) or "").rstrip("/")
            entries = [_tree_entry(name, data) for name, data in sorted(repo.files.items())
                       if not prefix or name.startswith(prefix + "/")]
            return _json(handler, entries, body)
        if api:
            return _json(handler, {"id": match.group(1), "modelId": match.group(1), "sha": repo.sha,
                                   "private": False, "gated": bool(repo.gated_token),
                                   "siblings": [{"rfilename": n, "size": len(d)} for n, d in sorted(repo.files.items())]},
                         body)
        name = resolve.group(3)
        data = repo.files.get(name)
        if data is None:
            return _error(handler, 404, "EntryNotFound", f"{name} does not exist", commit=repo.sha)
        start, end, status = 0, len(data) - 1, 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if ranged:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2)) if ranged.group(2) else len(data) - 1, len(data) - 1)
            status = 206
        handler.send_response(status)
        handler.send_header("X-Repo-Commit", repo.sha)
        entry = _tree_entry(name, data)
        if "lfs" in entry:
            handler.send_header("X-Linked-Etag", f'"{entry["lfs"]["oid"]}"')
            handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("ETag", f'"{entry["oid"]}"')
        handler.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if body:
            handler.wfile.write(data[start:end + 1])


def _tree_entry(name: str, data: bytes) -> dict:
    entry = {"type": "file", "path": name, "size": len(data),
             "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    if name.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _json(handler: BaseHTTPRequestHandler, payload, body: bool) -> None:
    raw = json.dumps(payload).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    if body:
        handler.wfile.write(raw)


def _error(handler: BaseHTTPRequestHandler, status: int, code: str, message: str, commit: str | None = None) -> None:
    raw = json.dumps({"error": message}).encode()
    handler.send_response(status)
    handler.send_header("X-Error-Code", code)
    handler.send_header("X-Error-Message", message)
    if commit:
        handler.send_header("X-Repo-Commit", commit)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(raw)
