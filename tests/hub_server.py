"""A local Hub-compatible HTTP server (stdlib only) for offline push tests.

It answers what `HfApi.create_repo` + `HfApi.upload_folder` send with `HF_HUB_DISABLE_XET=1` (huggingface_hub 2.4):

    GET  /api/agent-harnesses                      agent-detection registry (user-agent telemetry): empty registry
    POST /api/repos/create                         200, or 409 when the repo exists (as the Hub; `exist_ok` handles it)
    POST /api/validate-yaml                        README.md front matter check: no errors
    POST /api/{type}s/{repo_id}/preupload/{rev}    every file "regular", so no LFS or Xet upload follows
    POST /api/{type}s/{repo_id}/commit/{rev}       ndjson: header, then files base64-inline (`file`), deletions

Everything else gets a 404 and is recorded in `requests`, so a test sees any request it did not expect. The files
that arrive are kept in memory: `server.files(repo_id)` maps path -> bytes. `fail_next` injects errors.

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_REPO_ROUTE = re.compile(r"^/api/(model|dataset|space)s/(.+)/(preupload|commit)/([^/]+)$")
EMPTY_AGENT_REGISTRY = {"standardEnvVars": [], "harnesses": {}}


class HubServer:
    """Start with `start()` (or `with HubServer() as hub:`) on 127.0.0.1 and an ephemeral port, in a daemon thread.

    Attributes:
        endpoint: `http://127.0.0.1:<port>` once started; pass it to `HfApi(endpoint=...)`.
        repos: `{(repo_type, repo_id): {path: bytes}}`, the files committed so far.
        requests: `[(method, path)]`, every request in arrival order (query strings stripped).
        commits: `[(repo_id, revision, summary)]`.
        preuploaded: `[(repo_id, path)]`, the paths announced to `preupload`.
        fail_next: `[(method, path, status)]`: the next request matching a method and path gets that status (an
            error body) instead of its answer, once per entry.
    """

    def __init__(self):
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[tuple[str, str, int]] = []
        self.commits: list[tuple[str, str, str]] = []
        self.preuploaded: list[tuple[str, str]] = []
        self.endpoint: str | None = None
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        with self._lock:
            return dict(self.repos.get((repo_type, repo_id), {}))

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
    def _create_repo(self, body: dict) -> tuple[int, dict]:
        name, organization = body["name"], body.get("organization")
        repo_id = name if "/" in name else f"{organization or 'tester'}/{name}"
        repo_type = body.get("type") or "model"
        url = f"{self.endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                return 409, {"error": "You already created this model repo", "url": url}
            self.repos[(repo_type, repo_id)] = {}
        return 200, {"url": url, "name": repo_id, "id": repo_id}

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
            files = self.repos[key]
            for path in deleted:
                for existing in [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]:
                    del files[existing]
            files.update(added)
            self.commits.append((repo_id, revision, summary))
        oid = hashlib.sha1(raw).hexdigest()
        url = f"{self.endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        return 200, {"commitUrl": f"{url}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, dict]:
        with self._lock:
            self.requests.append((method, path))
            for failure in self.fail_next:
                if failure[:2] == (method, path):
                    self.fail_next.remove(failure)
                    return failure[2], {"error": f"injected by the test Hub: {failure[2]}"}
        if method == "GET" and path == "/api/agent-harnesses":
            return 200, EMPTY_AGENT_REGISTRY
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(raw))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        match = _REPO_ROUTE.match(path)
        if method == "POST" and match:
            repo_type, repo_id, op, revision = match.groups()
            if op == "preupload":
                return self._preupload(repo_id, json.loads(raw))
            return self._commit(repo_type, repo_id, revision, raw)
        return 404, {"error": f"not implemented by the test Hub: {method} {path}"}


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every response carries Content-Length

        def log_message(self, *args):
            pass

        def _serve(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = unquote(urlsplit(self.path).path)
            code, payload = hub.handle(self.command, path, raw)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 404:
                self.send_header("X-Error-Code", "EntryNotFound")
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
