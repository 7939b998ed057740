"""pipeline: processors by name, run in order under a timeout; unknown names stop start-up."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from uploadsvc import pipeline
from uploadsvc.config import ConfigError, parse_settings
from uploadsvc.models import Status, UploadRecord
from uploadsvc.pipeline import Pipeline, ProcessingFailed, Processor, StoredUpload, load_pipeline
from uploadsvc.storage import Storage

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
#: The fake processors never read the bytes, so no backend is needed.
UPLOAD = StoredUpload(RECORD, cast(Storage, object()))


class Recording:
    """Appends its name to a shared log and returns a fixed result."""

    def __init__(self, name: str, log: list[str], result: Mapping[str, Any]) -> None:
        self.name, self.log, self.result = name, log, result

    async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
        assert upload is UPLOAD
        self.log.append(self.name)
        return self.result


class Raising:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
        raise self.error


class Hanging:
    async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")


def run(steps: list[tuple[str, Processor]], timeout: float = 10.0) -> dict[str, Any]:
    return asyncio.run(Pipeline(steps, timeout).run(UPLOAD))


def test_results_are_keyed_by_name_in_pipeline_order() -> None:
    log: list[str] = []
    results = run(
        [
            ("zeta", Recording("zeta", log, {"z": 1})),
            ("alpha", Recording("alpha", log, {"a": [1, 2]})),
            ("mid", Recording("mid", log, {})),
        ]
    )
    assert log == ["zeta", "alpha", "mid"]
    assert list(results) == ["zeta", "alpha", "mid"]
    assert results == {"zeta": {"z": 1}, "alpha": {"a": [1, 2]}, "mid": {}}
    assert all(type(r) is dict for r in results.values())


def test_an_empty_pipeline_is_falsy_and_returns_nothing() -> None:
    assert not Pipeline([], 1.0)
    assert Pipeline([("x", Recording("x", [], {}))], 1.0)
    assert run([]) == {}


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


def test_an_error_without_message_is_named_by_its_type() -> None:
    with pytest.raises(ProcessingFailed, match=r"'p' failed: KeyError"):
        run([("p", Raising(KeyError()))])


def test_a_slow_processor_times_out() -> None:
    log: list[str] = []
    with pytest.raises(ProcessingFailed, match=r"processor 'slow' failed: timed out after 0.05 s"):
        run([("slow", Hanging()), ("never", Recording("never", log, {}))], timeout=0.05)
    assert log == []


def test_a_processor_returning_no_mapping_fails_naming_it() -> None:
    """A buggy plugin fails its upload like any other processor error."""

    class ReturnsNone:
        async def process(self, upload: StoredUpload) -> Mapping[str, Any]:
            return None  # type: ignore[return-value]

    with pytest.raises(ProcessingFailed, match="'bad'"):
        run([("bad", ReturnsNone())])


# -- load_pipeline -------------------------------------------------------------


@pytest.fixture
def plugins_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty shipped-plugins folder, in place of the checkout's."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.setattr(pipeline, "PLUGINS_DIR", folder)
    return folder


ECHO = """
    class Echo:
        def __init__(self, options):
            self.options = options

        async def process(self, upload):
            return {"options": dict(self.options), "filename": upload.record.filename}


    def create(options):
        return Echo(options)
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
            "plugins": {"echo": {"greeting": "hi", "n": 3}, "unused": {"x": 1}},
        }
    )
    built = load_pipeline(settings)
    assert [name for name, _ in built.steps] == ["echo"]
    assert built.timeout == 7.0
    results = asyncio.run(built.run(UPLOAD))
    assert results == {"echo": {"options": {"greeting": "hi", "n": 3}, "filename": "a.txt"}}


def test_a_plugin_without_options_gets_an_empty_dict(plugins_dir: Path) -> None:
    add_plugin(plugins_dir, "echo", ECHO)
    built = load_pipeline(parse_settings({"processing": {"pipeline": ["echo", "echo"]}}))
    results = asyncio.run(built.run(UPLOAD))
    assert results["echo"]["options"] == {}
    assert len(built.steps) == 2


def test_a_plugin_without_create_is_a_config_error(plugins_dir: Path) -> None:
    add_plugin(plugins_dir, "nocreate", "VALUE = 1\n")
    with pytest.raises(ConfigError, match="'nocreate' has no create"):
        load_pipeline(parse_settings({"processing": {"pipeline": ["nocreate"]}}))


def test_a_plugin_using_dataclasses_loads(plugins_dir: Path) -> None:
    add_plugin(
        plugins_dir,
        "dc",
        """
        from __future__ import annotations

        from dataclasses import dataclass


        @dataclass
        class Sizer:
            options: dict

            async def process(self, upload):
                return {"size": upload.record.size}


        def create(options):
            return Sizer(options)
        """,
    )
    built = load_pipeline(parse_settings({"processing": {"pipeline": ["dc"]}}))
    assert asyncio.run(built.run(UPLOAD)) == {"dc": {"size": 3}}


@pytest.mark.parametrize(
    "source",
    [
        "raise ImportError('No module named PIL')\n",
        "def create(options):\n    raise ValueError('size must be positive')\n",
        "def broken(:\n",
    ],
    ids=["import-fails", "create-fails", "syntax-error"],
)
def test_a_broken_plugin_is_a_config_error_naming_it(plugins_dir: Path, source: str) -> None:
    add_plugin(plugins_dir, "broken", source)
    with pytest.raises(ConfigError, match="'broken'"):
        load_pipeline(parse_settings({"processing": {"pipeline": ["broken"]}}))


def test_an_installed_entry_point_plugin_is_loaded(
    plugins_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Third-party packages join through the `uploadsvc.plugins` entry point group,
    naming either a module with `create` or the factory itself."""
    site = tmp_path / "site"
    dist = site / "uploadsvc_test_ep-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uploadsvc-test-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[uploadsvc.plugins]\n"
        "by_module = uploadsvc_test_ep\n"
        "by_factory = uploadsvc_test_ep:create\n"
    )
    add_plugin(site, "uploadsvc_test_ep", ECHO)
    monkeypatch.syspath_prepend(str(site))
    request.addfinalizer(lambda: sys.modules.pop("uploadsvc_test_ep", None))
    settings = parse_settings(
        {
            "processing": {"pipeline": ["by_module", "by_factory"]},
            "plugins": {"by_factory": {"k": "v"}},
        }
    )
    results = asyncio.run(load_pipeline(settings).run(UPLOAD))
    assert results == {
        "by_module": {"options": {}, "filename": "a.txt"},
        "by_factory": {"options": {"k": "v"}, "filename": "a.txt"},
    }
