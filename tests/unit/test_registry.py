"""storage.registry: which backend serves a URL, and the one line when none can."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_cli import one_line_error, run, serve, write_config
from uploadsvc.config import ConfigError
from uploadsvc.storage import REQUIRED_ABILITIES, Ability, open_storage
from uploadsvc.storage.local import LocalStorage
from uploadsvc.storage.memory import MemoryStorage
from uploadsvc.storage.registry import backend_class
from uploadsvc.storage.s3 import S3Storage


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///tmp/x", LocalStorage),
        ("./relative", LocalStorage),
        ("memory://x", MemoryStorage),
        ("s3://bucket/prefix", S3Storage),
        ("S3://bucket/prefix", S3Storage),
    ],
)
def test_builtin_protocols(url: str, expected: type) -> None:
    assert backend_class(url) is expected


def test_every_builtin_backend_keeps_what_the_service_needs() -> None:
    for cls in (LocalStorage, MemoryStorage, S3Storage):
        assert cls.abilities >= REQUIRED_ABILITIES, cls
    assert Ability.shared_conditions not in MemoryStorage.abilities
    assert Ability.local_files in LocalStorage.abilities


def test_unknown_protocol_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown protocol 'nope'.*s3://") as e:
        open_storage("nope://x")
    assert "\n" not in str(e.value)


def test_an_fsspec_filesystem_alone_is_refused_saying_what_it_cannot_promise() -> None:
    with pytest.raises(ConfigError, match="no uploadsvc backend") as e:
        open_storage("ftp://host/folder")
    assert "whole-or-nothing commit" in str(e.value)


def test_a_backend_without_a_needed_ability_is_refused() -> None:
    with pytest.raises(ConfigError, match="durable commit"):
        open_storage("memory://x", required=REQUIRED_ABILITIES | {Ability.durable_commit})


def test_missing_package_names_what_to_install(tmp_path: Path) -> None:
    """As a user without adlfs sees it: start-up stops with the pip command."""
    config = write_config(tmp_path, '[storage]\nurl = "az://container/uploads"\n')
    blocked = (
        "import sys, runpy; sys.modules['adlfs'] = None; "
        f"sys.argv = ['uploadsvc', 'serve', '--config', {str(config)!r}]; "
        "runpy.run_module('uploadsvc', run_name='__main__')"
    )
    line = one_line_error(run(["-c", blocked], tmp_path))
    assert "'adlfs'" in line and "pip install 'uploadsvc[azure]'" in line


def test_unsupported_protocol_stops_start_up_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[storage]\nurl = "ftp://example.org/x"\n')
    line = one_line_error(serve(config))
    assert "storage.url: ftp://example.org/x" in line
