"""What the end-to-end tests share: a package of test plugins installed as a user
would install one, and the service run as a real process.

`plugin_site` builds `uploadsvc-testplugins` and installs it with pip into a
folder of its own (added to PYTHONPATH of the service processes, never to
the test process). It registers, through the entry point groups a third
party would use:
  - storage backends `tiny://FOLDER` (a local folder under another name),
    `weak://FOLDER` (the same, declaring too few abilities), and
    `slow://FOLDER` (a local folder whose reads take `delay` seconds per
    block, so a crash can be aimed at an upload being stored);
  - the processor `countruns`, which appends `start <id>` and `end <id>`
    to the file in its `log` option around a sleep of `seconds`, so a test
    counts how often each upload was processed, and to completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends.tools import apt_program, free_port, running

_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "uploadsvc-testplugins"
version = "1.0"

[tool.hatch.build.targets.wheel]
packages = ["testplugins"]

[project.entry-points."uploadsvc.storage"]
tiny = "testplugins.stores:TinyStorage"
weak = "testplugins.stores:WeakStorage"
slow = "testplugins.stores:SlowStorage"

[project.entry-points."uploadsvc.plugins"]
countruns = "testplugins.countruns:CountRuns"
"""

_STORES = '''
"""Storage backends a third party could write: local folders under other names."""
import asyncio

from uploadsvc.storage import Ability
from uploadsvc.storage.local import LocalStorage


class TinyStorage(LocalStorage):
    @classmethod
    def from_url(cls, url, options):
        return cls.at(url.split("://", 1)[1])


class WeakStorage(TinyStorage):
    abilities = frozenset({Ability.atomic_commit, Ability.consistent_listing})


class SlowStorage(TinyStorage):
    delay = 0.0

    @classmethod
    def from_url(cls, url, options):
        storage = super().from_url(url, {})
        storage.delay = float(options.get("delay", 0))
        return storage

    def local_path(self, key):
        return None  # no hard link: copies read through `read`, slowly

    async def read(self, key, start=0, end=None):
        async for block in super().read(key, start, end):
            await asyncio.sleep(self.delay)
            yield block
'''

_COUNTRUNS = '''
"""A processor that logs each run's start and end around a sleep."""
import asyncio
import os

from uploadsvc import plugin


class CountRuns(plugin.Processor):
    class Options(plugin.Options):
        log: str
        seconds: float = 0

    def _note(self, line):
        fd = os.open(self.options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def process(self, upload):
        self._note(f"start {upload.record.id}\\n")
        await asyncio.sleep(self.options.seconds)
        self._note(f"end {upload.record.id}\\n")
        return {"slept": self.options.seconds}
'''


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugins installed by pip into a folder of their own."""
    work = tmp_path_factory.mktemp("plugins")
    source = work / "source"
    (source / "testplugins").mkdir(parents=True)
    (source / "pyproject.toml").write_text(_PYPROJECT)
    (source / "testplugins" / "__init__.py").write_text("")
    (source / "testplugins" / "stores.py").write_text(_STORES)
    (source / "testplugins" / "countruns.py").write_text(_COUNTRUNS)
    target = work / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, timeout=120)
    return target


def plugin_env(site: Path) -> dict[str, str]:
    """The environment of a service process that sees the test plugins."""
    env = {k: v for k, v in os.environ.items() if k != "UPLOADSVC_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    return env


class Instance:
    """`python -m uploadsvc serve` as a real process on a free port (or, with
    `worker=True`, `uploadsvc worker`, which has no port)."""

    def __init__(self, config: Path, env: dict[str, str], log: Path, worker: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        command = ["-m", "uploadsvc", "worker", "--config", str(config)]
        if not worker:
            command = [
                "-m",
                "uploadsvc",
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
            ]
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)

    def wait_logged(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{text!r} not logged: {self.log.read_text()}"
            time.sleep(0.05)

    def kill(self, sig: signal.Signals = signal.SIGKILL, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        self._log.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's, installed when missing) on a free port."""
    server = apt_program("redis-server", "redis-server")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    with running(args, port, log=folder / "redis.log"):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    """Instances a test starts; any still running at its end are killed."""
    started: list[Instance] = []
    yield started
    for instance in started:
        if instance.proc.poll() is None:
            instance.kill()
        instance.close()


def write_toml(path: Path, config: dict[str, dict[str, Any]]) -> Path:
    """A config file: each top-level key a table, values written as TOML literals."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: Any) -> str:
    """A TOML literal for the plain values a config holds (tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + pairs + "}"
    raise TypeError(f"no TOML for {value!r}")
