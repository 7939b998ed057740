"""uploadsvc behind nginx: a blocking upload through Debian's nginx against the same upload
straight to the service, in one run, as a ratio.

nginx runs the README's "Behind nginx" block, started by the test suite's own context manager
(tests/nginx.py, which installs nginx with apt when missing), so the README, the tests and
this row cannot drift apart. Two fresh `uploadsvc serve` processes on fresh local folders, one
behind nginx and one not, so each row's peak RSS is its own; the runs alternate between them,
so drift on this shared machine hits both alike. The direct row is the nginx row's limit: its
"x limit" is the ratio. The service runs without `root_path`: the prefix changes the URLs it
writes into its answers, not how the bytes flow. nginx's CPU (master and worker) is kept per
run as `nginx_cpu_s`, never charged to the service.
"""

from __future__ import annotations

import contextlib
import statistics

import scenarios
import servers
import stores  # noqa: F401  (puts the checkout on sys.path for tests.nginx)
from scenarios import UPLOADSVC, AppUnderTest, Bench, Row
from servers import Server
from workspace import GiB, MiB, SourceFile

from tests import nginx

STORAGE = "nginx"  # the rows' storage: a local folder, reached through nginx or not
DIRECT = "uploadsvc direct"


def measure(bench: Bench, src: SourceFile) -> list[Row]:
    """[the direct row (as the limit), the row through nginx]."""
    direct = Row(DIRECT, STORAGE, "limit", src.size)
    through = Row(UPLOADSVC, STORAGE, "blocking", src.size)
    with contextlib.ExitStack() as stack:
        plain = _server(bench, stack, f"direct-{src.size // MiB}")
        behind = _server(bench, stack, f"behind-nginx-{src.size // MiB}")
        workdir = bench.ws.dir(f"rows/{bench.fresh_name('nginx')}")
        proxy = stack.enter_context(nginx.serve(workdir, behind.port))
        for _ in range(bench.runs):
            direct.runs.append(_run(bench, plain, plain.base_url, src))
            nginx_cpu0 = servers.tree_cpu_seconds(proxy.pid)
            try:
                run = _run(bench, behind, proxy.url, src)
            except scenarios.BenchError as e:
                raise scenarios.BenchError(f"{e}; nginx's error log ends: {proxy.errors()}") from e
            run["nginx_cpu_s"] = servers.tree_cpu_seconds(proxy.pid) - nginx_cpu0
            through.runs.append(run)
        direct.peak_rss_bytes = plain.peak_rss_bytes()
        through.peak_rss_bytes = behind.peak_rss_bytes()
    direct.summarise()
    through.summarise()
    return [direct, through]


def nginx_cpu_s_per_gib(row: Row) -> float | None:
    """nginx's own CPU per GiB moved through it (median of runs), for the report's notes."""
    cpu = [r["nginx_cpu_s"] for r in row.runs if "nginx_cpu_s" in r]
    return statistics.median(cpu) / (row.size / GiB) if cpu else None


def _server(bench: Bench, stack: contextlib.ExitStack, stem: str) -> Server:
    """A fresh `uploadsvc serve` on a fresh local folder, stopped when `stack` closes."""
    name = bench.fresh_name(f"uploadsvc-{stem}")
    return stack.enter_context(
        scenarios.serving(bench, name, scenarios.fresh_root(bench, "local", name))
    )


def _run(bench: Bench, server: Server, root_url: str, src: SourceFile) -> dict[str, float]:
    """One blocking upload to `root_url` (the service, or nginx in front of it), checked,
    then deleted straight at the service."""
    bench.prepare(src.size)
    cpu0 = server.cpu_seconds()
    result = bench.clients.upload(
        f"{root_url}/upload-blocking/", src.path, scenarios.upload_timeout(src.size)
    )
    cpu = server.cpu_seconds() - cpu0
    if result.status != 201:
        raise scenarios.BenchError(
            f"upload to {root_url}: HTTP {result.status}: {result.body[:300]}"
        )
    scenarios.check_stored(UPLOADSVC, result.json(), src)
    AppUnderTest(UPLOADSVC, server, None).cleanup(result)
    return {
        "seconds": result.seconds,
        "server_cpu_s": cpu,
        "client_cpu_s": result.client_cpu_s,
        "client_process_cpu_s": result.client_process_cpu_s,
    }
