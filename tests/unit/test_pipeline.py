"""pipeline: processors by name, run in order under a timeout; unknown names stop start-up."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from uploadsvc import pipeline
from uploadsvc.config import ConfigError, parse_settings
from uploadsvc.models import Status, UploadRecord
from uploadsvc.pipeline import (
    Outcome,
    Pipeline,
    ProcessingFailed,
    ProcessingRejected,
    load_pipeline,
)
from uploadsvc.plugin import Options, Processor, Upload
from uploadsvc.storage import open_storage

RECORD = UploadRecord(
    id="0" * 28,
    filename="a.txt",
    size=3,
    content_type="text/plain",
    sha256="0" * 64,
    status=Status.processing,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    url=f"/uploads/{'0' * 28}/content",
)
NONE = Options()


class Recording(Processor[Options]):
    """Appends its name to a shared log and returns a fixed result."""

    def __init__(self, name: str, log: list[str], result: Mapping[str, Any]) -> None:
        super().__init__(NONE)
        self.name, self.log, self.result = name, log, result

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        assert upload.record == RECORD
        self.log.append(self.name)
        return self.result


class Raising(Processor[Options]):
    def __init__(self, error: Exception) -> None:
        super().__init__(NONE)
        self.error = error

    async def process(self, upload: Upload) -> Mapping[str, Any]:
        raise self.error


class Hanging(Processor[Options]):
    async def process(self, upload: Upload) -> Mapping[str, Any]:
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")


def run(steps: list[tuple[str, Processor[Any]]], timeout: float = 10.0) -> Outcome:
    storage = open_storage("memory://pipeline-unit", {})
    return asyncio.run(Pipeline(steps, timeout).run(RECORD, storage))


def results(steps: list[tuple[str, Processor[Any]]], timeout: float = 10.0) -> dict[str, Any]:
    return run(steps, timeout).results


def test_results_are_keyed_by_name_in_pipeline_order() -> None:
    log: list[str] = []
    found = results(
        [
            ("zeta", Recording("zeta", log, {"z": 1})),
            ("alpha", Recording("alpha", log, {"a": [1, 2]})),
            ("mid", Recording("mid", log, {})),
        ]
    )
    assert log == ["zeta", "alpha", "mid"]
    assert list(found) == ["zeta", "alpha", "mid"]
    assert found == {"zeta": {"z": 1}, "alpha": {"a": [1, 2]}, "mid": {}}
    assert all(type(r) is dict for r in found.values())


def test_an_empty_pipeline_is_falsy_and_returns_nothing() -> None:
    assert not Pipeline([], 1.0)
    assert Pipeline([("x", Recording("x", [], {}))], 1.0)
    assert results([]) == {}


def test_a_raising_processor_fails_the_pipeline_naming_it() -> None:
    log: list[str] = []
    with pytest.raises(ProcessingFailed, match=r"processor 'thumbs' failed: no PIL") as caught:
        run(
            [
                ("first", Recording("first", log, {})),
                ("thumbs", Raising(RuntimeError("no PIL"))),
                ("never", Recording("never", log, {})),
            ]
        )
    assert log == ["first"], "the first failure stops the pipeline"
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert not isinstance(caught.value, ProcessingRejected)


def test_an_error_without_message_is_named_by_its_type() -> None:
    with pytest.raises(ProcessingFailed, match=r"'p' failed: KeyError"):
        run([("p", Raising(KeyError()))])


def test_a_slow_processor_times_out() -> None:
    log: list[str] = []
    with pytest.raises(ProcessingFailed, match=r"processor 'slow' failed: timed out after 0.05 s"):
        run([("slow", Hanging(NONE)), ("never", Recording("never", log, {}))], timeout=0.05)
    assert log == []


def test_a_processor_returning_no_mapping_fails_naming_it() -> None:
    """A buggy plugin fails its upload like any other processor error."""

    class ReturnsNone(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            return None  # type: ignore[return-value]

    with pytest.raises(ProcessingFailed, match="'bad'"):
        run([("bad", ReturnsNone(NONE))])


def test_a_rejection_stops_the_pipeline_naming_the_plugin_and_reason() -> None:
    log: list[str] = []

    class Refusing(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            upload.reject("type application/x-dosexec is not allowed")

    with pytest.raises(ProcessingRejected) as caught:
        run([("mimetype", Refusing(NONE)), ("never", Recording("never", log, {}))])
    assert str(caught.value) == "rejected by mimetype: type application/x-dosexec is not allowed"
    assert log == []


def test_derived_files_are_reported_with_their_types_and_readable() -> None:
    storage = open_storage("memory://pipeline-derived", {})

    class Deriving(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            async with upload.derive("thumbnail", "image/webp") as out:
                await out.write(b"RIFF")
                await out.write(b"WEBP")
            return {}

    outcome = asyncio.run(Pipeline([("t", Deriving(NONE))], 5).run(RECORD, storage))
    assert outcome.derived == {"thumbnail": "image/webp"}

    async def stored() -> bytes:
        return b"".join([b async for b in storage.read(f"derived.{RECORD.id}.thumbnail")])

    assert asyncio.run(stored()) == b"RIFFWEBP"


@pytest.mark.parametrize("name", ["", "Thumb", "../x", "a.b", "a/b", "x" * 65])
def test_a_derived_name_outside_the_pattern_fails_the_processor(name: str) -> None:
    class Deriving(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            async with upload.derive(name, "text/plain") as out:
                await out.write(b"x")
            return {}

    with pytest.raises(ProcessingFailed, match="derived file name"):
        run([("d", Deriving(NONE))])


def test_a_derived_file_whose_block_raises_is_not_kept() -> None:
    storage = open_storage("memory://pipeline-derived-abort", {})

    class HalfDeriving(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            async with upload.derive("preview", "application/pdf") as out:
                await out.write(b"%PDF")
                raise OSError("renderer crashed")
            return {}

    with pytest.raises(ProcessingFailed, match="renderer crashed"):
        asyncio.run(Pipeline([("p", HalfDeriving(NONE))], 5).run(RECORD, storage))
    assert asyncio.run(storage.list("derived.")) == []


def test_the_record_a_processor_gets_is_a_copy() -> None:
    class Meddling(Processor[Options]):
        async def process(self, upload: Upload) -> Mapping[str, Any]:
            upload.record.results["x"] = 1
            upload.record.filename = "evil"
            return {"seen": upload.record.filename}

    assert results([("m", Meddling(NONE))]) == {"m": {"seen": "a.txt"}}
    assert RECORD.results == {}


def test_finished_hooks_hear_of_final_records_and_their_failures_are_contained() -> None:
    heard: list[str] = []

    class Listening(Processor[Options]):
        async def finished(self, record: UploadRecord) -> None:
            heard.append(record.status.value)

    class Failing(Processor[Options]):
        async def finished(self, record: UploadRecord) -> None:
            raise ConnectionError("receiver down")

    async def main() -> None:
        built = Pipeline([("listen", Listening(NONE)), ("fail", Failing(NONE))], 5)
        assert not built, "plugins that only listen add no processing step"
        built.announce(RECORD.model_copy(update={"status": Status.completed}))
        await built.close()

    asyncio.run(main())
    assert heard == ["completed"]


# -- load_pipeline -------------------------------------------------------------


@pytest.fixture
def plugins_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty shipped-plugins folder, in place of the checkout's."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.setattr(pipeline, "PLUGINS_DIR", folder)
    return folder


ECHO = """
    from uploadsvc import plugin


    class EchoOptions(plugin.Options):
        greeting: str = ""
        n: int = 0


    class Echo(plugin.Processor[EchoOptions]):
        Options = EchoOptions

        async def process(self, upload):
            return {"options": self.options.model_dump(), "filename": upload.record.filename}
