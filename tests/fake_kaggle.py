"""A fake Kaggle API server for tests: the real kaggle 2.2.4 client talks to it, not to kaggle.com.

How the client gets here: with KAGGLE_API_ENVIRONMENT=LOCALHOST the client calls
`http://localhost/api/v1/<Service>/<Method>`; HTTP_PROXY pointing at this server (and no NO_PROXY)
makes every such request, and the downloads and uploads it is redirected to, arrive here in absolute
form. `FakeKaggle.client_env()` lists exactly those variables. `carvana.kaggle.api` re-reads
them each time it opens an API, so the fixture works in-process whatever the order in which test
files imported kaggle; the same variables work for a subprocess (`subprocess_env()`).

Use it from any test file:

    from fake_kaggle import FakeKaggle, carvana_archives, fake_kaggle  # noqa: F401 (fixture)

    def test_something(fake_kaggle: FakeKaggle, tmp_path):
        fake_kaggle.files.update(carvana_archives())
        ...

Speaks the wire protocol of kaggle 2.2.4 (checked against its source): every API call is a POST
with a camelCase JSON body and Basic (username:key) or Bearer (token) auth; errors are JSON
`{"code": <status>, "message": ...}` with that HTTP status.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from carvana.kaggle.files import COMPETITION, ORIGINAL_SIZE, mask_name  # noqa: E402
from carvana.kaggle.rle import encode  # noqa: E402

API_PREFIX = "/api/v1/"
LAST_MODIFIED = formatdate(1_500_000_000, usegmt=True)  # Kaggle serves RFC 1123 dates in GMT
RULES_MESSAGE = "You must accept this competition's rules before you'll be able to download files."
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None  # parsed JSON of API calls; byte count of uploads

    @property
    def api_method(self) -> str | None:
        """`DownloadDataFile` for `/api/v1/competitions.CompetitionApiService/DownloadDataFile`."""
        return self.path.rsplit("/", 1)[-1] if self.path.startswith(API_PREFIX) else None


@dataclass
class FakeSubmission:
    ref: int
    file_name: str
    description: str
    size: int
    polls_before_done: int
    outcome: dict[str, Any]
    status: str = "PENDING"

    def as_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "date": "2024-01-01T00:00:00.000Z", "fileName": self.file_name,
                "description": self.description, "status": self.status, "totalBytes": self.size,
                **(self.outcome if self.status != "PENDING" else {})}


@dataclass
class FakeKaggle:
    """The server's state and the faults tests can switch on."""

    username: str = "carvana-tester"
    key: str = "sekr1t-0123456789abcdef"
    token: str = "KGAT_sekr1t-token-fedcba9876543210"
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    # Faults
    reject_auth: bool = False  # 401 for every API call
    require_rules: bool = False  # 403 for downloads and submissions, as when the rules were not accepted
    cut_after: dict[str, int] = field(default_factory=dict)  # file -> close the connection after N body bytes
    cut_every_time: bool = False  # False: only the first response of each file in cut_after is cut
    fail_upload: bool = False  # the upload PUT answers 500
    # Submissions
    polls_before_done: int = 1
    submission_outcome: dict[str, Any] = field(
        default_factory=lambda: {"publicScore": "0.99612", "privateScore": "0.99587"})
    submission_fails_with: str | None = None  # an errorDescription: the submission ends in ERROR
    submissions: list[FakeSubmission] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._cut_done: set[str] = set()

    # ---- lifecycle ----
    def start(self) -> "FakeKaggle":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return self._server.server_address[1]

    def client_env(self, *, credentials: bool = True) -> dict[str, str | None]:
        """Variables that point the kaggle client here (None = unset the variable)."""
        proxy = f"http://127.0.0.1:{self.port}"
        env: dict[str, str | None] = {name: None for name in PROXY_VARIABLES}
        env.update({"HTTP_PROXY": proxy, "http_proxy": proxy, "KAGGLE_API_ENVIRONMENT": "LOCALHOST"})
        if credentials:
            env.update({"KAGGLE_USERNAME": self.username, "KAGGLE_KEY": self.key})
        return env

    def subprocess_env(self, home: Path, config_dir: Path, *, credentials: bool = True) -> dict[str, str]:
        """A complete environment for a child Python process that uses this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
        for name, value in self.client_env(credentials=credentials).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env.update({"HOME": str(home), "KAGGLE_CONFIG_DIR": str(config_dir),
                    "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"})
        return env

    # ---- what happened ----
    def calls(self, api_method: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.api_method == api_method]

    def downloads(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.startswith("/files/")]

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def take_cut(self, name: str) -> int | None:
        """Bytes after which to cut this response of `name`, or None to serve it whole."""
        with self._lock:
            if name not in self.cut_after or (name in self._cut_done and not self.cut_every_time):
                return None
            self._cut_done.add(name)
            return self.cut_after[name]

    def credentials_ok(self, authorization: str) -> bool:
        if self.reject_auth:
            return False
        basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return authorization in (f"Basic {basic}", f"Bearer {self.token}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on purpose here (kaggle drops the redirect's body, tests cut downloads).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def fake(self) -> FakeKaggle:
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # ---- plumbing ----
    def _path(self) -> str:
        return unquote(urlsplit(self.path).path)  # proxied requests arrive in absolute form

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"code": status, "message": message})

    # ---- API calls ----
    def do_POST(self) -> None:
        path = self._path()
        raw = self._body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        self.fake.record(RecordedRequest("POST", path, dict(self.headers), body))
        if not path.startswith(API_PREFIX) or not isinstance(body, dict):
            return self._error(404, "Not found")
        method = path.rsplit("/", 1)[-1]
        if method == "IntrospectToken":
            active = body.get("token") == self.fake.token and not self.fake.reject_auth
            return self._json(200, {"active": active, "username": self.fake.username if active else ""})
        if not self.fake.credentials_ok(self.headers.get("Authorization", "")):
            return self._error(401, "Unauthenticated")
        if body.get("competitionName") != COMPETITION:
            return self._error(404, "Competition not found")
        handler = {
            "DownloadDataFile": self._download_data_file,
            "StartSubmissionUpload": self._start_submission_upload,
            "CreateSubmission": self._create_submission,
            "ListSubmissions": self._list_submissions,
        }.get(method)
        if handler is None:
            return self._error(404, f"No method {method}")
        handler(body)

    def _download_data_file(self, body: dict[str, Any]) -> None:
        if self.fake.require_rules:
            return self._error(403, RULES_MESSAGE)
        name = body.get("fileName", "")
        if name not in self.fake.files:
            return self._error(404, f"File {name} not found")
        # Kaggle redirects to signed storage URLs whose last path component is the file name.
        self._send(302, headers={"Location": f"http://localhost/files/{COMPETITION}/{name}"})

    def _start_submission_upload(self, body: dict[str, Any]) -> None:
        if self.fake.require_rules:
            return self._error(403, RULES_MESSAGE)
        token = f"blob-{len(self.fake.uploads) + 1}"
        self.fake.uploads[token] = b""
        self._json(200, {"token": token, "createUrl": f"http://localhost/upload/{token}"})

    def _create_submission(self, body: dict[str, Any]) -> None:
        token = body.get("blobFileTokens", "")
        data = self.fake.uploads.get(token)
        if not data:
            return self._error(400, "The submission file was not uploaded")
        fails = self.fake.submission_fails_with
        sub = FakeSubmission(
            ref=40_000_000 + len(self.fake.submissions) + 1, file_name=token,
            description=body.get("submissionDescription", ""), size=len(data),
            polls_before_done=self.fake.polls_before_done,
            outcome={"errorDescription": fails} if fails else dict(self.fake.submission_outcome))
        sub.status = "PENDING" if sub.polls_before_done > 0 else ("ERROR" if fails else "COMPLETE")
        self.fake.submissions.append(sub)
        self._json(200, {"message": "Successfully submitted to Carvana Image Masking Challenge", "ref": sub.ref})

    def _list_submissions(self, body: dict[str, Any]) -> None:
        for sub in self.fake.submissions:
            if sub.status == "PENDING":
                if sub.polls_before_done > 0:
                    sub.polls_before_done -= 1
                else:
                    sub.status = "ERROR" if "errorDescription" in sub.outcome else "COMPLETE"
        newest_first = [s.as_json() for s in reversed(self.fake.submissions)]
        self._json(200, {"submissions": newest_first, "nextPageToken": ""})

    # ---- storage: downloads and uploads ----
    def do_GET(self) -> None:
        path = self._path()
        self.fake.record(RecordedRequest("GET", path, dict(self.headers)))
        prefix = f"/files/{COMPETITION}/"
        name = path[len(prefix):] if path.startswith(prefix) else ""
        data = self.fake.files.get(name)
        if data is None:
            return self._send(404, b"no such object")
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        headers = {"Content-Type": "application/zip", "Last-Modified": LAST_MODIFIED, "ETag": etag,
                   "Accept-Ranges": "bytes"}
        start = self._range_start(etag)
        if start is not None and start >= len(data):
            return self._send(416, headers={"Content-Range": f"bytes */{len(data)}"})
        status, body = 200, data
        if start is not None:
            status, body = 206, data[start:]
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = self.fake.take_cut(name)
        if cut is None:
            return self._send(status, body, headers)
        # Promise the whole body, deliver part of it, hang up: a dropped connection mid-file.
        self.send_response(status)
        for header, value in headers.items():
            self.send_header(header, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _range_start(self, etag: str) -> int | None:
        """Where a `Range: bytes=N-` request starts; None for the whole object (also on an If-Range miss)."""
        requested = self.headers.get("Range", "")
        if not requested.startswith("bytes=") or not requested.endswith("-"):
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (etag, LAST_MODIFIED):
            return None
        return int(requested[len("bytes="):-1])

    def do_PUT(self) -> None:
        path = self._path()
        data = self._body()
        self.fake.record(RecordedRequest("PUT", path, dict(self.headers), len(data)))
        token = path.rsplit("/", 1)[-1]
        if not path.startswith("/upload/") or token not in self.fake.uploads:
            return self._send(404, b"no such upload")
        if self.fake.fail_upload:
            return self._send(500, b"storage unavailable")
        self.fake.uploads[token] = data
        self._send(200, b"")


@pytest.fixture
def fake_kaggle(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKaggle]:
    """A running fake Kaggle; this process's kaggle client is pointed at it, with valid credentials.

    HOME moves to an empty folder so that no real ~/.kaggle token of the developer is picked up.
    """
    server = FakeKaggle().start()
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    for name, value in server.client_env().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.stop()


# ---- a tiny dataset in Kaggle's own archive layout ----

CAR_IDS = ("0cdf5b5d0ce1", "fecea3036c59")
TEST_CAR_IDS = ("0004d4463b50",)
IMAGE_SIZE = (48, 32)  # width, height: small, the fetcher never looks inside the pictures


def _jpeg(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    import cv2

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def _mask(seed: int) -> np.ndarray:
    mask = np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0]), dtype=np.uint8)
    mask[8 + seed % 4:24, 10:38] = 1
    return mask


def _gif(mask: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(mask, mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    out = io.BytesIO()
    image.save(out, format="GIF")
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def full_size_photo(seed: int = 7) -> bytes:
    """A 1918x1280 JPEG of noise: as big as a real Carvana photo (a few MB), for download tests that
    need more than the client's 1 MiB write chunk."""
    return _jpeg(seed, ORIGINAL_SIZE)


