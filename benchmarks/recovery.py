"""Recovery time: from restarting a SIGKILLed service to every interrupted background upload
completed.

One run: a fresh server with `[jobs] lease_seconds = LEASE_S` accepts a burst of background
uploads (20 x 4 MiB, their last bytes sent together so they are accepted within milliseconds
of each other: loadgen.py `burst`); the moment the last 202 is in, the client SIGKILLs the
server. storetool then reads the records straight from the store: those not `completed` are
the interrupted uploads (none is an error: nothing would be measured). A new server process
starts on the same configuration (same store, same staging folder); the clock runs from its
start until one `GET /uploads` shows every upload completed, with the size and sha256 the
client sent (polled every 50 ms).

Three figures per run, medians over the runs:
  * ready: start to the first healthy /healthz (interpreter start, imports, storage check);
  * recovered: start to every upload completed;
  * after leases: recovered, counted from when the last lease the dead server held ran out
    (or from the start, if that was earlier). Uploads still `queued` are taken at once by
    the start-up sweep; those being stored wait for their lease to expire, then for the
    next sweep (every lease / 2), then for the work itself. This is the service's own part.
The lease is short so the figure shows the service rather than the wait: with the default
30 s, recovery would be 30 s of waiting. It is reported beside the figures.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import clients
import scenarios
import servers
from scenarios import Bench, BenchError, fresh_root, serving
from workspace import MiB

LEASE_S = 2.0
UPLOADS = 20
SIZE = 4 * MiB
POLL_S = 0.05
TIMEOUT_S = 120.0


@dataclass
class RecoveryResult:
    """Recovery after SIGKILL on one storage, over `runs`."""

    storage: str
    uploads: int = UPLOADS
    size: int = SIZE
    lease_s: float = LEASE_S
    runs: list[dict[str, Any]] = field(default_factory=list)
    interrupted: str | None = None  # per run: how many, and their statuses at the SIGKILL
    ready_s: float | None = None
    recovered_s: float | None = None
    after_leases_s: float | None = None
    error: str | None = None

    def summarise(self) -> None:
        def med(key: str) -> float:
            return float(statistics.median(r[key] for r in self.runs))

        self.ready_s, self.recovered_s = med("ready_s"), med("recovered_s")
        self.after_leases_s = med("after_leases_s")
        self.interrupted = "; ".join(
            f"{r['interrupted']} ({', '.join(f'{n} {s}' for s, n in r['at_kill'].items())})"
            for r in self.runs
        )


def measure(bench: Bench, storage: str) -> RecoveryResult:
    res = RecoveryResult(storage)
    for _ in range(bench.runs):
        res.runs.append(one_run(bench, storage))
    res.summarise()
    return res


def one_run(bench: Bench, storage: str) -> dict[str, Any]:
    name = bench.fresh_name(f"recovery-{storage}")
    workdir = bench.ws.dir(f"rows/{name}")
    root = fresh_root(bench, storage, name)
    jobs = {"lease_seconds": LEASE_S}
    with serving(bench, name, root, workdir=workdir, jobs=jobs) as first:
        bench.prepare(UPLOADS * SIZE)
        burst = bench.clients.burst(
            first.base_url + "/upload-nonblocking/", UPLOADS, SIZE, first.proc.pid, TIMEOUT_S
        )
        if first.proc.popen.wait(timeout=10) != -signal.SIGKILL:
            raise BenchError(f"the server was not killed: {first.proc.popen.returncode}")
    sent = accepted(burst["uploads"])
    at_kill = statuses(bench, root, list(sent))
    interrupted = {i: r for i, r in at_kill.items() if r["status"] != "completed"}
    if not interrupted:
        raise BenchError("every upload had completed before the SIGKILL: nothing to recover")
    leases = [r["lease_until"] for r in interrupted.values() if r["lease_until"]]
    # Epoch seconds (the records' clock) to this process's monotonic clock.
    leases_end = max(leases) - time.time() + time.monotonic() if leases else None

    began = time.monotonic()
    with serving(bench, f"{name}-restart", root, workdir=workdir, jobs=jobs) as second:
        ready = time.monotonic()
        done = wait_all_completed(second.port, sent)
        for upload_id in sent:
            clients.delete_upload(second.port, upload_id)
    scenarios.log(f"    {len(interrupted)} interrupted; all completed {done - began:.2f} s after")
    return {
        "interrupted": len(interrupted),
        "at_kill": dict(sorted(Counter(r["status"] for r in interrupted.values()).items())),
        "answered_s": burst["t_answered"] - burst["t_go"],
        "ready_s": ready - began,
        "recovered_s": done - began,
        "after_leases_s": done - max(began, leases_end or began),
    }


def accepted(uploads: list[dict[str, Any]]) -> dict[str, str]:
    """id -> sha256 of what was sent; every upload of the burst must have had its 202."""
    refused = [u for u in uploads if u["status"] != 202 or "id" not in u]
    if refused:
        first = refused[0]
        raise BenchError(
            f"{len(refused)} of {len(uploads)} burst uploads not accepted: "
            f"HTTP {first['status']} {first.get('error', '')[:200]}"
        )
    return {u["id"]: u["sha256"] for u in uploads}


def statuses(bench: Bench, root: tuple[str, dict[str, Any]], ids: list[str]) -> dict[str, Any]:
    url, options = root
    out = bench.clients.storetool(
        "reading records", 60.0, "statuses", url, "--options", json.dumps(options), *ids
    )
    found: dict[str, Any] = out["records"]
    return found


def wait_all_completed(port: int, sent: dict[str, str]) -> float:
    """Poll one listing until every sent upload is completed with the bytes sent; when."""
    deadline = time.monotonic() + TIMEOUT_S
    path = f"/uploads?limit={len(sent)}"
    while True:
        status, body = servers.http_get(port, path, timeout=30.0)
        now = time.monotonic()
        if status != 200:
            raise BenchError(f"GET {path}: HTTP {status}: {body[:300]!r}")
        records = {r["id"]: r for r in json.loads(body)["items"] if r["id"] in sent}
        failed = [r for r in records.values() if r["status"] == "failed"]
        if failed:
            raise BenchError(f"upload {failed[0]['id']} failed: {failed[0].get('error')}")
        if len(records) == len(sent) and all(r["status"] == "completed" for r in records.values()):
            wrong = [i for i, r in records.items() if r["sha256"] != sent[i]]
            if wrong:
                raise BenchError(f"{len(wrong)} uploads completed with other bytes than sent")
            return now
        if now > deadline:
            states = Counter(r["status"] for r in records.values())
            raise BenchError(f"not all completed after {TIMEOUT_S:.0f} s: {dict(states)}")
        time.sleep(POLL_S)
