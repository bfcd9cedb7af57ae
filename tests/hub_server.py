"""A local Hub-compatible HTTP server (stdlib only) for offline push tests.

It answers what `HfApi.whoami`, `create_repo`, `create_branch` and `upload_folder` send with
`HF_HUB_DISABLE_XET=1` (huggingface_hub 2.4):

    GET  /api/agent-harnesses                      agent-detection registry (user-agent telemetry): empty registry
    GET  /api/whoami-v2                            the user of the bearer token (`tokens`), 401 for any other token
    POST /api/repos/create                         200, or 409 when the repo exists (as the Hub; `exist_ok` handles it)
    POST /api/validate-yaml                        README.md front matter check: no errors
    POST /api/{type}s/{repo_id}/branch/{branch}    a branch from `startingPoint` (default main); 409 when it exists
    POST /api/{type}s/{repo_id}/preupload/{rev}    every file "regular", so no LFS or Xet upload follows
    POST /api/{type}s/{repo_id}/commit/{rev}       ndjson: header, then files base64-inline (`file`), deletions; 404
                                                   (RevisionNotFound) on a branch that does not exist, as the Hub

and what `datasets.load_dataset(<repo id>)`, `hf_hub_download` and `from_pretrained(..., revision=)` read back, for
a branch name or the `sha` of a branch's files (an unknown revision: 404 with `X-Error-Code: RevisionNotFound`):

    GET  /api/{type}s/{repo_id}[/revision/{rev}]   repo info: `sha` (a hash of the files), `siblings`, `private`
    GET  /api/{type}s/{repo_id}/tree/{rev}[/{dir}] listing, `?recursive=true` for all levels
    POST /api/{type}s/{repo_id}/paths-info/{rev}   the entries of the given paths
    GET  [/{type}s]/{repo_id}/resolve/{rev}/{path} the file's bytes, with `X-Repo-Commit` and `ETag` (HEAD: headers)

Model, dataset and space repos are kept apart. Everything else gets a 404 and is recorded in `requests`, so a test
sees any request it did not expect. The files that arrive are kept in memory: `server.files(repo_id, revision=)` maps
path -> bytes. `fail_next` injects errors.

    with HubServer() as hub:
        HfApi(endpoint=hub.endpoint, token="hf_test").upload_folder(...)
        hub.files("me/repo")

`HangingServer` is the hostile counterpart: it accepts every connection and never answers.
"""

