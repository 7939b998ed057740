"""The post-upload processing pipeline: processors chosen by name in config.

A processor is any object with `async def process(upload) -> dict`; its
result lands in the record under `results[<name>]`. Processors are found the
way fsspec finds filesystems: by name, imported lazily, from the shipped
`plugins/` folder or from the `uploadsvc.plugins` entry point group of
installed packages; each module offers `create(options) -> Processor` (an
entry point may also name that factory itself), with `options` from `[plugins.<name>]`.
An unknown name stops start-up with one line naming it.

Processors run in order, each under `[processing] timeout_seconds`. The first
failure stops the pipeline and fails the upload; the stored bytes stay.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pydantic_core

from .config import ConfigError, Settings
from .models import UploadRecord
from .resources import PLUGINS_DIR
from .storage import Storage

ENTRY_POINT_GROUP = "uploadsvc.plugins"


@dataclass(frozen=True)
class StoredUpload:
    """What a processor gets: the record so far and a way to read the bytes."""

    record: UploadRecord
    storage: Storage

    def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self.storage.read(self.record.id, start, end)


class Processor(Protocol):
    async def process(self, upload: StoredUpload) -> Mapping[str, Any]: ...


class ProcessingFailed(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"processor {name!r} failed: {reason}")


class Pipeline:
    def __init__(self, steps: Sequence[tuple[str, Processor]], timeout: float) -> None:
        self.steps = list(steps)
        self.timeout = timeout

    def __bool__(self) -> bool:
        return bool(self.steps)

    async def run(self, upload: StoredUpload) -> dict[str, Any]:
        """Run every processor in order; `ProcessingFailed` at the first failure."""
        results: dict[str, Any] = {}
        for name, processor in self.steps:
            deadline = asyncio.timeout(self.timeout)
            try:
                async with deadline:
                    result = dict(await processor.process(upload))
                # It goes into the JSON record: fail here, naming the plugin,
                # with the serializer the record itself uses.
                pydantic_core.to_json(result)
                results[name] = result
            except Exception as e:
                if deadline.expired():  # ours, not a timeout raised inside the processor
                    raise ProcessingFailed(name, f"timed out after {self.timeout:g} s") from None
                raise ProcessingFailed(name, str(e) or type(e).__name__) from e
        return results


def load_pipeline(settings: Settings) -> Pipeline:
    """Build the configured pipeline; `ConfigError` for an unknown or broken plugin."""
    return Pipeline(
        [
            (name, _create(name, settings.plugins.get(name, {})))
            for name in settings.processing.pipeline
        ],
        settings.processing.timeout_seconds,
    )


def _create(name: str, options: dict[str, Any]) -> Processor:
    """Import and build one plugin; any failure is the user's configuration to fix."""
    try:
        processor: Processor = _factory(name)(options)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"processing.pipeline: plugin {name!r} cannot be loaded: {e}") from None
    return processor


def _factory(name: str) -> Any:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _checked(name, ep.load())
    path = PLUGINS_DIR / f"{name}.py"
    if name.isidentifier() and path.is_file():
        return _checked(name, _import_file(name, path))
    raise ConfigError(
        f"processing.pipeline: unknown plugin {name!r} (not in {PLUGINS_DIR.name}/ "
        f"nor in the {ENTRY_POINT_GROUP!r} entry points)"
    )


def _import_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"uploadsvc_plugin_{name}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"processing.pipeline: cannot import plugin {name!r} from {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered first, as a normal import would: dataclasses and pickling look it up.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def _checked(name: str, found: Any) -> Any:
    """A module or object offering `create`, or the factory itself."""
    factory = getattr(found, "create", found)
    if not callable(factory):
        raise ConfigError(f"processing.pipeline: plugin {name!r} has no create(options)")
    return factory
