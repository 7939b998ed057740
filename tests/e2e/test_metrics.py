"""`GET /metrics` on real service processes: the counters move exactly with what
happens, start from zero at each start, and add up across worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import wait_until
from tests.e2e.conftest import Instance, plugin_env, write_toml


def scrape(instance: Instance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, by name and sorted labels."""
    answer = httpx.get(f"{instance.url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _config(tmp_path: Path, **server: object) -> Path:
    return write_toml(
        tmp_path / "service.toml",
        {
            "server": dict(server),
            "storage": {"url": f"file://{tmp_path / 'store'}"},
            "staging": {"url": f"file://{tmp_path / 'staging'}"},
            "limits": {"max_upload_bytes": 1 << 20},
            "processing": {"pipeline": ["delay"]},
            "plugins": {"delay": {"seconds": 0.05}},
        },
    )


def _start(tmp_path: Path, instances: list[Instance], name: str, config: Path) -> Instance:
    instance = Instance(config, plugin_env(Path(os.devnull)), tmp_path / f"{name}.log")
    instances.append(instance)
    instance.wait_healthy()
    return instance


def test_counters_move_exactly_and_start_from_zero_at_each_start(
    tmp_path: Path, instances: list[Instance]
) -> None:
    config = _config(tmp_path)
    first = _start(tmp_path, instances, "first", config)
    before = scrape(first)
    assert value(before, "uploadsvc_uploads_total", path="blocking", outcome="2xx") == 0

    small, other = os.urandom(1000), os.urandom(3000)
    sizes = []
    with httpx.Client(timeout=30) as client:
        for path, data in (("/upload-blocking/", small), ("/upload-nonblocking/", other)):
            request = client.build_request(
                "POST", f"{first.url}{path}", files={"file": ("f", data)}
            )
            sizes.append(len(request.read()))
            answer = client.send(request)
            assert answer.status_code in (201, 202), answer.text
    too_large = httpx.post(
        f"{first.url}/upload-blocking/", files={"file": ("big", os.urandom(2 << 20))}, timeout=30
    )
    assert too_large.status_code == 413
    upload_id = answer.json()["id"]
    wait_until(
        lambda: httpx.get(f"{first.url}/uploads/{upload_id}").json()["status"] == "completed"
    )

    after = scrape(first)
    assert value(after, "uploadsvc_uploads_total", path="blocking", outcome="2xx") == 1
    assert value(after, "uploadsvc_uploads_total", path="background", outcome="2xx") == 1
    assert (
        value(after, "uploadsvc_uploads_total", path="blocking", outcome="payload_too_large") == 1
    )
    # Refused by its Content-Length before a byte was read: it adds nothing.
    assert value(after, "uploadsvc_received_bytes_total") == sum(sizes)
    assert value(after, "uploadsvc_upload_duration_seconds_count", path="blocking") == 2
    assert value(after, "uploadsvc_upload_duration_seconds_count", path="background") == 1
    assert value(after, "uploadsvc_uploads_in_progress", path="blocking") == 0
    assert (
        value(after, "uploadsvc_processor_duration_seconds_count", processor="delay", outcome="ok")
        == 2
    )
    assert (
        value(after, "uploadsvc_processor_duration_seconds_sum", processor="delay", outcome="ok")
        >= 0.09  # two sleeps of 0.05 s: asyncio's timers may wake a hair early
    )
    for status in ("queued", "storing", "processing"):
        assert ("uploadsvc_jobs", (("status", status),)) in after

    assert first.kill(signal.SIGTERM) == -signal.SIGTERM  # uvicorn re-raises it once done
    second = _start(tmp_path, instances, "second", config)
    restarted = scrape(second)
    assert value(restarted, "uploadsvc_uploads_total", path="blocking", outcome="2xx") == 0
    assert value(restarted, "uploadsvc_received_bytes_total") == 0


def test_two_workers_report_the_whole_service_on_every_scrape(
    tmp_path: Path, instances: list[Instance]
) -> None:
    service = _start(tmp_path, instances, "pair", _config(tmp_path, workers=2))
    uploads = 12
    with httpx.Client(timeout=30) as client:  # new connections spread over both workers
        for i in range(uploads):
            answer = client.post(
                f"{service.url}/upload-blocking/",
                files={"file": (f"f{i}", b"x" * 100)},
                headers={"Connection": "close"},
            )
            assert answer.status_code == 201
    pids = {
        line for line in service.log.read_text().splitlines() if "Started server process" in line
    }
    assert len(pids) == 2, service.log.read_text()
    for _ in range(6):  # whichever worker answers, it counts both
        samples = scrape(service)
        assert value(samples, "uploadsvc_uploads_total", path="blocking", outcome="2xx") == uploads
        assert value(samples, "uploadsvc_upload_duration_seconds_count", path="blocking") == uploads
    # SIGTERM, not the fixture's SIGKILL: uvicorn's supervisor then stops its workers,
    # which a killed supervisor would leave running.
    service.kill(signal.SIGTERM)
