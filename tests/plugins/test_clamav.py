"""The clamav plugin against a real clamd (tests/plugins/clamd.py), on its unix
socket and on TCP, through the whole service: the plugin is loaded by name
from `plugins/` as a configured deployment loads it, on the local backend."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import stored_bytes, wait_for_status, wait_until
from tests.backends import Backend, tools
from tests.conftest import Live, make_settings
from tests.plugins.clamd import SIGNATURE, STREAM_MAX_BYTES, Clamd, eicar
from tests.plugins.clamd import clamd_server as clamd_server  # the `clamd` fixture
from uploadsvc.config import ConfigError, Settings, parse_settings
from uploadsvc.pipeline import load_pipeline

#: The API tests' `backend` fixture, held to the local folder: the plugin reads
#: through the storage interface, which the backend suites cover.
local_only = pytest.mark.parametrize("backend", ["local"], indirect=True)


def clamav_settings(backend: Backend, tmp_path: Path, **options: Any) -> Settings:
    plugins = {"clamav": options}
    return make_settings(
        backend, tmp_path, max_upload_bytes=32 << 20, pipeline=["clamav"], plugins=plugins
    )


@pytest.fixture(params=["unix", "tcp"])
def scanning(
    request: pytest.FixtureRequest,
    clamd: Clamd,
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
) -> Live:
    """A live service whose pipeline scans with clamd, over its unix socket or TCP."""
    address = clamd.unix if request.param == "unix" else clamd.tcp
    return live_factory(clamav_settings(backend, tmp_path, address=address))


def leftovers(live: Live, upload_id: str) -> list[str]:
    """What the storage folder and staging still hold of `upload_id`'s bytes (its
    record, `<id>.json`, stays: it says why the upload failed)."""
    record = f"{upload_id}.json"
    stored = [name for name in live.backend.contents() if upload_id in name and name != record]
    staged = [p.name for p in live.staging.glob(f"*{upload_id}*")]
    return stored + staged


@local_only
def test_eicar_is_rejected_and_leaves_no_bytes(scanning: Live) -> None:
    response = scanning.http.post("/upload-blocking/", files={"file": ("eicar.com", eicar())})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "rejected"
    upload_id = body["id"]
    record = scanning.http.get(f"/uploads/{upload_id}").json()
    assert record["status"] == "failed" and record["rejected"] is True
    assert f"malware found: {SIGNATURE}" in record["error"]
    assert leftovers(scanning, upload_id) == []


@local_only
def test_a_clean_file_passes(scanning: Live) -> None:
    payload = os.urandom(1 << 20)
    response = scanning.http.post("/upload-blocking/", files={"file": ("f.bin", payload)})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["status"] == "completed"
    result = record["results"]["clamav"]
    assert result["clean"] is True
    assert result["engine"].startswith("ClamAV ")
    assert stored_bytes(scanning.backend, record["id"]) == payload


@local_only
@pytest.mark.parametrize("offset", [3 << 20, (3 << 20) - 34], ids=["after", "across-chunks"])
def test_eicar_deep_inside_a_file_is_found(scanning: Live, offset: int) -> None:
    """Past three 1 MiB INSTREAM chunks, or cut in two by a chunk boundary."""
    payload = os.urandom(offset) + eicar() + os.urandom(4096)
    response = scanning.http.post("/upload-blocking/", files={"file": ("f.bin", payload)})
    assert response.status_code == 422, response.text
    record = scanning.http.get(f"/uploads/{response.json()['id']}").json()
    assert SIGNATURE in record["error"]


@local_only
def test_small_chunks_are_scanned_whole(
    clamd: Clamd, live_factory: Callable[..., Live], backend: Backend, tmp_path: Path
) -> None:
    """`chunk_bytes` smaller than the signature: clamd joins the chunks itself."""
    live = live_factory(clamav_settings(backend, tmp_path, address=clamd.unix, chunk_bytes=7))
    payload = os.urandom(1000) + eicar()
    response = live.http.post("/upload-blocking/", files={"file": ("f.bin", payload)})
    assert response.status_code == 422, response.text


@local_only
def test_the_background_path_rejects_eicar(scanning: Live) -> None:
    response = scanning.http.post("/upload-nonblocking/", files={"file": ("e.com", eicar())})
    assert response.status_code == 202, response.text
    upload_id = response.json()["id"]
    record = wait_for_status(scanning, upload_id)
    assert record["status"] == "failed" and record["rejected"] is True
    assert f"malware found: {SIGNATURE}" in record["error"]
    wait_until(lambda: leftovers(scanning, upload_id) == [])


@local_only
def test_a_file_over_clamds_stream_limit_fails_unscanned(scanning: Live) -> None:
    """clamd refuses the stream mid-way: the upload fails (never passes as clean)
    with clamd's reason, and its bytes stay (it is not malware)."""
    payload = os.urandom(STREAM_MAX_BYTES + (1 << 20))
    response = scanning.http.post("/upload-blocking/", files={"file": ("big", payload)})
    record = response.json()
    assert record["status"] == "failed" and record["rejected"] is False
    assert "clamav" in record["error"]
    assert "INSTREAM size limit exceeded" in record["error"]
    assert record["results"] == {}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


@local_only
@pytest.mark.parametrize("down", ["missing-socket", "closed-port", "silent-port"])
def test_clamd_unreachable_fails_the_upload_in_time(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    down: str,
    request: pytest.FixtureRequest,
) -> None:
    address = {
        "missing-socket": lambda: f"unix://{tmp_path / 'no-clamd.sock'}",
        "closed-port": lambda: f"tcp://127.0.0.1:{tools.free_port()}",
        "silent-port": lambda: f"tcp://127.0.0.1:{request.getfixturevalue('silent_port')}",
    }[down]()
    live = live_factory(clamav_settings(backend, tmp_path, address=address, timeout_seconds=1))
    payload = os.urandom(4 << 20)
    started = time.monotonic()
    response = live.http.post("/upload-blocking/", files={"file": ("f", payload)})
    elapsed = time.monotonic() - started
    record = response.json()
    assert record["status"] == "failed" and record["rejected"] is False
    assert "clamav" in record["error"] and address in record["error"]
    if down == "silent-port":
        assert "no verdict within 1 s" in record["error"]
    else:
        assert "connection failed" in record["error"]
    assert elapsed < 5
    assert stored_bytes(live.backend, record["id"]) == payload  # failed, not rejected


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("http://127.0.0.1:3310", "use unix:///path/to/clamd.sock or tcp://host:port"),
        ("/run/clamav/clamd.ctl", "use unix:///path/to/clamd.sock or tcp://host:port"),
        ("unix://clamd.sock", "a unix address needs an absolute path"),
        ("tcp://127.0.0.1", "a tcp address is tcp://host:port"),
        ("tcp://127.0.0.1:99999", "is not a valid address"),
    ],
)
def test_a_bad_address_stops_start_up(address: str, problem: str) -> None:
    settings = parse_settings(
        {"processing": {"pipeline": ["clamav"]}, "plugins": {"clamav": {"address": address}}}
    )
    with pytest.raises(ConfigError) as raised:
        load_pipeline(settings)
    assert str(raised.value).startswith("plugins.clamav.address: ")
    assert problem in str(raised.value)


def test_addresses_that_start_up() -> None:
    for address in ("unix:///run/clamav/clamd.ctl", "tcp://clamav:3310", "tcp://[::1]:3310"):
        settings = parse_settings(
            {"processing": {"pipeline": ["clamav"]}, "plugins": {"clamav": {"address": address}}}
        )
        assert load_pipeline(settings)
