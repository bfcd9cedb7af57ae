"""The download path without data_dir, offline: a local HTTP server on 127.0.0.1 serves the fixture files under the
repository's paths (``<commit>/MRE/data/txt/...``, ``<commit>/MNER/data/twitter2017/...``), their checksums are
pinned for the test, and any connection that is not loopback fails the test."""

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import datasets
import pytest
from conftest import FIXTURES, full_data_dir
from datasets.utils.file_utils import hash_url_to_filename

from datasets_scripts import load_benchmark, remote

datasets.disable_progress_bars()

REPOSITORY_ROOTS = {"imre": "MRE/data", "imner": "MNER/data"}  # fixture folder -> its path in the repository


def _repository_files(root) -> dict[str, bytes]:
    """``{path in the repository: bytes}`` for every file under ``root/imre`` and ``root/imner``."""
    files = {}
    for local, repository in REPOSITORY_ROOTS.items():
        for path in sorted((root / local).rglob("*.txt")):
            files[f"{repository}/{path.relative_to(root / local).as_posix()}"] = path.read_bytes()
    return files


FILES = _repository_files(FIXTURES)
COMMITTED = dict(remote.SHA256)  # the package's table; the tests below pin the fixtures' sums instead
BAD_FILE = "MRE/data/txt/sep5/ours_val_2.txt"


class Server:
    """Serves ``FILES`` at ``/<commit>/<path>``; ``corrupt`` holds paths served with one byte changed."""

    def __init__(self):
        self.requests, self.corrupt = [], set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, with_body):
                server.requests.append((self.command, self.path))
                path = self.path.removeprefix(f"/{remote.COMMIT}/")
                if path not in FILES:
                    self.send_error(404)
                    return
                body = FILES[path] + (b" " if path in server.corrupt else b"")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 -- http.server's names
                self._send(True)

            def do_HEAD(self):  # noqa: N802
                self._send(False)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Pin the fixture files' checksums, allow downloads (the machine may set HF_HUB_OFFLINE) and refuse any
    connection that does not go to this machine."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(remote, "SHA256", {path: hashlib.sha256(data).hexdigest() for path, data in FILES.items()})
    monkeypatch.delenv(remote.BASE_URL_ENV, raising=False)


@pytest.fixture
def server(monkeypatch):
    server = Server()
    monkeypatch.setenv(remote.BASE_URL_ENV, server.url)
    yield server
    server.close()


def _rows(benchmark):
    return [[getattr(t, s).data.table.to_pylist() for s in ("train", "validation", "test")] for t in benchmark.tasks]


@pytest.mark.parametrize("name, config, folder", [("imre", "sep5", "imre"), ("imner", "plom", "imner/twitter2017")])
def test_download_equals_data_dir_and_is_cached(server, tmp_path, name, config, folder):
    downloaded = load_benchmark(name, config, cache_dir=tmp_path / "c")
    local = load_benchmark(name, config, data_dir=FIXTURES / folder, cache_dir=tmp_path / "c")
    assert downloaded.label_names == local.label_names and downloaded.num_tasks == local.num_tasks
    assert [t.new_labels for t in downloaded.tasks] == [t.new_labels for t in local.tasks]
    assert _rows(downloaded) == _rows(local)
    fetched = {path for command, path in server.requests if command == "GET"}
    assert fetched == {f"/{remote.COMMIT}/{p}" for p in FILES if p.startswith(f"{REPOSITORY_ROOTS[name]}/")}

    server.requests.clear()
    again = load_benchmark(name, config, cache_dir=tmp_path / "c")
    assert server.requests == []  # the prepared dataset is reused: no request at all
    assert _rows(again) == _rows(downloaded) and again.fingerprint == downloaded.fingerprint


def test_checksum_mismatch_names_the_file_and_caches_nothing(server, tmp_path):
    cache = tmp_path / "c"
    bad_url = f"{server.url}/{remote.COMMIT}/{BAD_FILE}"
    server.corrupt.add(BAD_FILE)
    with pytest.raises(remote.ChecksumMismatchError) as err:
        load_benchmark("imre", "sep5", cache_dir=cache)
    expected = hashlib.sha256(FILES[BAD_FILE]).hexdigest()
    actual = hashlib.sha256(FILES[BAD_FILE] + b" ").hexdigest()
    assert bad_url in str(err.value) and expected in str(err.value) and actual in str(err.value)
    assert not list(cache.rglob("dataset_info.json")), "a dataset was prepared from a bad file"
    downloads = cache / "downloads"
    assert not list(downloads.glob(hash_url_to_filename(bad_url) + "*")), "the bad file stayed in the cache"
    pinned = set(remote.SHA256.values())
    kept = [p for p in downloads.iterdir() if p.is_file() and p.suffix not in (".json", ".lock")]
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() in pinned for p in kept)

    server.corrupt.clear()  # the same URL now serves the right bytes: fetched again, not read from a poisoned cache
    good = load_benchmark("imre", "sep5", cache_dir=cache)
    assert [len(t.validation) for t in good.tasks] == [3] * 5

    wrong = Server()  # another mirror, serving the bad bytes: still refused
    wrong.corrupt.add(BAD_FILE)
    try:
        with pytest.raises(remote.ChecksumMismatchError, match=wrong.url):
            load_benchmark("imre", "sep5", cache_dir=cache, data_url=wrong.url)
    finally:
        wrong.close()


def test_downloaded_text_has_no_images_and_says_how_to_add_them(server, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images are not downloaded .*pass image_dir="):
        load_benchmark("imner", "plom", cache_dir=tmp_path / "c", require_images=True)
    first = load_benchmark("imner", "plom", cache_dir=tmp_path / "c").tasks[0].train[0]["image_id"]
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (6, 4)).save(images / first)
    benchmark = load_benchmark("imner", "plom", cache_dir=tmp_path / "c", image_dir=str(images))
    assert benchmark.tasks[0].train[0]["image"].size == (6, 4)
    assert first not in {p.rsplit("/", 1)[-1] for p in benchmark.missing_image_paths}


def test_the_default_source_is_the_pinned_commit_of_the_public_repository():
    file = remote.remote_files("MRE/data/txt/sep5")["ours_train_0.txt"]
    assert file.url == ("https://raw.githubusercontent.com/zjunlp/ContinueMKGC/"
                        "6932da178b9015512a683382bdf1351a59c4d8ef/MRE/data/txt/sep5/ours_train_0.txt")
    assert remote.remote_files("MRE/data/txt/sep5", "http://mirror/")["ours_train_0.txt"].url.startswith(
        f"http://mirror/{remote.COMMIT}/MRE/")


def test_committed_checksums_match_the_full_files():
    full = full_data_dir()
    local = {f"{REPOSITORY_ROOTS[p.relative_to(full).parts[0]]}/{p.relative_to(full / p.relative_to(full).parts[0]).as_posix()}": p
             for folder in REPOSITORY_ROOTS for p in (full / folder).rglob("*.txt")}  # fmt: skip
    assert sorted(COMMITTED) == sorted(local)
    for path, digest in COMMITTED.items():
        assert remote.sha256(str(local[path])) == digest, path