"""


def add_plugin(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def test_no_pipeline_configured_is_empty() -> None:
    built = load_pipeline(parse_settings({}))
    assert not built
    assert built.timeout == 300.0


def test_unknown_plugin_is_a_config_error_naming_it(plugins_dir: Path) -> None:
    settings = parse_settings({"processing": {"pipeline": ["no_such_plugin_xyz"]}})
    with pytest.raises(ConfigError, match="no_such_plugin_xyz") as caught:
        load_pipeline(settings)
    assert str(caught.value).startswith("processing.pipeline: unknown plugin")


@pytest.mark.parametrize("name", ["../evil", "a-b", "os.path", ""])
def test_names_that_are_not_identifiers_are_unknown(plugins_dir: Path, name: str) -> None:
    """A name can never reach a file outside the plugins folder."""
    (plugins_dir.parent / "evil.py").write_text("raise SystemExit('imported!')\n")
    with pytest.raises(ConfigError, match="unknown plugin"):
        load_pipeline(parse_settings({"processing": {"pipeline": [name]}}))


def test_a_shipped_plugin_is_loaded_with_its_options(plugins_dir: Path) -> None:
    add_plugin(plugins_dir, "echo", ECHO)
    settings = parse_settings(
        {
            "processing": {"pipeline": ["echo"], "timeout_seconds": 7},
            "plugins": {"echo": {"greeting": "hi", "n": 3}},
        }
    )
    built = load_pipeline(settings)
    assert [name for name, _ in built.processing] == ["echo"]
    assert built.timeout == 7.0
    assert run_loaded(built) == {
        "echo": {"options": {"greeting": "hi", "n": 3}, "filename": "a.txt"}
    }


def run_loaded(built: Pipeline) -> dict[str, Any]:
    storage = open_storage("memory://pipeline-loaded", {})
    return asyncio.run(built.run(RECORD, storage)).results


def test_a_plugin_without_options_gets_the_defaults(plugins_dir: Path) -> None:
    add_plugin(plugins_dir, "echo", ECHO)
    built = load_pipeline(parse_settings({"processing": {"pipeline": ["echo", "echo"]}}))
    assert run_loaded(built)["echo"]["options"] == {"greeting": "", "n": 0}
    assert len(built.processing) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": "three"}, "plugins.echo.n: Input should be a valid integer"),
        ({"colour": "red"}, "plugins.echo.colour: Extra inputs are not permitted"),
    ],
)
def test_a_wrong_option_is_a_config_error_naming_it(
    plugins_dir: Path, options: dict[str, Any], message: str
) -> None:
    add_plugin(plugins_dir, "echo", ECHO)
    settings = parse_settings({"processing": {"pipeline": ["echo"]}, "plugins": {"echo": options}})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(settings)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("VALUE = 1\n", "must be one subclass of uploadsvc.plugin.Processor"),
        (
            "from uploadsvc import plugin\nclass A(plugin.Processor):\n    pass\n",
            "has neither process nor finished",
        ),
        (
            "from uploadsvc import plugin\n"
            "class A(plugin.Processor):\n    async def process(self, u): return {}\n"
            "class B(plugin.Processor):\n    async def process(self, u): return {}\n",
            "must be one subclass",
        ),
    ],
    ids=["no-processor", "does-nothing", "two-processors"],
)
def test_a_plugin_that_is_not_one_processor_is_a_config_error(
    plugins_dir: Path, source: str, message: str
) -> None:
    add_plugin(plugins_dir, "odd", source)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(parse_settings({"processing": {"pipeline": ["odd"]}}))


def test_a_missing_package_names_the_extra_to_install(plugins_dir: Path) -> None:
    add_plugin(plugins_dir, "needy", "import no_such_package_xyz\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(parse_settings({"processing": {"pipeline": ["needy"]}}))
    assert str(caught.value) == (
        "processing.pipeline: plugin 'needy' needs the package 'no_such_package_xyz', which is "
        "not installed (a shipped plugin: pip install 'uploadsvc[needy]')"
    )


@pytest.mark.parametrize(
    "source",
    [
        "raise ImportError('cannot import name Image')\n",
        "from uploadsvc import plugin\n"
        "class A(plugin.Processor):\n"
        "    def __init__(self, options):\n        raise ValueError('size must be positive')\n"
        "    async def process(self, u): return {}\n",
        "def broken(:\n",
    ],
    ids=["import-fails", "init-fails", "syntax-error"],
)
def test_a_broken_plugin_is_a_config_error_naming_it(plugins_dir: Path, source: str) -> None:
    add_plugin(plugins_dir, "broken", source)
    with pytest.raises(ConfigError, match="broken"):
        load_pipeline(parse_settings({"processing": {"pipeline": ["broken"]}}))


def test_an_installed_entry_point_plugin_is_loaded(
    plugins_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Third-party packages join through the `uploadsvc.plugins` entry point group,
    naming either a module with one processor or the class itself."""
    site = tmp_path / "site"
    dist = site / "uploadsvc_test_ep-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uploadsvc-test-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[uploadsvc.plugins]\nby_module = uploadsvc_test_ep\nby_class = uploadsvc_test_ep:Echo\n"
    )
    add_plugin(site, "uploadsvc_test_ep", ECHO)
    monkeypatch.syspath_prepend(str(site))
    request.addfinalizer(lambda: sys.modules.pop("uploadsvc_test_ep", None))
    settings = parse_settings(
        {
            "processing": {"pipeline": ["by_module", "by_class"]},
            "plugins": {"by_class": {"n": 2}},
        }
    )
    assert run_loaded(load_pipeline(settings)) == {
        "by_module": {"options": {"greeting": "", "n": 0}, "filename": "a.txt"},
        "by_class": {"options": {"greeting": "", "n": 2}, "filename": "a.txt"},
    }


def test_options_of_a_plugin_the_pipeline_does_not_name_are_a_config_error(
    plugins_dir: Path,
) -> None:
    """`[plugins.mimetyp]` (a typo) must not leave the real plugin without its allow list."""
    add_plugin(plugins_dir, "echo", ECHO)
    settings = parse_settings(
        {"processing": {"pipeline": ["echo"]}, "plugins": {"ehco": {"greeting": "hi"}}}
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(settings)
    assert str(caught.value) == "plugins.ehco: no plugin 'ehco' in processing.pipeline"
