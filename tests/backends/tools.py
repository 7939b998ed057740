"""Real servers for the tests: find or install them, run them on 127.0.0.1.

The test command installs what a backend needs when it is missing (a Debian
package with apt, an npm package into `.cache/npm` of the checkout), so a
fresh machine needs nothing beforehand; each server runs in its own process on
a free port, once per test session, and is stopped at the end.

Each backend module starts its server with a plain context manager,
`serve(workdir)`, which its session fixture wraps; the benchmark
(benchmarks/stores.py) enters the same one, so the two never drift apart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
NPM_PREFIX = CHECKOUT / ".cache" / "npm"


@dataclass(frozen=True)
class Served:
    """A server a backend module runs: where it listens, and its process id, so a
    benchmark can charge the server's CPU to the server and not to the code under test."""

    address: str  # "127.0.0.1:PORT"
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apt_program(program: str, package: str) -> str:
    """The path of `program`, installing the Debian `package` first when missing."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    assert found, f"{package} installed, but {program} is not on the PATH"
    return found


def npm_program(program: str, package: str) -> str:
    """`node_modules/.bin/<program>` under `.cache/npm`, installing `package` when missing."""
    return str(npm_file(Path(".bin") / program, package))


def npm_file(relative: Path, package: str) -> Path:
    """`node_modules/<relative>` under `.cache/npm`, installing `package` when missing."""
    path = NPM_PREFIX / "node_modules" / relative
    if not path.exists():
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", package],
            check=True,
            capture_output=True,
        )
    assert path.exists(), f"npm installed {package}, but not {relative}"
    return path


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not listen on port {port} in {timeout:g} s")


@contextmanager
def running(
    args: Sequence[str], port: int, *, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server until the block ends; its output goes to `log` (read it when it fails)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            wait_for_port(port, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
