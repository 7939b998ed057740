"""The shipped `delay` plugin over a real uvicorn: it holds the blocking answer, not the loop.

The plugin is named in the settings and loaded from plugins/ by name, as a user's
`config.toml` would. Times are compared with the configured delay, not with fixed
numbers, so the tests say what they mean whatever the delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import wait_for_status, wait_until
from tests.backends import Backend
from tests.conftest import Live, make_settings
from uploadsvc.config import ConfigError
from uploadsvc.pipeline import load_pipeline

# The plugin does not touch the storage: one backend says all there is to say.
pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

DELAY = 2.0
#: "Fast": a request during the delay must answer within this share of it. A loop
#: blocked by the plugin would hold it for the rest of the delay instead.
FAST = DELAY / 3


@pytest.fixture
def live(live_factory: Callable[..., Live], backend: Backend, tmp_path: Path) -> Live:
    return live_factory(
        make_settings(
            backend,
            tmp_path,
            max_upload_bytes=32 << 20,
            pipeline=["delay"],
            plugins={"delay": {"seconds": DELAY}},
        )
    )


def test_blocking_upload_answers_after_the_delay_while_health_checks_stay_fast(
    live: Live,
) -> None:
    outcome: dict[str, Any] = {}

    def upload() -> None:
        started = time.monotonic()
        outcome["response"] = live.http.post("/upload-blocking/", files={"file": ("a", b"x")})
        outcome["elapsed"] = time.monotonic() - started

    uploading = threading.Thread(target=upload)
    uploading.start()
    # Every request of this second client is timed, the polls included: a blocked
    # loop would hold whichever one is in flight.
    times: list[float] = []
    with httpx.Client(base_url=live.url, timeout=10) as other:

        def timed_get(path: str) -> httpx.Response:
            started = time.monotonic()
            response = other.get(path)
            times.append(time.monotonic() - started)
            return response

        # The delay has begun once the record says `processing`.
        wait_until(
            lambda: any(r["status"] == "processing" for r in timed_get("/uploads").json()["items"])
        )
        # Spread over half the delay, so the checks overlap the wait, not just its start.
        for _ in range(5):
            assert timed_get("/healthz").status_code == 200
            time.sleep(DELAY / 10)
        still_waiting = uploading.is_alive()
    uploading.join(timeout=30)

    assert max(times) < FAST, times
    assert still_waiting, "the upload answered before the health checks were done"
    response = outcome["response"]
    assert response.status_code == 201, response.text
    assert outcome["elapsed"] >= DELAY
    assert response.json()["status"] == "completed"
    assert response.json()["results"] == {"delay": {"slept": DELAY}}


def test_background_upload_answers_at_once_and_completes_after_the_delay(live: Live) -> None:
    started = time.monotonic()
    response = live.http.post("/upload-nonblocking/", files={"file": ("a", b"x")})
    answered = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert answered < DELAY / 2
    upload_id = response.json()["id"]
    # Not done yet: the job is somewhere before or in the delay.
    assert live.http.get(f"/uploads/{upload_id}").json()["status"] in {
        "queued",
        "storing",
        "processing",
    }

    record = wait_for_status(live, upload_id, timeout=DELAY + 20)
    assert time.monotonic() - started >= DELAY
    assert record["status"] == "completed", record
    assert record["results"]["delay"]["slept"] == DELAY


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"seconds": -1}, "plugins.delay.seconds:"),
        ({"seconds": "5"}, "plugins.delay.seconds:"),
        ({"seconds": float("inf")}, "plugins.delay.seconds:"),
        ({"second": 5}, "plugins.delay.second:"),
    ],
)
def test_a_wrong_option_stops_start_up_naming_it(
    backend: Backend, tmp_path: Path, options: dict[str, Any], where: str
) -> None:
    settings = make_settings(
        backend, tmp_path, max_upload_bytes=32 << 20, pipeline=["delay"], plugins={"delay": options}
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(settings)
    assert str(caught.value).startswith(where)
