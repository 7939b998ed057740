"""`uploadsvc serve [--config PATH] [--host H] [--port P]` and `uploadsvc worker [--config PATH]`.

A user's mistake (bad configuration, unreachable storage, missing bucket) is
one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from .app import build_app_or_exit

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
    worker = commands.add_parser("worker", help="run background jobs from the [queue] (no HTTP)")
    worker.add_argument(
        "--config", type=Path, help="TOML file (default: $UPLOADSVC_CONFIG or config.toml)"
    )
    args = parser.parse_args(argv)

    if args.command == "worker":
        from .worker import main as work

        work(args.config)
        return 0
    app = build_app_or_exit(args.config)
    server = app.state.settings.server
    uvicorn.run(
        app,
        host=args.host or server.host,
        port=server.port if args.port is None else args.port,
        loop="uvloop",
        http="httptools",
        log_level=app.state.settings.logging.level,
        # Logging is ours already (logs.setup, as the app was built): uvicorn keeps
        # it, and its access log gives way to the request line (web/requestlog.py).
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
