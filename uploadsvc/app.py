"""Wiring: `create_app(settings)` builds the service; `app` is for uvicorn.

`uvicorn uploadsvc.app:app` reads the configuration (`UPLOADSVC_CONFIG` or
`config.toml`) when uvicorn first asks for `app`, checks that the storage
answers, and stops with one line and exit status 1 if not. The app's
lifespan runs the jobs: a sweep at start-up resumes what an earlier run left,
and shutdown hands this instance's jobs back (see `jobs.py`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from .config import ConfigError, Settings, load_settings
from .errors import StorageUnavailable, install_error_handlers
from .jobs import Jobs
from .pipeline import Pipeline, load_pipeline
from .service import UploadService
from .storage import Storage, check_in_time, open_storage
from .storage.locations import check_apart
from .web import api, pages

STARTUP_CHECK_TIMEOUT = 15.0


def create_app(
    settings: Settings, *, storage: Storage | None = None, pipeline: Pipeline | None = None
) -> FastAPI:
    """Build the app; `storage` and `pipeline` replace the configured ones (tests)."""
    check_apart(settings.storage.url, settings.staging.url)
    service = UploadService(
        storage=storage or open_storage(settings.storage.url, settings.storage.options),
        staging=open_storage(settings.staging.url, settings.staging_options()),
        pipeline=pipeline if pipeline is not None else load_pipeline(settings),
        max_upload_bytes=settings.limits.max_upload_bytes,
    )
    jobs = Jobs(service, settings.jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await jobs.start()
        try:
            yield
        finally:
            await jobs.stop()

    app = FastAPI(
        title="uploadsvc",
        summary="Streaming file uploads onto a local folder, S3, Azure Blob, GCS, SFTP or a "
        "plugin's storage.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.jobs = jobs
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(pages.router)
    return app


def check_storage(app: FastAPI) -> None:
    """Fail fast (before serving) when the storage or staging folder does not answer."""
    service: UploadService = app.state.service

    async def both() -> None:
        await check_in_time(service.storage, STARTUP_CHECK_TIMEOUT)
        await check_in_time(service.staging, STARTUP_CHECK_TIMEOUT)

    asyncio.run(both())


def build_app_or_exit(config: Path | None = None) -> FastAPI:
    """Settings -> app -> storage check, or one line on stderr and exit status 1.

    Configuration and storage problems are the user's to fix: they get one
    line naming the key or URL and the reason, never a traceback.
    """
    try:
        app = create_app(load_settings(config))
        check_storage(app)
    except (ConfigError, StorageUnavailable) as e:
        print(f"uploadsvc: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(1) from None
    return app


def __getattr__(name: str) -> FastAPI:
    if name != "app":
        raise AttributeError(name)
    built = build_app_or_exit()
    globals()["app"] = built
    return built
