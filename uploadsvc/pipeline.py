"""The processing pipeline: processor plugins chosen by name in config, run in order.

Plugins are found the way fsspec finds filesystems: by name, imported
lazily, from the shipped `plugins/` folder or from the `uploadsvc.plugins`
entry point group of installed packages. The entry point names a
`plugin.Processor` subclass (or a module defining exactly one); a file in
`plugins/` defines exactly one. Its options come from `[plugins.<name>]`,
validated by the plugin's own model. An unknown name, a missing package or
a wrong option stops start-up with one line naming it.

Each processor runs under `[processing] timeout_seconds`; the first failure
stops the pipeline. A processor sees its upload through `_Upload` only (the
narrow view of `plugin.Upload`): the bytes read-only, its derived files, and
`reject`. What it derived is reported back here and named in the record by
the caller; on failure the caller removes it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pydantic
import pydantic_core

from . import derived
from .config import ConfigError, Settings
from .metrics import PROCESSOR_DURATION
from .models import UploadRecord
from .plugin import FINISHED_TIMEOUT, DerivedWriter, Processor, Rejection
from .resources import PLUGINS_DIR
from .storage import Storage

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "uploadsvc.plugins"
#: How long shutdown waits for `finished` hooks still running (webhooks in flight).
FINISHING_GRACE = 10.0


class ProcessingFailed(Exception):
    """A processor raised, timed out or returned something unusable."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"processor {name!r} failed: {reason}")


class ProcessingRejected(ProcessingFailed):
    """A processor refused the upload (`Upload.reject`)."""

    def __init__(self, name: str, reason: str) -> None:
        Exception.__init__(self, f"rejected by {name}: {reason}")


@dataclass
class Outcome:
    """What the processors produced: results by name, derived files' types by name."""

    results: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)


class _Upload:
    """`plugin.Upload` over one stored upload; records what it derives in `made`."""

    def __init__(self, record: UploadRecord, storage: Storage, made: dict[str, str]) -> None:
        self._record = record
        self._storage = storage
        self._made = made

    @property
    def record(self) -> UploadRecord:
        return self._record.model_copy(deep=True)

    def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._storage.read(self._record.id, start, end)

    def reject(self, reason: str) -> NoReturn:
        raise Rejection(reason)

    @asynccontextmanager
    async def derive(self, name: str, content_type: str) -> AsyncIterator[DerivedWriter]:
        async with derived.writing(self._storage, self._record.id, name) as writer:
            yield writer
        self._made[name] = content_type


class Pipeline:
    def __init__(self, steps: Sequence[tuple[str, Processor[Any]]], timeout: float) -> None:
        self.timeout = timeout
        self.processing = [(n, p) for n, p in steps if _overrides(p, "process")]
        self.listening = [(n, p) for n, p in steps if _overrides(p, "finished")]
        self.plugins = [p for _, p in steps]
        self._finishing: set[asyncio.Task[None]] = set()
        self._closed = False

    def __bool__(self) -> bool:
        """Whether uploads go through `processing` (some plugin processes them)."""
        return bool(self.processing)

    async def run(self, record: UploadRecord, storage: Storage) -> Outcome:
        """Run every processor in order; `ProcessingFailed` at the first failure."""
        outcome = Outcome()
        upload = _Upload(UploadRecord.model_validate(record.public()), storage, outcome.derived)
        for name, processor in self.processing:
            with _timed(name):
                outcome.results[name] = await self._step(name, processor, upload)
        return outcome

    async def _step(self, name: str, processor: Processor[Any], upload: _Upload) -> dict[str, Any]:
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                result = dict(await processor.process(upload))
            # It goes into the JSON record: fail here, naming the plugin,
            # with the serializer the record itself uses.
            pydantic_core.to_json(result)
        except Rejection as e:
            raise ProcessingRejected(name, e.reason) from None
        except Exception as e:
            if deadline.expired():  # ours, not a timeout raised inside the processor
                raise ProcessingFailed(name, f"timed out after {self.timeout:g} s") from None
            raise ProcessingFailed(name, str(e) or type(e).__name__) from e
        return result

    def announce(self, record: UploadRecord) -> None:
        """Tell the listening plugins that `record` is final, in the background."""
        if not self.listening:
            return
        if self._closed:
            log.warning("upload %s: final after shutdown began; plugins not told", record.id)
            return
        task = asyncio.get_running_loop().create_task(self._finished(record))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def close(self) -> None:
        """Let `finished` hooks in flight end (for a while), then close every plugin."""
        self._closed = True
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=FINISHING_GRACE)
            for task in list(self._finishing):
                task.cancel()
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for plugin in self.plugins:
            try:
                await plugin.close()
            except Exception:
                log.exception("plugin %s: close failed", type(plugin).__name__)

    async def _finished(self, record: UploadRecord) -> None:
        public = UploadRecord.model_validate(record.public())

        async def tell(name: str, plugin: Processor[Any]) -> None:
            try:
                async with asyncio.timeout(FINISHED_TIMEOUT):
                    await plugin.finished(public.model_copy(deep=True))
            except Exception as e:
                log.warning("upload %s: plugin %s: finished failed: %r", record.id, name, e)

        await asyncio.gather(*(tell(n, p) for n, p in self.listening))


