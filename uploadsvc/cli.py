"""`uploadsvc serve [--config PATH] [--host H] [--port P] [--workers N]`,
`uploadsvc worker [--config PATH]` and `uploadsvc check [--config PATH]`.

A user's mistake (bad configuration, unreachable storage, missing bucket) is
one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from .app import build_app_or_exit
from .config import ENV_VAR as CONFIG_ENV
from .metrics import MULTIPROCESS_ENV

#: On SIGTERM: stop accepting, give requests in flight this long to finish, then
#: hand this instance's jobs back (see jobs.py). Below the 30 s most process
#: managers (systemd, Kubernetes) wait before they send SIGKILL.
SHUTDOWN_GRACE_SECONDS = 25


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uploadsvc", description="Streaming file upload service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument(
        "--config", type=Path, help="TOML file (default: $UPLOADSVC_CONFIG or config.toml)"
    )
    serve.add_argument("--host", help="listen address (default: [server] host)")
    serve.add_argument("--port", type=int, help="listen port (default: [server] port)")
    serve.add_argument("--workers", type=int, help="worker processes (default: [server] workers)")
    worker = commands.add_parser("worker", help="run background jobs from the [queue] (no HTTP)")
    worker.add_argument(
        "--config", type=Path, help="TOML file (default: $UPLOADSVC_CONFIG or config.toml)"
    )
    check = commands.add_parser(
        "check", help="check the configuration, storage, staging and queue, then exit (0: OK)"
    )
    check.add_argument(
        "--config", type=Path, help="TOML file (default: $UPLOADSVC_CONFIG or config.toml)"
    )
    args = parser.parse_args(argv)

    if args.command == "check":
        from .check import main as check_main

        return check_main(args.config)
    if args.command == "worker":
        from .worker import main as work

        work(args.config)
        return 0
    app = build_app_or_exit(args.config)  # every worker would refuse what this refuses
    server = app.state.settings.server
    options: dict[str, Any] = {
        "host": args.host or server.host,
        "port": server.port if args.port is None else args.port,
        "loop": "uvloop",
        "http": "uploadsvc.server:HttpProtocol",  # httptools, with header limits
        "log_level": app.state.settings.logging.level,
        # Logging is ours already (logs.setup, as the app was built): uvicorn keeps
        # it, and its access log gives way to the request line (web/requestlog.py).
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": SHUTDOWN_GRACE_SECONDS,
        # Behind a reverse proxy (see the README's "Behind nginx").
        "root_path": server.root_path,
        "proxy_headers": bool(server.forwarded_allow_ips),
        "forwarded_allow_ips": server.forwarded_allow_ips,
    }
    workers = server.workers if args.workers is None else args.workers
    if workers < 1:
        parser.error("--workers must be at least 1")
    if workers == 1:
        uvicorn.run(app, **options)
        return 0
    # Each worker builds its own app from the same file, and their metrics
    # meet in one fresh folder (see metrics.py).
    if args.config is not None:
        os.environ[CONFIG_ENV] = str(args.config.resolve())
    with tempfile.TemporaryDirectory(prefix="uploadsvc-metrics-") as folder:
        os.environ[MULTIPROCESS_ENV] = folder
        uvicorn.run("uploadsvc.app:app", workers=workers, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
