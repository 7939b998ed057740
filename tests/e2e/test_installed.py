"""The service as a user runs it: built as a wheel, installed outside the
checkout, started by its console command in a process of its own, from a
working directory that is not the repository."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's contents installed into a folder of their own (no dependencies)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(work),
            str(REPO),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = work.glob("uploadsvc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "uploadsvc/templates/upload.html" in names
    assert {"uploadsvc/static/app.css", "uploadsvc/static/app.js"} <= set(names)
    assert "uploadsvc/plugins/README.md" in names
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m uploadsvc serve` from the installed copy, in an unrelated folder."""
    port = free_port()
    config = tmp_path / "service.toml"
    config.write_text(
        f"[server]\nport = {port}\n"
        '[storage]\nurl = "file://./data"\n'
        '[staging]\npath = "./staging"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uploadsvc", "serve", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield url, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()


def test_installed_wheel_serves_pages_and_uploads_from_any_folder(
    served: tuple[str, Path], installed: Path
) -> None:
    url, cwd = served
    imported = subprocess.run(
        [sys.executable, "-c", "import uploadsvc; print(uploadsvc.__file__)"],
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert imported.startswith(str(installed)), "the test must run the installed copy"

    page = httpx.get(f"{url}/background")
    assert page.status_code == 200 and 'action="/upload-nonblocking/"' in page.text
    for asset in ("app.css", "app.js"):  # the pages' own, from inside the installed package
        assert httpx.get(f"{url}/static/{asset}").content == (REPO / "static" / asset).read_bytes()
    data = os.urandom(3 << 20)
    record = httpx.post(f"{url}/upload-blocking/", files={"file": ("a.bin", data)}).json()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    # A relative file:// URL is relative to the working directory.
    assert (cwd / "data" / record["id"]).read_bytes() == data
    assert httpx.get(f"{url}{record['url']}").content == data
