"""Fixtures shared by every test: the storage backends and a real HTTP server.

`backend` runs a test once per backend (see tests/backends): each runs its
real store (moto's server, Azurite, fake-gcs-server, OpenSSH) once per session
on 127.0.0.1 and can list everything it holds, part files and pending uploads
included, so tests can assert that a failure left nothing behind.
"""

from __future__ import annotations

import importlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.backends import Backend
from uploadsvc.app import create_app
from uploadsvc.config import Settings, parse_settings

#: Every storage backend the contract and API suites run against; each is a
#: module of tests/backends (its server fixtures are registered as plugins).
BACKENDS = ["local", "memory", "s3", "azure", "gcs", "sftp"]

pytest_plugins = [f"tests.backends.{name}" for name in BACKENDS]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    module = importlib.import_module(f"tests.backends.{request.param}")
    yield from module.make(request, tmp_path)


def make_settings(
    backend: Backend,
    tmp_path: Path,
    jobs: dict[str, Any] | None = None,
    *,
    pipeline: Sequence[str] = (),
    plugins: dict[str, dict[str, Any]] | None = None,
    **limits: int,
) -> Settings:
    """The tests' settings on `backend`: staging in `tmp_path`, and the given jobs,
    limits, pipeline (processors run under 30 s each) and plugin options."""
    return parse_settings(
        {
            "storage": {"url": backend.url, "options": backend.options},
            "staging": {"path": str(tmp_path / "staging")},
            "limits": limits,
            "jobs": jobs or {},
            "processing": {"pipeline": list(pipeline), "timeout_seconds": 30},
            "plugins": plugins or {},
        }
    )


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return make_settings(backend, tmp_path, max_upload_bytes=32 << 20)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 (a free port) in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
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
        return Live(url, app, http, backend, Path(settings.staging.url.removeprefix("file://")))

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
