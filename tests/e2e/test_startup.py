"""Start-up against a store that is not there: one line and exit status 1, on every backend.

The real command (`python -m uploadsvc serve`) with a config file, as a user
runs it: a missing bucket or container, and an endpoint that refuses
connections, must each stop start-up with one line naming the storage URL.
`uploadsvc check` says the same, and passes on a store that works, leaving
no probe behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import wait_until
from tests.backends import Backend
from tests.backends.tools import free_port
from tests.e2e.conftest import write_toml


def serve(
    broken: Backend, tmp_path: Path, command: str = "serve"
) -> subprocess.CompletedProcess[str]:
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": broken.url, "options": broken.options},
            "staging": {"path": str(tmp_path / "staging")},
        },
    )
    env = {k: v for k, v in os.environ.items() if k != "UPLOADSVC_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "uploadsvc", command, "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def assert_one_line_naming(result: subprocess.CompletedProcess[str], url: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("uploadsvc: ") and url in lines[0], lines[0]


def test_missing_bucket_or_container_stops_start_up(backend: Backend, tmp_path: Path) -> None:
    missing = backend.missing_root()
    if missing is None:
        pytest.skip(f"{backend.name} has no buckets or containers: start-up creates its folder")
    assert_one_line_naming(serve(missing, tmp_path), missing.url)


def test_unreachable_endpoint_stops_start_up(backend: Backend, tmp_path: Path) -> None:
    down = backend.unreachable()
    if down is None:
        pytest.skip(f"{backend.name} lives in this process: it cannot be unreachable")
    assert_one_line_naming(serve(down, tmp_path), down.url)


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_uvicorn_serves_the_app_by_its_import_string(backend: Backend, tmp_path: Path) -> None:
    """`uvicorn uploadsvc.app:app` imports the app inside its running loop: the start-up
    check must still run, and the storage it touched must work on uvicorn's loop."""
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": backend.url, "options": backend.options},
            "staging": {"url": f"file://{tmp_path / 'staging'}"},
        },
    )
    port = free_port()
    env = {**os.environ, "UPLOADSVC_CONFIG": str(config)}
    command = [sys.executable, "-m", "uvicorn", "uploadsvc.app:app", "--port", str(port)]
    with subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE) as proc:
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: proc.poll() is not None or _answers(f"{url}/healthz"), timeout=60)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            answer = httpx.post(f"{url}/upload-blocking/", files={"file": ("f", b"hi")}, timeout=30)
            assert answer.status_code == 201, answer.text
            assert httpx.get(f"{url}{answer.json()['url']}").content == b"hi"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_check_passes_on_a_working_store_and_leaves_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    result = serve(backend, tmp_path, "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "configuration OK", result.stdout
    assert f"storage: {backend.url} (" in result.stdout
    assert backend.leftovers() == []
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize("broken", ["missing_root", "unreachable"])
def test_check_names_a_missing_or_unreachable_store(
    backend: Backend, tmp_path: Path, broken: str
) -> None:
    store: Backend | None = getattr(backend, broken)()
    if store is None:
        pytest.skip(f"{backend.name} has no {broken.replace('_', ' ')} twin")
    result = serve(store, tmp_path, "check")
    assert_one_line_naming(result, store.url)
    assert result.stdout == ""
