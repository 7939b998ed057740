"""Harness-side clients: run the loadgen programs (or curl) in child processes, read the
figures they print, and talk to a server's JSON API between timed runs.

Single-stream uploads use the sendfile(2) client in `loadgen.py` by default, not curl, for two
reasons measured or checked here: it copies nothing through userspace, so its CPU per GiB is
below curl's; and it reports when the last body byte was handed to the kernel, which the
"202 within 1.1x of the bytes' arrival" target needs and this machine's curl (7.88) cannot
report (`%{time_posttransfer}` came in curl 8.10). `--client curl` uses curl instead, with
`Expect:` switched off so it does not wait a round trip for `100 Continue`.

Client CPU: the loadgen programs measure their own CPU from inside (`getrusage(RUSAGE_SELF)`
around the work), which leaves out the ~50 ms a Python interpreter takes to start; that figure
is the one tabled. The `getrusage(RUSAGE_CHILDREN)` delta around the whole client process, start-up
included, is kept beside it in the JSON (`client_process_cpu_s`); for curl it is the only one.
"""

from __future__ import annotations

import json
import re
import resource
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import Proc, ProcessPool, http_get, http_request
from stores import Store


class ClientError(RuntimeError):
    """A client process failed or printed something unexpected."""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def last_json_line(stdout: str, what: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ClientError(f"{what}: no JSON result in its output: {stdout[-500:]!r}")


@dataclass
class UploadResult:
    """One single-stream upload: when it started, when the last byte went out, the answer."""

    status: int
    body: str
    t_start: float  # time.monotonic(), comparable across processes
    t_end: float
    t_sent: float | None  # last body byte handed to the kernel; None if the client can't tell
    client_cpu_s: float  # the upload's own CPU in the client (see the module docstring)
    client_process_cpu_s: float  # the whole client process, start-up included

    @property
    def seconds(self) -> float:
        return self.t_end - self.t_start

    @property
    def sent_seconds(self) -> float | None:
        return None if self.t_sent is None else self.t_sent - self.t_start

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except json.JSONDecodeError as e:
            raise ClientError(f"HTTP {self.status}, body is not JSON: {self.body[:300]!r}") from e
        if not isinstance(value, dict):
            raise ClientError(f"HTTP {self.status}, unexpected body: {self.body[:300]!r}")
        return value


@dataclass
class Clients:
    """How to start each kind of client; one instance per benchmark run."""

    python: str
    loadgen: Path
    env: Mapping[str, str]
    kind: str = "python"  # or "curl"
    curl_posttransfer: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.kind == "curl":
            curl = shutil.which("curl")
            if curl is None:
                raise SystemExit("--client curl: curl is not installed")
            first = subprocess.run([curl, "--version"], capture_output=True, text=True).stdout
            match = re.match(r"curl (\d+)\.(\d+)", first)
            version = (int(match[1]), int(match[2])) if match else (0, 0)
            self.curl_posttransfer = version >= (8, 10)

    def _loadgen(self, *args: str) -> list[str]:
        return [self.python, str(self.loadgen), *args]

    def _run_loadgen(self, what: str, timeout: float, *args: str) -> tuple[dict[str, Any], float]:
        """Run one loadgen command; its JSON answer and the CPU its process used."""
        return self._run(what, timeout, self._loadgen(*args))

    def _run(self, what: str, timeout: float, argv: list[str]) -> tuple[dict[str, Any], float]:
        cpu0 = children_cpu()
        done = subprocess.run(
            argv, env=dict(self.env), capture_output=True, text=True, timeout=timeout
        )
        cpu = children_cpu() - cpu0
        if done.returncode != 0:
            raise ClientError(f"{what} failed: {done.stderr[-800:]}")
        return last_json_line(done.stdout, what), cpu

    def storetool(self, what: str, timeout: float, *args: str) -> dict[str, Any]:
        """Run one storetool.py command (records written or read through uploadsvc's code)."""
        argv = [self.python, str(self.loadgen.parent / "storetool.py"), *args]
        return self._run(what, timeout, argv)[0]

    def upload(self, url: str, path: Path, timeout: float) -> UploadResult:
        """POST `path` as multipart field `file`; wall time and CPU of the client process."""
        if self.kind == "curl":
            return self._curl_upload(url, path, timeout)
        out, cpu = self._run_loadgen(
            "upload client", timeout + 30, "upload", url, str(path), "--timeout", str(timeout)
        )
        return UploadResult(
            status=int(out["status"]),
            body=str(out["body"]),
            t_start=float(out["t_start"]),
            t_end=float(out["t_end"]),
            t_sent=None if out["t_sent"] is None else float(out["t_sent"]),
            client_cpu_s=float(out["cpu_s"]),
            client_process_cpu_s=cpu,
        )

    def _curl_upload(self, url: str, path: Path, timeout: float) -> UploadResult:
        fmt = "%{http_code} %{time_total}" + (" %{time_posttransfer}" * self.curl_posttransfer)
        with tempfile.NamedTemporaryFile("r", suffix=".body") as body_file:
            argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout)]
            argv += ["-H", "Expect:", "-H", "Accept: application/json"]
            argv += ["-o", body_file.name, "-w", fmt, "-F", f"file=@{path}", url]
            cpu0 = children_cpu()
            t_start = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
            cpu = children_cpu() - cpu0
            body = Path(body_file.name).read_text(errors="replace")
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) < 2:
            raise ClientError(f"curl failed ({done.returncode}): {done.stderr[-800:]}")
        return UploadResult(
            status=int(fields[0]),
            body=body,
            t_start=t_start,
            t_end=t_start + float(fields[1]),  # curl's own clock: no process start-up in it
            t_sent=t_start + float(fields[2]) if len(fields) > 2 else None,
            client_cpu_s=cpu,
            client_process_cpu_s=cpu,
        )

    def concurrent(self, url: str, count: int, size: int, timeout: float) -> dict[str, Any]:
        """`count` uploads of `size` bytes at once from one asyncio client process."""
        out, cpu = self._run_loadgen(
            "concurrent client",
            timeout + 30,
            "concurrent",
            url,
            "--count",
            str(count),
            "--size",
            str(size),
            "--timeout",
            str(timeout),
        )
        out["process_cpu_s"] = cpu
        return out

    def put(
        self,
        store: Store,
        target: str,
        path: Path,
        timeout: float,
        ready: Callable[[], None],
        warm_up: Path | None = None,
    ) -> dict[str, Any]:
        """The store's own library's `put_file`, in a process of its own: the limit.
        `ready` runs just before the timed put; with `warm_up`, that file is put (and
        removed) first, untimed, by the same process, which then waits for `ready`."""
        args = ["put", "--protocol", store.protocol, "--options", json.dumps(store.fs_options)]
        args += ["--target", target, *(["--makedirs"] if store.makedirs else [])]
        what = f"{store.protocol} put_file"
        if warm_up is None:
            ready()
            return self._run_loadgen(what, timeout, *args, str(path))[0]
        argv = self._loadgen(*args, "--warm-up", str(warm_up), "--handshake", str(path))
        deadline = time.monotonic() + timeout
        with subprocess.Popen(
            argv,
            env=dict(self.env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            try:
                if not select.select([proc.stdout], [], [], timeout)[0]:
                    raise ClientError(f"{what}: no warm-up within {timeout:g} s")
                if proc.stdout.readline().strip() != "warm":
                    raise ClientError(f"{what} failed in its warm-up: {proc.communicate()[1]}")
                ready()
                out, err = proc.communicate("go\n", timeout=max(1.0, deadline - time.monotonic()))
            except BaseException:
                proc.kill()
                raise
        if proc.returncode != 0:
            raise ClientError(f"{what} failed: {err[-800:]}")
        return last_json_line(out, what)

    def burst(
        self, url: str, count: int, size: int, kill_pid: int | None, timeout: float
    ) -> dict[str, Any]:
        """`count` background uploads accepted at once; then SIGKILL to `kill_pid`, if given."""
        args = ["burst", url, "--count", str(count), "--size", str(size)]
        args += ["--timeout", str(timeout)]
        args += ["--kill-pid", str(kill_pid)] if kill_pid else []
        return self._run_loadgen("burst client", timeout + 30, *args)[0]

    def get_times(self, url: str, count: int, timeout: float) -> dict[str, Any]:
        """`count` sequential GETs of `url`: each one's seconds and status."""
        args = ["get", url, "--count", str(count), "--timeout", str(timeout)]
        return self._run_loadgen("GET client", timeout * count + 30, *args)[0]

    def start_probe(
        self, pool: ProcessPool, url: str, interval: float, max_seconds: float
    ) -> Probe:
        """Start the /healthz prober and wait until it says it is ready."""
        argv = self._loadgen(
            "probe", url, "--interval", f"{interval:.4f}", "--max-seconds", str(max_seconds)
        )
        proc = pool.start(
            "healthz-probe",
            argv,
            env=self.env,
            cwd=self.loadgen.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        probe = Probe(pool, proc)
        try:
            probe.wait_ready(timeout=30.0)
        except BaseException:
            pool.stop(proc)
            raise
        return probe


@dataclass
class Probe:
    """A running /healthz prober; `stop()` closes its stdin and returns its samples."""

    pool: ProcessPool
    proc: Proc

    def wait_ready(self, timeout: float) -> None:
        stdout = self.proc.popen.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready or b"ready" not in stdout.readline():
            raise ClientError(f"healthz prober did not start: {self.proc.log_tail()}")

    def stop(self) -> list[tuple[float, float, int]]:
        """[(start time, seconds, HTTP status)] of every probe it made."""
        try:
            out, _ = self.proc.popen.communicate(input=b"", timeout=30.0)
        finally:
            self.pool.stop(self.proc)
        result = last_json_line(out.decode(errors="replace"), "healthz prober")
        return [(float(t), float(s), int(code)) for t, s, code in result["samples"]]


def wait_completed(
    port: int, status_path: str, timeout: float, interval: float = 0.05
) -> tuple[float, dict[str, Any], float]:
    """Poll an upload's status until `completed` or `failed`.

    Returns (monotonic time the final status was seen, the record, slowest poll in seconds).
    Polling every 50 ms adds at most that to the measured completion time, under 2 % of the
    shortest background row; a poll costs the server about a millisecond of CPU. A slow poll
    is not an error (each may take up to 60 s): it is reported, since a status request that
    waits seconds means the server's event loop stalled while it stored in the background.
    """
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    slowest = 0.0
    while time.monotonic() < deadline:
        asked = time.monotonic()
        status, body = http_get(port, status_path, timeout=60.0)
        now = time.monotonic()
        slowest = max(slowest, now - asked)
        if status != 200:
            raise ClientError(f"GET {status_path}: HTTP {status}: {body[:300]!r}")
        record = json.loads(body)
        if record.get("status") in ("completed", "failed"):
            return now, record, slowest
        time.sleep(interval)
    raise ClientError(f"upload not completed after {timeout:.0f} s; last record: {record}")


def delete_upload(port: int, upload_id: str) -> None:
    """Remove a benchmark upload through the API so storage does not fill up between runs."""
    status, body = http_request(port, "DELETE", f"/uploads/{upload_id}")
    if status not in (200, 204):
        raise ClientError(f"DELETE /uploads/{upload_id}: HTTP {status}: {body[:300]!r}")
