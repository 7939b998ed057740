"""Debian's nginx in front of the service on 127.0.0.1, configured from the README.

The configuration users copy is the fenced `nginx` block under the README's
"### Behind nginx"; `serve()` runs that very block, with the service's
address (and, when asked, another body limit) put in, so the README and what
the tests (tests/e2e/test_nginx.py) and the benchmark (benchmarks/proxy.py)
run cannot drift apart. nginx is installed with apt when missing, runs in the
foreground as the current user, and keeps its pid, logs and temporary folders
in a folder of the caller's.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.backends import tools

README = tools.CHECKOUT / "README.md"
HEADING = "### Behind nginx"
#: The prefix the README's block serves the app under (its `[server] root_path`).
PREFIX = "/uploads-service"
#: The service's address in the README's block; `serve()` puts the real one in.
UPSTREAM = "127.0.0.1:8000"

_BODY_LIMIT = re.compile(r"client_max_body_size\s+\S+;")


def readme_block(readme: Path = README) -> str:
    """The first ```nginx block after the heading, as the README shows it."""
    text = readme.read_text(encoding="utf-8")
    _, heading, section = text.partition(f"\n{HEADING}\n")
    assert heading, f"{readme.name} has no {HEADING!r} section"
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    found = re.search(r"^```nginx\n(.*?)^```", section, re.S | re.M)
    assert found, f"no ```nginx block under {HEADING!r} in {readme.name}"
    return found[1]


def locations(upstream: str, client_max_body_size: str | None = None) -> str:
    """The README's block for a service at `upstream` ("127.0.0.1:PORT")."""
    block = readme_block()
    assert block.count(UPSTREAM) == 1, f"the README's block must proxy to {UPSTREAM}"
    block = block.replace(UPSTREAM, upstream)
    if client_max_body_size is not None:
        assert len(_BODY_LIMIT.findall(block)) == 1, "the block must set client_max_body_size"
        block = _BODY_LIMIT.sub(f"client_max_body_size {client_max_body_size};", block)
    return block


def config(workdir: Path, port: int, block: str) -> str:
    """A whole nginx.conf around `block`: one server on 127.0.0.1:`port`, files in `workdir`."""
    temp = {name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir(exist_ok=True)
    # As root, nginx's workers would switch to `nobody`, who cannot enter our folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    paths = "".join(f"    {name}_temp_path {folder};\n" for name, folder in temp.items())
    return (
        f"{user}daemon off;\n"
        "worker_processes 1;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {workdir / 'access.log'};\n"
        f"{paths}"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        f"{block}"
        "    }\n"
        "}\n"
    )


@dataclass(frozen=True)
class Nginx:
    """A running nginx: its port and process, and where it would spool request bodies."""

    port: int
    pid: int
    body_temp: Path
    access_log: Path
    error_log: Path

    @property
    def url(self) -> str:
        """The service's root through nginx (the prefix included)."""
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def spooled_bytes(self) -> int:
        """Bytes of request bodies nginx holds on disk now (none, when bodies stream)."""
        total = 0
        for path in self.body_temp.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # removed while we looked
                total += path.stat().st_size if path.is_file() else 0
        return total

    def errors(self, lines: int = 5) -> str:
        """The end of nginx's error log: why it answered 502, say."""
        try:
            return "\n".join(self.error_log.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@contextmanager
def serve(
    workdir: Path, upstream_port: int, *, client_max_body_size: str | None = None
) -> Iterator[Nginx]:
    """nginx with the README's block in front of 127.0.0.1:`upstream_port`, until the block
    ends; `client_max_body_size` replaces the README's (for a service with another limit)."""
    program = tools.apt_program("nginx", "nginx")
    port = tools.free_port()
    block = locations(f"127.0.0.1:{upstream_port}", client_max_body_size)
    conf = workdir / "nginx.conf"
    conf.write_text(config(workdir, port, block))
    argv = [program, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    with tools.running(argv, port, log=workdir / "nginx.log") as proc:
        yield Nginx(
            port, proc.pid, workdir / "client_body", workdir / "access.log", workdir / "error.log"
        )
