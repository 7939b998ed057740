"""A store that goes away while the service runs: /healthz says so, then recovers.

The store is reached through a proxy (tests/faults.py) that the test cuts,
on every backend that is on the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.backends import Backend
from tests.conftest import Live, make_settings
from tests.faults import proxy_to


def test_healthz_is_503_while_the_store_is_down_and_200_when_it_is_back(
    backend: Backend, live_factory: Callable[..., Live], tmp_path: Path
) -> None:
    if backend.endpoint is None:
        pytest.skip(f"{backend.name} is not on the network: it cannot go down")
    with proxy_to(backend.endpoint) as proxy:
        through = backend.via(proxy.address)
        assert through is not None
        live = live_factory(make_settings(through, tmp_path, max_upload_bytes=1 << 20))
        assert live.http.get("/healthz").status_code == 200
        proxy.cut()
        down = live.http.get("/healthz")
        assert (down.status_code, down.json()["code"]) == (503, "storage_unavailable")
        proxy.restore()
        assert live.http.get("/healthz").status_code == 200
        assert live.http.post("/upload-blocking/", files={"file": ("a", b"abc")}).status_code == 201