@contextmanager
def _timed(name: str) -> Iterator[None]:
    """Observe one processor's duration, by its outcome (ok, rejected, failed)."""
    started = time.monotonic()
    outcome = "failed"
    try:
        yield
        outcome = "ok"
    except ProcessingRejected:
        outcome = "rejected"
        raise
    finally:
        PROCESSOR_DURATION.labels(name, outcome).observe(time.monotonic() - started)


def _overrides(plugin: Processor[Any], method: str) -> bool:
    return getattr(type(plugin), method) is not getattr(Processor, method)


def load_pipeline(settings: Settings) -> Pipeline:
    """Build the configured pipeline; `ConfigError` for an unknown or broken plugin,
    and for options of a plugin the pipeline does not name (a typo in a section
    name must not switch an allow list off in silence)."""
    for name in settings.plugins:
        if name not in settings.processing.pipeline:
            raise ConfigError(f"plugins.{name}: no plugin {name!r} in processing.pipeline")
    return Pipeline(
        [
            (name, _create(name, settings.plugins.get(name, {})))
            for name in settings.processing.pipeline
        ],
        settings.processing.timeout_seconds,
    )


def _create(name: str, options: dict[str, Any]) -> Processor[Any]:
    """Import, configure and build one plugin; any failure is the user's to fix."""
    cls = _find(name)
    try:
        validated = cls.Options.model_validate(options)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in ("plugins", name, *first["loc"]))
        raise ConfigError(f"{where}: {first['msg']}") from None
    try:
        plugin = cls(validated)
    except Exception as e:
        raise ConfigError(f"plugins.{name}: {e}") from None
    if not (_overrides(plugin, "process") or _overrides(plugin, "finished")):
        raise ConfigError(f"processing.pipeline: plugin {name!r} has neither process nor finished")
    return plugin


def _find(name: str) -> type[Processor[Any]]:
    try:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                return _processor_class(name, ep.load())
        path = PLUGINS_DIR / f"{name}.py"
        if name.isidentifier() and path.is_file():
            return _processor_class(name, _import_file(name, path))
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"processing.pipeline: plugin {name!r} needs the package {e.name!r}, which is not "
            f"installed (a shipped plugin: pip install 'uploadsvc[{name}]')"
        ) from None
    except Exception as e:
        raise ConfigError(f"processing.pipeline: plugin {name!r} cannot be loaded: {e}") from None
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


def _processor_class(name: str, found: object) -> type[Processor[Any]]:
    """The `Processor` subclass an entry point or a plugin file offers."""
    if inspect.isclass(found) and issubclass(found, Processor):
        return found
    if isinstance(found, ModuleType):
        defined = [
            c
            for c in vars(found).values()
            if inspect.isclass(c)
            and issubclass(c, Processor)
            and c is not Processor
            and c.__module__ == found.__name__
        ]
        if len(defined) == 1:
            return defined[0]
    raise ConfigError(
        f"processing.pipeline: plugin {name!r} must be one subclass of uploadsvc.plugin.Processor"
    )