def carvana_archives(views: int = 2) -> dict[str, bytes]:
    """All eight Carvana competition files, as zips laid out like Kaggle's, for `views` views per car."""
    train_names = [f"{car}_{v:02d}.jpg" for car in CAR_IDS for v in range(1, views + 1)]
    test_names = [f"{car}_{v:02d}.jpg" for car in TEST_CAR_IDS for v in range(1, views + 1)]
    masks = {name: _mask(i) for i, name in enumerate(train_names)}
    masks_csv = "img,rle_mask\n" + "".join(f"{n},{encode(m)}\n" for n, m in masks.items())
    sample_csv = "img,rle_mask\n" + "".join(f"{n},1 1\n" for n in test_names)
    metadata_csv = "id,year,make,model,trim1,trim2\n" + "".join(
        f"{car},2016.0,Acura,RLX,RLX,w/Tech\n" for car in CAR_IDS + TEST_CAR_IDS)

    def photos(folder: str, names: list[str], seed: int) -> bytes:
        return zip_bytes({f"{folder}/{n}": _jpeg(seed + i) for i, n in enumerate(names)})

    return {
        "train.zip": photos("train", train_names, 0),
        "train_hq.zip": photos("train_hq", train_names, 100),
        "train_masks.zip": zip_bytes({f"train_masks/{mask_name(n)}": _gif(m) for n, m in masks.items()}),
        "train_masks.csv.zip": zip_bytes({"train_masks.csv": masks_csv.encode()}),
        "metadata.csv.zip": zip_bytes({"metadata.csv": metadata_csv.encode()}),
        "test.zip": photos("test", test_names, 200),
        "test_hq.zip": photos("test_hq", test_names, 300),
        "sample_submission.csv.zip": zip_bytes({"sample_submission.csv": sample_csv.encode()}),
    }