import base64
import hashlib
import json
import re
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_REPO_ROUTE = re.compile(r"^/api/(model|dataset|space)s/(.+)/(preupload|commit|branch)/([^/]+)$")
_INFO_ROUTE = re.compile(r"^/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE_ROUTE = re.compile(r"^/api/(model|dataset|space)s/([^/]+/[^/]+)/(tree|paths-info)/([^/]+)(?:/(.*))?$")
_RESOLVE_ROUTE = re.compile(r"^/(?:(dataset|space)s/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class RawResponse:
    """A route's answer that is not JSON: the bytes of a file and its headers."""

    def __init__(self, data: bytes, headers: dict[str, str]):
        self.data, self.headers = data, headers
EMPTY_AGENT_REGISTRY = {"standardEnvVars": [], "harnesses": {}}


class HubServer:
    """Start with `start()` (or `with HubServer() as hub:`) on 127.0.0.1 and an ephemeral port, in a daemon thread.

    Attributes:
        endpoint: `http://127.0.0.1:<port>` once started; pass it to `HfApi(endpoint=...)`.
        repos: `{(repo_type, repo_id): {branch: {path: bytes}}}`, the files committed so far; a new repo has an
            empty `main`.
        private: `{(repo_type, repo_id): bool}`, the visibility each repo was created with.
        tokens: `{token: user name}` that `whoami` knows (`{"hf_test": "tester"}`); a repo created under a bare
            name goes to the namespace of the token's user ("tester" for an unknown token).
        read_only: the tokens of `tokens` that `whoami` describes as read-only (role "read").
        requests: `[(method, path)]`, every request in arrival order (query strings stripped).
        commits: `[(repo_id, revision, summary)]`.
        preuploaded: `[(repo_id, path)]`, the paths announced to `preupload`.
        fail_next: `[(method, path, status)]`: the next request matching a method and path gets that status (an
            error body) instead of its answer, once per entry.
    """

    def __init__(self):
        self.repos: dict[tuple[str, str], dict[str, dict[str, bytes]]] = {}
        self.private: dict[tuple[str, str], bool] = {}
        self.tokens: dict[str, str] = {"hf_test": "tester"}
        self.read_only: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[tuple[str, str, int]] = []
        self.commits: list[tuple[str, str, str]] = []
        self.preuploaded: list[tuple[str, str]] = []
        self.endpoint: str | None = None
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return dict(self.repos.get((repo_type, repo_id), {}).get(revision, {}))

    def branches(self, repo_id: str, repo_type: str = "model") -> list[str]:
        with self._lock:
            return sorted(self.repos.get((repo_type, repo_id), {}))

    def start(self) -> str:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self.endpoint

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------------------------------------- routes
    def _whoami(self, token: str | None) -> tuple[int, dict]:
        if token not in self.tokens:
            return 401, {"error": "Invalid credentials in Authorization header"}
        role = "read" if token in self.read_only else "write"
        return 200, {"type": "user", "name": self.tokens[token], "orgs": [],
                     "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}}

    def _create_repo(self, body: dict, token: str | None) -> tuple[int, dict]:
        name, organization = body["name"], body.get("organization")
        repo_id = name if "/" in name else f"{organization or self.tokens.get(token, 'tester')}/{name}"
        repo_type = body.get("type") or "model"
        url = f"{self.endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                return 409, {"error": "You already created this model repo", "url": url}
            self.repos[(repo_type, repo_id)] = {"main": {}}
            self.private[(repo_type, repo_id)] = body.get("visibility") == "private" or bool(body.get("private"))
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            branches = self.repos.get((repo_type, repo_id))
            if branches is None:
                return 404, {"error": f"Repository {repo_id} not found"}
            if branch in branches:
                return 409, {"error": f"Branch {branch} already exists"}
            start = self._branch_of(repo_type, repo_id, body.get("startingPoint") or "main")
            if start is None:
                return 404, {"error": f"Revision {body.get('startingPoint')} not found", "error_code": "RevisionNotFound"}
            branches[branch] = dict(branches[start])
        return 200, {}

    def _preupload(self, repo_id: str, body: dict) -> tuple[int, dict]:
        files = body["files"]
        with self._lock:
            self.preuploaded.extend((repo_id, f["path"]) for f in files)
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                               for f in files]}  # fmt: skip

    def _commit(self, repo_type: str, repo_id: str, revision: str, raw: bytes) -> tuple[int, dict]:
        key = (repo_type, repo_id)
        with self._lock:
            if key not in self.repos:
                return 404, {"error": f"Repository {repo_id} not found"}
            if revision not in self.repos[key]:
                return 404, {"error": f"Invalid rev id: {revision}", "error_code": "RevisionNotFound"}
            added, deleted, summary = {}, [], ""
            for line in raw.splitlines():
                item = json.loads(line)
                kind, value = item["key"], item["value"]
                if kind == "header":
                    summary = value.get("summary", "")
                elif kind == "file":
                    if value.get("encoding") != "base64":
                        return 400, {"error": f"unsupported encoding {value.get('encoding')!r}"}
                    added[value["path"]] = base64.b64decode(value["content"])
                elif kind in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                else:  # lfsFile / copies never happen: preupload answers "regular" for everything
                    return 400, {"error": f"unsupported commit operation {kind!r}"}
            files = self.repos[key][revision]
            for path in deleted:
                for existing in [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]:
                    del files[existing]
            files.update(added)
            self.commits.append((repo_id, revision, summary))
        oid = hashlib.sha1(raw).hexdigest()
        url = f"{self.endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        return 200, {"commitUrl": f"{url}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def handle(self, method: str, path: str, raw: bytes, query: str = "", token: str | None = None) -> tuple[int, dict]:
        with self._lock:
            self.requests.append((method, path))
            for failure in self.fail_next:
                if failure[:2] == (method, path):
                    self.fail_next.remove(failure)
                    return failure[2], {"error": f"injected by the test Hub: {failure[2]}"}
        if method == "GET" and path == "/api/agent-harnesses":
            return 200, EMPTY_AGENT_REGISTRY
        if method == "GET" and path == "/api/whoami-v2":
            return self._whoami(token)
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(raw), token)
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        match = _REPO_ROUTE.match(path)
        if method == "POST" and match:
            repo_type, repo_id, op, revision = match.groups()
            if op == "preupload":
                return self._preupload(repo_id, json.loads(raw))
            if op == "branch":
                return self._create_branch(repo_type, repo_id, revision, json.loads(raw or b"{}"))
            return self._commit(repo_type, repo_id, revision, raw)
        answer = self._read_route(method, path, raw, "recursive=true" in query.lower())
        if answer is not None:
            return answer
        return 404, {"error": f"not implemented by the test Hub: {method} {path}"}


    # ------------------------------------------------------------------------------------------- read routes
    @staticmethod
    def _sha(files: dict[str, bytes]) -> str:
        h = hashlib.sha1()
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
        return h.hexdigest()

    def _branch_of(self, repo_type: str, repo_id: str, revision: str) -> str | None:
        """The branch a revision (a branch name or the sha of a branch's files) names; call with the lock held."""
        branches = self.repos.get((repo_type, repo_id), {})
        if revision in branches:
            return revision
        return next((b for b, files in branches.items() if self._sha(files) == revision), None)

    def _snapshot(self, repo_type: str, repo_id: str, revision: str = "main"):
        """``(sha, files)`` of a repo at a revision, None when the repo does not exist, or a 404 answer when the
        revision does not; the sha hashes paths and contents."""
        with self._lock:
            if (repo_type, repo_id) not in self.repos:
                return None
            branch = self._branch_of(repo_type, repo_id, revision)
            if branch is None:
                return 404, {"error": f"Invalid rev id: {revision}", "error_code": "RevisionNotFound"}
            files = dict(self.repos[(repo_type, repo_id)][branch])
        return self._sha(files), files

    @staticmethod
    def _entries(files: dict[str, bytes], paths: list[str], recursive: bool) -> list[dict]:
        """Tree entries (files and directories) at or under each of ``paths`` ("" is the root)."""
        out = {}
        for path in paths:
            prefix = path.strip("/") + "/" if path.strip("/") else ""
            for name, data in files.items():
                if name == path.strip("/"):
                    out[name] = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                elif name.startswith(prefix):
                    parts = name[len(prefix):].split("/")
                    for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                        folder = prefix + "/".join(parts[:depth])
                        out[folder] = {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0}
                    if recursive or len(parts) == 1:
                        out[name] = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        return [out[key] for key in sorted(out)]

    def _read_route(self, method: str, path: str, raw: bytes, recursive: bool):
        """Repo info, tree, paths-info and resolve (module docstring); None when the path is none of them."""
        not_found = 404, {"error": f"Repository or entry not found: {path}"}
        if match := _RESOLVE_ROUTE.match(path):
            repo_type, repo_id, revision, file_path = match.groups()
            snapshot = self._snapshot(repo_type or "model", repo_id, revision)
            if snapshot is None or isinstance(snapshot[0], int):
                return snapshot or not_found
            if file_path not in snapshot[1]:
                return not_found
            sha, files = snapshot
            data = files[file_path]
            return 200, RawResponse(data, {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha,
                                           "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
        if (match := _TREE_ROUTE.match(path)) and method in ("GET", "POST"):
            repo_type, repo_id, op, revision, sub = match.groups()
            snapshot = self._snapshot(repo_type, repo_id, revision)
            if snapshot is None or isinstance(snapshot[0], int):
                return snapshot or not_found
            if op == "paths-info":  # form or JSON body: paths=...&expand=...
                body = raw.decode()
                paths = json.loads(body)["paths"] if body.startswith("{") else [
                    unquote(v) for k, v in (p.split("=", 1) for p in body.split("&") if "=" in p) if k == "paths"]
                return 200, [e for e in self._entries(snapshot[1], paths, False) if e["path"] in paths]
            entries = self._entries(snapshot[1], [sub or ""], recursive)
            if sub and not entries:
                return not_found
            return 200, entries
        if (match := _INFO_ROUTE.match(path)) and method == "GET":
            repo_type, repo_id, revision = match.groups()
            snapshot = self._snapshot(repo_type, repo_id, revision or "main")
            if snapshot is None or isinstance(snapshot[0], int):
                return snapshot or not_found
            sha, files = snapshot
            return 200, {"id": repo_id, "sha": sha, "private": self.private.get((repo_type, repo_id), False),
                         "siblings": [{"rfilename": f} for f in sorted(files)]}  # fmt: skip
        return None


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every response carries Content-Length

        def log_message(self, *args):
            pass

        def _serve(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = unquote(urlsplit(self.path).path)
            authorization = self.headers.get("Authorization") or ""
            token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
            code, payload = hub.handle(self.command, path, raw, query=urlsplit(self.path).query, token=token)
            headers = payload.headers if isinstance(payload, RawResponse) else {"Content-Type": "application/json"}
            data = payload.data if isinstance(payload, RawResponse) else json.dumps(payload).encode()
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            if code == 404:
                self.send_header("X-Error-Code", isinstance(payload, dict) and payload.get("error_code") or "EntryNotFound")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

    return Handler


class HangingServer:
    """A TCP server on 127.0.0.1 that accepts every connection, reads nothing and never answers: a Hub endpoint that
    hangs. `connections` counts the accepted connections. Use as `with HangingServer() as hang: ... hang.endpoint`."""

    def __init__(self):
        self.connections = 0
        self.endpoint: str | None = None
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread = None
        self._stopping = threading.Event()

    def start(self) -> str:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._listener.settimeout(0.05)  # accept() wakes up to see stop(); closing the socket alone does not wake it
        self._thread = threading.Thread(target=self._accept, name="hanging-hub", daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        return self.endpoint

    def _accept(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._sockets.append(conn)  # kept open and silent until stop()
            self.connections += 1

    def stop(self) -> None:
        if self._listener is not None:
            self._stopping.set()
            self._thread.join(timeout=5)
            self._listener.close()
            for conn in self._sockets:
                conn.close()
            self._listener = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


@contextmanager
def local_hub(monkeypatch, tmp_path):
    """A running HubServer with huggingface_hub pointed at it and every non-loopback connection refused (and recorded:
    huggingface_hub swallows the errors of its best-effort telemetry); fails the test if anything tried to leave."""
    import huggingface_hub.constants as constants

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    attempts = []

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            attempts.append(host)
            raise OSError(f"test tried to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            attempts.append(address)
            raise OSError(f"test tried to connect to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    with HubServer() as server:
        # HF_ENDPOINT and HF_HUB_DISABLE_XET are read when huggingface_hub is imported: set the constants too
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)  # the agent-registry fetch uses it
        # hf_hub_download's file URLs (from_pretrained of a repo id) are built from this template
        template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        # transformers keeps one HfApi, with the endpoint of its first use (an earlier test's server, long gone)
        monkeypatch.setattr("transformers.utils.hub._hf_api", None, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # plain commits, no Xet pipeline
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
        yield server
    assert attempts == [], f"network access outside 127.0.0.1: {attempts}"
