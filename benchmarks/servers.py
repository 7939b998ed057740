"""Start and stop the server processes a benchmark needs, and read their costs from /proc.

Why a module of its own: every process the harness starts has to die at the end, even when
a row fails half-way or the user presses Ctrl-C. `ProcessPool` is the one place that starts
the servers and clients under test (each in a session of its own, so a server's helpers die
with it) and the one place that stops them, so that promise is checked in one spot. The
emulators are the exception: the test suite's own context managers start and stop them
(see stores.py), and the harness enters them in `with` blocks that end on any way out.

Costs are read from outside the server, from /proc, the way an operator would see them:
  * peak RSS is `VmHWM` from /proc/PID/status, the kernel's own high-water mark. It only ever
    grows, which is why the harness starts a fresh server for every row.
  * CPU is utime + stime from /proc/PID/stat (clock ticks; 10 ms on this kernel), summed over
    the server's whole process tree: the process started and its live descendants, plus
    what its ended children used (cutime + cstime, counted once, in their reaper). With one
    worker, `uploadsvc serve` and `uvicorn` run everything in the one process; `uploadsvc
    serve --workers N` runs a supervising parent, N worker processes and multiprocessing's
    resource tracker, all counted. An emulator's CPU is read the same way (sshd serves each
    connection in processes that end with it).
  * Peak RSS is the largest VmHWM of the tree's processes (one worker's, with several); the
    sum over the processes is there too, for rows with several workers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"  # the only address the harness ever listens on or connects to
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ServerStartError(RuntimeError):
    """A server did not answer its readiness check: the message carries its log's tail."""


