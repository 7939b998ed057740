"""Start-up against a store that is not there: one line and exit status 1, on every backend.

The real command (`python -m uploadsvc serve`) with a config file, as a user
runs it: a missing bucket or container, and an endpoint that refuses
connections, must each stop start-up with one line naming the storage URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import Backend
from tests.e2e.conftest import write_toml


def serve(broken: Backend, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": broken.url, "options": broken.options},
            "staging": {"path": str(tmp_path / "staging")},
        },
    )
    env = {k: v for k, v in os.environ.items() if k != "UPLOADSVC_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "uploadsvc", "serve", "--config", str(config)],
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
