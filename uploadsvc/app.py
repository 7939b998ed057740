"""Wiring: `create_app(settings)` builds the service; `app` is for uvicorn.

`uvicorn uploadsvc.app:app` reads the configuration (`UPLOADSVC_CONFIG` or
`config.toml`) when uvicorn first asks for `app`, checks that the storage
answers, and stops with one line and exit status 1 if not. The app's
lifespan runs the jobs: a sweep at start-up resumes what an earlier run left,
and shutdown hands this instance's jobs back (see `jobs.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from . import logs
from .config import Settings, load_settings
from .errors import install_error_handlers
from .pipeline import Pipeline
from .storage import Storage
from .web import api, docs, examples, pages
from .web.access import install_access
from .web.headers import PageHeaders
from .web.requestlog import LoggedApp
from .wiring import build_jobs, check_reachable, or_exit


def create_app(
    settings: Settings, *, storage: Storage | None = None, pipeline: Pipeline | None = None
) -> FastAPI:
    """Build the app; `storage` and `pipeline` replace the configured ones (tests)."""
    jobs = build_jobs(settings, storage=storage, pipeline=pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await jobs.start()
        try:
            yield
        finally:
            await jobs.stop()
            await jobs.close()

    app = LoggedApp(  # a FastAPI whose outermost layer is the request log
        title="uploadsvc",
        summary="Streaming file uploads onto a local folder, S3, Azure Blob, GCS, SFTP or a "
        "plugin's storage.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # docs.install serves them without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = jobs.service
    app.state.jobs = jobs
    install_error_handlers(app)
    app.include_router(api.router)
    pages.install(app)
    docs.install(app)
    examples.keep_example_nulls(app)
    install_access(app, settings)
    # Outside the guard: its refusals (401 pages) carry the headers too.
    app.add_middleware(PageHeaders)
    return app


def build_app_or_exit(config: Path | None = None) -> FastAPI:
    """Settings -> app -> reachability check, or one line on stderr and exit status 1."""

    def build() -> FastAPI:
        settings = load_settings(config)
        app = create_app(settings)
        check_reachable(app.state.jobs)
        # Only now: a start-up that fails says so in one line, with no library's chatter.
        logs.setup(settings)
        return app

    return or_exit(build)


def __getattr__(name: str) -> FastAPI:
    if name != "app":
        raise AttributeError(name)
    built = build_app_or_exit()
    globals()["app"] = built
    return built