@dataclass
class Proc:
    """A process the pool started, with the file its stdout and stderr go to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the process printed: what a reader needs when it failed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessPool:
    """Owns every long-running child process; `close()` (or leaving the `with`) stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[Proc] = []
        self._counter = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> Proc:
        """Start `argv` in a new session; output goes to a log file unless `stdout` is given."""
        self._counter += 1
        log_path = self._log_dir / f"{self._counter:02d}-{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                start_new_session=True,  # own process group: stop() reaches its helpers too
            )
        proc = Proc(name, popen, log_path)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """SIGTERM the process group, wait a bounded time, then SIGKILL it.

        The leader is waited for without being reaped (WNOWAIT), so while its group is
        signalled its id is still a zombie's and cannot belong to any other process.
        """
        if proc in self._procs:
            self._procs.remove(proc)
        if proc.popen.returncode is None:  # not reaped yet: its group id is still ours
            _signal_group(proc.pid, signal.SIGTERM)
            if not _exited(proc.pid, STOP_TIMEOUT_S):
                _signal_group(proc.pid, signal.SIGKILL)
                _exited(proc.pid, STOP_TIMEOUT_S)
            _signal_group(proc.pid, signal.SIGKILL)  # helpers left in the group, if any
            proc.popen.wait(timeout=STOP_TIMEOUT_S)
        for stream in (proc.popen.stdin, proc.popen.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """Stop everything still running, newest first."""
        for proc in reversed(list(self._procs)):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others whatever happens
                print(f"warning: could not stop {proc.name} (pid {proc.pid}): {e}")

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` for a child to exit, leaving it unreaped (a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True  # already reaped elsewhere
        time.sleep(0.02)
    return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group that `start_new_session` made for `pid` (pgid == pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class Server:
    """An HTTP server process on 127.0.0.1 and how to read its costs."""

    proc: Proc
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """The whole tree's: the process, its live descendants and its ended children."""
        return tree_cpu_seconds(self.proc.pid, reaped_children=True)

    def peak_rss_bytes(self) -> int:
        """The largest peak RSS of one process of the tree."""
        return tree_peak_rss_bytes(self.proc.pid)

    def total_peak_rss_bytes(self) -> int:
        """The peaks of every live process of the tree, added (several workers)."""
        return tree_peak_rss_bytes(self.proc.pid, total=True)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (closed again, so the server can take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; returns (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_request(port: int, method: str, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """One bodiless request (DELETE after a run) on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc: Proc, port: int, path: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll `path` until it answers below 500; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise ServerStartError(
                f"{proc.name} exited with status {proc.popen.returncode} before it was ready:\n"
                f"{proc.log_tail()}"
            )
        try:
            status, _ = http_get(port, path, timeout=2.0)
            if status < 500:
                return
            last_error = f"HTTP {status}"
        except OSError as e:
            last_error = str(e)
        time.sleep(0.05)
    raise ServerStartError(
        f"{proc.name} not ready on port {port} after {timeout:.0f} s ({last_error}):\n"
        f"{proc.log_tail()}"
    )


# ---------------------------------------------------------------- the servers under test


@dataclass(frozen=True)
class Processing:
    """`[processing]` and `[plugins.<name>]` of a benchmark server: no pipeline by default."""

    pipeline: tuple[str, ...] = ()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    timeout_seconds: float | None = None


def start_uploadsvc(
    pool: ProcessPool,
    *,
    python: str,
    env: Mapping[str, str],
    workdir: Path,
    storage_url: str,
    storage_options: Mapping[str, Any],
    staging: Path,
    name: str,
    jobs: Mapping[str, float] | None = None,
    processing: Processing | None = None,
    workers: int | None = None,
) -> Server:
    """`python -m uploadsvc serve --config ... [--workers N]`: the documented way to run the
    service. With `workers`, it is ready once every worker has said its start-up is done."""
    port = free_port()
    config = workdir / f"{name}.toml"
    config.write_text(
        uploadsvc_config(
            port=port,
            storage_url=storage_url,
            options=storage_options,
            staging=staging,
            jobs=jobs or {},
            processing=processing or Processing(),
        )
    )
    argv = [python, "-m", "uploadsvc", "serve", "--config", str(config)]
    argv += ["--host", HOST, "--port", str(port)]
    argv += [] if workers is None else ["--workers", str(workers)]
    return _start_app(pool, name, argv, env, workdir, port, workers=workers or 1)


def uploadsvc_config(
    *,
    port: int,
    storage_url: str,
    options: Mapping[str, Any],
    staging: Path,
    jobs: Mapping[str, float],
    processing: Processing,
) -> str:
    """The TOML file for one benchmark server. JSON string syntax is valid TOML basic-string
    syntax, so `json.dumps` quotes paths and URLs safely without a TOML writer (and writes
    the lists some storage options hold as valid TOML arrays)."""
    lines = [
        "[server]",
        f"host = {json.dumps(HOST)}",
        f"port = {port}",
        "",
        "[storage]",
        f"url = {json.dumps(storage_url)}",
        "",
        "[storage.options]",
        *(f"{key} = {json.dumps(value)}" for key, value in options.items()),
        "",
        "[staging]",
        f"path = {json.dumps(str(staging))}",
        "",
        "[limits]",
        "max_upload_bytes = 8589934592  # 8 GiB: the limit must never be what is measured",
        "",
        "[jobs]",
        *(f"{key} = {value}" for key, value in jobs.items()),
        "",
        "[processing]",
        f"pipeline = {json.dumps(list(processing.pipeline))}",
        *(
            [f"timeout_seconds = {processing.timeout_seconds}"]
            if processing.timeout_seconds is not None
            else []
        ),
        "",
    ]
    for plugin, plugin_options in processing.plugins.items():
        lines += [f"[plugins.{plugin}]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in plugin_options.items()]
        lines += [""]
    return "\n".join(lines)


def start_baseline(
    pool: ProcessPool,
    *,
    python: str,
    env: Mapping[str, str],
    bench_dir: Path,
    workdir: Path,
    upload_dir: Path,
    name: str,
) -> Server:
    """The tutorial-style peer app, under `python -m uvicorn` with one worker.

    uvicorn's defaults pick uvloop and httptools when installed, the same loop and parser
    `uploadsvc serve` asks for, so the comparison is between the apps, not the servers.
    """
    port = free_port()
    argv = [python, "-m", "uvicorn", "baseline_app:app", "--app-dir", str(bench_dir)]
    argv += ["--host", HOST, "--port", str(port), "--workers", "1"]
    argv += ["--loop", "uvloop", "--http", "httptools", "--log-level", "info"]
    env = {**env, "BASELINE_UPLOAD_DIR": str(upload_dir)}
    return _start_app(pool, name, argv, env, workdir, port)


def _start_app(
    pool: ProcessPool,
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    workdir: Path,
    port: int,
    workers: int = 1,
) -> Server:
    """Start an app server and wait until its /healthz answers (and, with several workers,
    until each has finished its start-up); stop it if it never does."""
    proc = pool.start(name, argv, env=env, cwd=workdir)
    try:
        wait_ready(proc, port, "/healthz")
        if workers > 1:
            wait_workers(proc, workers)
    except ServerStartError:
        pool.stop(proc)
        raise
    return Server(proc, port)


#: What uvicorn logs once one worker's application start-up is done.
STARTUP_COMPLETE = "Application startup complete."


def wait_workers(proc: Proc, workers: int, timeout: float = START_TIMEOUT_S) -> None:
    """Wait until `workers` workers have logged the end of their start-up: /healthz answers
    as soon as the first is up, and a worker still importing would be timed in a row."""
    deadline = time.monotonic() + timeout
    started = 0
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise ServerStartError(
                f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        started = proc.log_path.read_text(errors="replace").count(STARTUP_COMPLETE)
        if started >= workers:
            return
        time.sleep(0.05)
    raise ServerStartError(
        f"{proc.name}: {started} of {workers} workers started after {timeout:.0f} s:\n"
        f"{proc.log_tail()}"
    )


# ---------------------------------------------------------------- /proc readers


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and ')')."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants, found through each process's parent id."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(entry))
    tree: list[int] = []
    todo = [pid]
    while todo and len(tree) < 10_000:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of one process (all its threads, living or ended), in seconds; with
    `reaped_children`, also cutime + cstime: what its children used that it waited for."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process has had since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def tree_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """CPU of `pid` and its live descendants; with `reaped_children`, also of the ended ones
    (each counted once: an ended process's time is in its reaper's cutime + cstime)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(member, reaped_children)
    return total


def tree_peak_rss_bytes(pid: int, total: bool = False) -> int:
    """The largest VmHWM of `pid`'s live tree, or with `total` their sum."""
    peaks = [0]
    for member in process_tree(pid):
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            peaks.append(peak_rss_bytes(member))
    return sum(peaks) if total else max(peaks)
