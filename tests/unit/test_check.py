"""`uploadsvc check`: the configuration `serve` would run, tried; a few lines and exit 0,
or one line and exit 1; never a secret.

The probe is tested on stores that misbehave; the command runs as a real
subprocess, as a user (or a container's health check) runs it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_cli import one_line_error, run
from uploadsvc import check
from uploadsvc.errors import PreconditionFailed, StorageUnavailable
from uploadsvc.storage import open_storage
from uploadsvc.storage.memory import MemoryStorage

SECRET = "hunter2-hunter2-hunter2"


def memory(cls: type[MemoryStorage] = MemoryStorage) -> MemoryStorage:
    return cls.from_url(f"memory://check-{uuid.uuid4().hex}", {})


# The probe.


def test_the_probe_leaves_nothing_behind() -> None:
    storage = open_storage(f"memory://check-{uuid.uuid4().hex}")

    async def probe_and_list() -> list[str]:
        await check.probe(storage)
        return await storage.list()

    assert asyncio.run(probe_and_list()) == []


class _LosesTheRace(MemoryStorage):
    """Claims conditional create and does not keep it."""

    async def put_small(self, key: str, data: bytes, **conditions: Any) -> str:
        raise PreconditionFailed(f"{key} already exists")


class _Hangs(MemoryStorage):
    async def get_small(self, key: str) -> tuple[bytes, str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class _CannotDelete(MemoryStorage):
    async def delete(self, key: str) -> None:
        raise StorageUnavailable(f"storage {self.url}: access denied")


@pytest.mark.parametrize(
    ("cls", "said"),
    [
        (_LosesTheRace, "could not create probe uploadsvc-check."),
        (_Hangs, "could not read back probe uploadsvc-check."),
        (_CannotDelete, "access denied (deleting probe uploadsvc-check."),
    ],
)
def test_a_store_that_fails_the_probe_is_named(cls: type[MemoryStorage], said: str) -> None:
    storage = memory(cls)
    with pytest.raises(StorageUnavailable) as caught:
        asyncio.run(check.probe(storage, seconds=0.2))
    assert storage.url in str(caught.value)
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("n", "shown"),
    [(1 << 30, "1 GiB"), (5 << 20, "5 MiB"), (1536, "1536 bytes"), (1, "1 bytes")],
)
def test_sizes_are_shown_in_whole_units(n: int, shown: str) -> None:
    assert check._bytes(n) == shown


# The command.


def uploadsvc_check(cwd: Path, *args: str, **env: str) -> Any:
    return run(["-m", "uploadsvc", "check", *args], cwd, **env)


def test_the_default_local_folder_config_is_ok(tmp_path: Path) -> None:
    result = uploadsvc_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("configuration: ") and lines[0].endswith("config.toml")
    assert lines[-1] == "configuration OK"
    assert "storage: file://./uploads (LocalStorage: atomic_commit" in result.stdout
    assert "staging: file://./staging (LocalStorage: atomic_commit" in result.stdout
    assert result.stdout.count("reachable, writable") == 2
    assert any(line.startswith("limits: max_upload_bytes 1 GiB") for line in lines), lines
    assert "jobs: in this process (no queue); attempts 5" in result.stdout
    assert "pipeline: none" in lines
    # The folders serve would create, and no probe left in them.
    assert list((tmp_path / "uploads").iterdir()) == []
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_wrong_type_from_the_environment_is_one_line_naming_it(tmp_path: Path) -> None:
    line = one_line_error(uploadsvc_check(tmp_path, UPLOADSVC_SERVER__PORT="abc"))
    assert "UPLOADSVC_SERVER__PORT" in line and "server.port" in line


def test_an_unknown_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    line = one_line_error(uploadsvc_check(tmp_path, UPLOADSVC_STORAGE__URLL="memory://x"))
    assert "UPLOADSVC_STORAGE__URLL" in line and "unknown key" in line


def test_serve_refuses_an_unknown_variable_too(tmp_path: Path) -> None:
    """One loader for both: what check accepts is what serve runs."""
    result = run(["-m", "uploadsvc", "serve", "--port", "0"], tmp_path, UPLOADSVC_FOO="1")
    assert "UPLOADSVC_FOO" in one_line_error(result)


def test_secrets_from_files_are_used_and_never_printed(tmp_path: Path) -> None:
    (tmp_path / "s3").write_text(f"{SECRET}\n")
    (tmp_path / "webhook").write_text(f"{SECRET}\n")
    result = uploadsvc_check(
        tmp_path,
        UPLOADSVC_STORAGE__URL=f"memory://check-{uuid.uuid4().hex}",
        UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE=str(tmp_path / "s3"),
        UPLOADSVC_PROCESSING__PIPELINE='["webhook"]',
        UPLOADSVC_PLUGINS__WEBHOOK='{"urls": ["http://127.0.0.1:9/hook"]}',
        UPLOADSVC_PLUGINS__WEBHOOK__SECRET_FILE=str(tmp_path / "webhook"),
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "(+ 5 environment variables: " in result.stdout
    assert "UPLOADSVC_PLUGINS__WEBHOOK__SECRET_FILE" in result.stdout
    assert "; options secret) reachable, writable" in result.stdout  # names, not values
    assert "pipeline: webhook (options secret, urls)" in result.stdout


def test_a_secret_with_a_wrong_value_is_named_not_printed(tmp_path: Path) -> None:
    (tmp_path / "webhook").write_text("xq7zw\n")  # under the plugin's 16 characters
    result = uploadsvc_check(
        tmp_path,
        UPLOADSVC_STORAGE__URL=f"memory://check-{uuid.uuid4().hex}",
        UPLOADSVC_PROCESSING__PIPELINE='["webhook"]',
        UPLOADSVC_PLUGINS__WEBHOOK='{"urls": ["http://127.0.0.1:9/hook"]}',
        UPLOADSVC_PLUGINS__WEBHOOK__SECRET_FILE=str(tmp_path / "webhook"),
    )
    line = one_line_error(result)
    assert "plugins.webhook.secret" in line and "xq7zw" not in line


def test_an_unreachable_storage_is_one_line_naming_the_url(tmp_path: Path) -> None:
    """Nothing listens on port 9; the URL and the endpoint come from the environment."""
    result = uploadsvc_check(
        tmp_path,
        UPLOADSVC_STORAGE__URL="s3://no-such-bucket-xyz/p",
        UPLOADSVC_STORAGE__OPTIONS__ENDPOINT_URL="http://127.0.0.1:9",
        AWS_MAX_ATTEMPTS="1",
    )
    assert "s3://no-such-bucket-xyz/p" in one_line_error(result)
    assert result.stdout == ""


def test_a_bad_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_upload_byte = 5\n")
    line = one_line_error(uploadsvc_check(tmp_path, "--config", str(config)))
    assert "limits.max_upload_byte" in line
