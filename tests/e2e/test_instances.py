"""Three instances on one bucket, staging in the bucket: any instance serves any upload.

Requests go round-robin to three real service processes sharing an S3 bucket
(moto's server) for storage and for staging. Every instance lists, serves and
deletes uploads another one accepted; the instance that holds background jobs
is killed with SIGKILL, and the others finish its jobs once its leases run
out, each processed to completion exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import Counter
from itertools import cycle
from pathlib import Path

import httpx
import pytest

from tests.backends import Backend
from tests.backends.s3 import S3Backend
from tests.e2e.conftest import Instance, plugin_env, write_toml

LEASE = 3.0


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_three_instances_share_uploads_and_finish_each_others_jobs(
    backend: Backend, tmp_path: Path, plugin_site: Path, instances: list[Instance]
) -> None:
    assert isinstance(backend, S3Backend)
    staging_url = backend.url.rsplit("/", 1)[0] + "/staging"
    log = tmp_path / "runs.log"
    config = write_toml(
        tmp_path / "service.toml",
        {
            "storage": {"url": backend.url, "options": backend.options},
            "staging": {"url": staging_url},  # [storage.options] apply: same protocol
            "jobs": {"lease_seconds": LEASE, "grace_seconds": 2.0},
            "processing": {"pipeline": ["countruns"]},
            "plugins": {"countruns": {"log": str(log), "seconds": 2.0}},
        },
    )
    env = plugin_env(plugin_site)
    trio = [Instance(config, env, tmp_path / f"{n}.log") for n in ("a", "b", "c")]
    instances += trio
    for instance in trio:
        instance.wait_healthy()

    # Blocking uploads round-robin; every instance answers for every upload.
    payloads = {}
    rotation = cycle(trio)
    for i in range(3):
        data = os.urandom(1 << 20)
        record = httpx.post(
            f"{next(rotation).url}/upload-blocking/", files={"file": (f"g{i}", data)}, timeout=30
        ).json()
        payloads[record["id"]] = data
    # The first instance accepts every background upload, so it holds their jobs.
    for i in range(4):
        data = os.urandom((i + 1) << 20)
        answer = httpx.post(f"{trio[0].url}/upload-nonblocking/", files={"file": (f"f{i}", data)})
        assert answer.status_code == 202
        payloads[answer.json()["id"]] = data
    for upload_id in payloads:
        assert httpx.get(f"{next(rotation).url}/uploads/{upload_id}").status_code == 200

    background = list(payloads)[3:]
    while not any(line.split()[1] in background for line in _lines(log)):
        time.sleep(0.02)
    holders = Counter(_owner_pid(backend, i) for i in background) - Counter({None: len(payloads)})
    assert holders and set(holders) == {trio[0].proc.pid}, holders
    assert trio[0].kill(signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()

    survivors = trio[1:]
    deadline = killed + LEASE + 20  # lease, a sweep, storing and 2 s of processing each
    while True:
        statuses = {
            i: httpx.get(f"{survivors[n % 2].url}/uploads/{i}").json()["status"]
            for n, i in enumerate(payloads)
        }
        if set(statuses.values()) == {"completed"}:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.1)
    print(f"\nthree instances: the killed one's jobs done {time.monotonic() - killed:.1f} s later")

    ends = Counter(line.split()[1] for line in _lines(log) if line.startswith("end"))
    assert ends == Counter(dict.fromkeys(payloads, 1)), ends
    for n, (upload_id, data) in enumerate(payloads.items()):
        content = httpx.get(f"{survivors[n % 2].url}/uploads/{upload_id}/content")
        assert content.content == data
        assert hashlib.sha256(content.content).hexdigest() == hashlib.sha256(data).hexdigest()
    listed = httpx.get(f"{survivors[1].url}/uploads?limit=100").json()["items"]
    assert {r["id"] for r in listed} == set(payloads)

    gone = next(iter(payloads))
    assert httpx.delete(f"{survivors[0].url}/uploads/{gone}").status_code == 204
    assert httpx.get(f"{survivors[1].url}/uploads/{gone}").status_code == 404
    deadline = time.monotonic() + 10  # a staged copy the killed instance did not remove
    while _keys(backend, "staging/"):  # goes with the survivors' next leftover sweep
        assert time.monotonic() < deadline, _keys(backend, "staging/")
        time.sleep(0.2)


def _keys(backend: S3Backend, prefix: str) -> list[str]:
    listing = backend.s3.list_objects_v2(Bucket=backend.bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _owner_pid(backend: S3Backend, upload_id: str) -> int | None:
    """The process holding the upload's job, from its record in the bucket."""
    body = backend.s3.get_object(
        Bucket=backend.bucket,
        Key=f"uploads/{upload_id}.json",
    )["Body"].read()
    job = json.loads(body)["job"]
    return int(job["owner"].split("/")[1]) if job and job["owner"] else None
