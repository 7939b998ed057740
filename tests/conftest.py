"""Fixtures shared by every test: the storage backends and a real HTTP server.

`backend` runs a test once per backend: a local folder, `memory://`, and S3
served by moto's server on 127.0.0.1 in its own process, reached by s3fs over
real HTTP (moto's in-process mock does not intercept aiobotocore, moto#9784). Each backend can
list everything it holds, part files and pending multipart uploads included,
so tests can assert that a failure left nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fsspec.implementations.memory import MemoryFileSystem

from uploadsvc.app import create_app
from uploadsvc.config import Settings, parse_settings
from uploadsvc.storage import Storage, open_storage

BACKENDS = ["local", "memory", "s3"]


#: moto's server in a process of its own: its CPU (it burns ~10 s per GiB) and
#: memory (it keeps every object) stay out of the process under test.
_MOTO = """
import logging
import sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the test session closes our stdin
server.stop()
"""


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in credentials.items():
        os.environ.setdefault(key, value)
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    address = proc.stdout.readline().strip()
    assert address, "moto's server did not start"
    yield f"http://{address}"
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    """A plain boto3 client to look inside moto (made once: clients are slow to build)."""
    return boto3.client("s3", endpoint_url=moto_endpoint)


#: Storage options that give up on the first failed attempt, for tests of an
#: unreachable endpoint (s3fs and botocore would otherwise retry for seconds).
FAST_FAIL = {"retries": 1, "config_kwargs": {"retries": {"max_attempts": 1}}}


@dataclass
class Backend:
    """One storage backend for one test, and ways to look inside it."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    s3: Any = None
    bucket: str = ""

    def storage(self) -> Storage:
        return open_storage(self.url, self.options)

    def contents(self) -> list[str]:
        """Every object or file under the backend's root, whatever its name."""
        if self.name == "local":
            root = Path(self.url.removeprefix("file://"))
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if self.name == "memory":
            root = "/" + self.url.removeprefix("memory://").strip("/") + "/"
            return sorted(k[len(root) :] for k in MemoryFileSystem.store if k.startswith(root))
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def pending_multipart_uploads(self) -> list[str]:
        if self.name != "s3":
            return []
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    def leftovers(self) -> list[str]:
        return self.contents() + [f"multipart:{k}" for k in self.pending_multipart_uploads()]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    if name == "local":
        yield Backend(name, f"file://{tmp_path / 'store'}")
    elif name == "memory":
        root = f"test-{uuid.uuid4().hex}"
        yield Backend(name, f"memory://{root}")
        for key in [k for k in MemoryFileSystem.store if k.startswith(f"/{root}/")]:
            del MemoryFileSystem.store[key]
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        s3 = request.getfixturevalue("s3_client")
        bucket = f"test-{uuid.uuid4().hex[:20]}"
        s3.create_bucket(Bucket=bucket)
        yield Backend(name, f"s3://{bucket}/uploads", {"endpoint_url": endpoint}, s3, bucket)


def make_settings(backend: Backend, tmp_path: Path, **limits: int) -> Settings:
    return parse_settings(
        {
            "storage": {"url": backend.url, "options": backend.options},
            "staging": {"path": str(tmp_path / "staging")},
            "limits": limits,
        }
    )


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return make_settings(backend, tmp_path, max_upload_bytes=32 << 20)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 (a free port) in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Live:
    """A running app: its URL, the app itself, and an HTTP client."""

    url: str
    app: FastAPI
    http: httpx.Client
    backend: Backend
    staging: Path


@pytest.fixture
def live_factory(backend: Backend, tmp_path: Path) -> Iterator[Callable[..., Live]]:
    """Start a live server for the test's backend, optionally with a custom app."""
    stack: list[Any] = []

    def start(settings: Settings | None = None, **app_kwargs: Any) -> Live:
        settings = settings or make_settings(backend, tmp_path, max_upload_bytes=32 << 20)
        app = create_app(settings, **app_kwargs)
        ctx = serving(app)
        url = ctx.__enter__()
        stack.append(ctx)
        http = httpx.Client(base_url=url, timeout=60)
        stack.append(http)
        return Live(url, app, http, backend, Path(settings.staging.path))

    yield start
    for item in reversed(stack):
        if isinstance(item, httpx.Client):
            item.close()
        else:
            item.__exit__(None, None, None)
    shutil.rmtree(tmp_path / "staging", ignore_errors=True)


@pytest.fixture
def live(live_factory: Callable[..., Live]) -> Live:
    return live_factory()
