"""`uploadsvc check [--config PATH]`: the configuration `serve` would run, tried
without serving, like `nginx -t`.

It loads the file and the environment exactly as `serve` does, builds the
storage, staging, queue and pipeline, and checks within the start-up deadline
that storage, staging and queue answer (`wiring.check_reachable`). A store
that answers may still refuse what uploads need (a read-only bucket, a folder
owned by someone else, an S3-compatible store without conditional writes),
so it then creates a small probe object in storage and in staging with the
same conditional write records use, reads it back and deletes it: nothing is
left behind but the folders `serve` would create. It prints a few lines and
exits 0, or one line and exit status 1, as start-up does.

Values of options are never printed, only their names: they hold secrets.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import Settings, config_path, environment_variables, load_settings
from .errors import StorageUnavailable
from .jobs import Jobs
from .shown import shown_url
from .storage import Ability, Storage
from .wiring import STARTUP_CHECK_TIMEOUT, build_jobs, check_reachable, or_exit

#: Probe keys: no upload id, so the leftovers sweep and listings never take one for an upload.
PROBE_PREFIX = "uploadsvc-check."
PROBE = b"uploadsvc check: written, read back and deleted\n"


def main(config: Path | None) -> int:
    """Check and print what was found; a problem is one line on stderr and exit status 1."""
    print("\n".join(or_exit(lambda: check(config))))
    return 0


def check(config: Path | None) -> list[str]:
    """The report's lines; `ConfigError` or `StorageUnavailable` at the first problem."""
    settings = load_settings(config)
    jobs = build_jobs(settings)
    try:
        check_reachable(jobs)
        asyncio.run(_probe_both(jobs))
    finally:
        # Not `jobs.close()`: the queue was never opened (its check has a client of its
        # own), and closing an unopened Redis queue connects first.
        asyncio.run(jobs.service.pipeline.close())
    return [
        _configuration(config or config_path()),
        f"server: {_fields(settings.server)}",
        _store("storage", jobs.service.storage, settings.storage.options),
        _store("staging", jobs.service.staging, settings.staging_options()),
        f"limits: {_fields(settings.limits)}",
        _jobs(settings),
        f"pipeline: {_pipeline(settings)}",
        "configuration OK",
    ]


async def _probe_both(jobs: Jobs) -> None:
    await probe(jobs.service.storage)
    await probe(jobs.service.staging)


async def probe(storage: Storage, seconds: float = STARTUP_CHECK_TIMEOUT) -> None:
    """Create a probe object if absent, read it back, delete it: `StorageUnavailable`
    naming the step and the store when one fails or all of it outlasts `seconds`."""
    key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    step = "create"
    try:
        async with asyncio.timeout(seconds):
            await storage.put_small(key, PROBE, if_none_match=True)
            step = "read back"
            data, _ = await storage.get_small(key)
            if data != PROBE:
                raise StorageUnavailable(f"storage {storage.url}: probe {key} read back altered")
            step = "delete"
            await storage.delete(key)
    except TimeoutError:
        raise StorageUnavailable(
            f"storage {storage.url}: could not {step} probe {key} within {seconds:g} s"
        ) from None
    except StorageUnavailable as e:
        if step == "delete":
            raise StorageUnavailable(f"{e} (deleting probe {key}, left behind)") from e
        raise
    except Exception as e:  # PreconditionFailed, NotFound: the store does not keep its word
        raise StorageUnavailable(f"storage {storage.url}: could not {step} probe {key}: {e}") from e


def _configuration(path: Path | None) -> str:
    variables = environment_variables()
    source = str(path) if path else "built-in defaults (no configuration file)"
    if not variables:
        return f"configuration: {source}"
    plural = "" if len(variables) == 1 else "s"
    return (
        f"configuration: {source} (+ {len(variables)} environment variable{plural}: "
        f"{', '.join(variables)})"
    )


def _store(name: str, storage: Storage, options: dict[str, Any]) -> str:
    abilities = ", ".join(a.name for a in Ability if a in storage.abilities)
    described = f"{type(storage).__name__}: {abilities}"
    if options:
        described += f"; options {', '.join(sorted(options))}"
    return f"{name}: {shown_url(storage.url)} ({described}) reachable, writable"


def _fields(section: BaseModel) -> str:
    return ", ".join(f"{name} {_value(name, value)}" for name, value in section)


def _value(name: str, value: object) -> str:
    if name.endswith("_bytes") and isinstance(value, int):
        return _bytes(value)
    if name.endswith("_seconds") and isinstance(value, int | float):
        return f"{value:g} s"
    return str(value)


def _bytes(n: int) -> str:
    """`1 GiB` for 1073741824; a size that is not a whole number of units stays in bytes."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _jobs(settings: Settings) -> str:
    where = (
        f"on {shown_url(settings.queue.url)} (reachable), run by `uploadsvc worker`"
        if settings.queue.url
        else "in this process (no queue)"
    )
    return f"jobs: {where}; {_fields(settings.jobs)}"


def _pipeline(settings: Settings) -> str:
    steps = settings.processing.pipeline
    if not steps:
        return "none"
    named = [
        f"{name} (options {', '.join(sorted(settings.plugins[name]))})"
        if settings.plugins.get(name)
        else name
        for name in steps
    ]
    timeout = settings.processing.timeout_seconds
    return f"{', '.join(named)}; {timeout:g} s per processor"
