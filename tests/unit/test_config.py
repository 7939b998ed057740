"""config: TOML -> Settings, every mistake one ConfigError line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from uploadsvc import config
from uploadsvc.config import ConfigError, Settings, config_path, load_settings, parse_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""))
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.storage.url == "file://./uploads"
    assert settings.storage.options == {}
    assert settings.limits.max_upload_bytes == 1 << 30
    assert settings.processing.pipeline == []
    assert settings.plugins == {}


def test_shipped_config_toml_equals_the_builtin_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed wheel without config.toml must behave like a checkout with it."""
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    path = config_path()
    assert path == config.DEFAULT_CONFIG and path.is_file()
    assert load_settings() == Settings()


def test_a_full_file_is_read(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """
            [server]
            host = "0.0.0.0"
            port = 9000

            [storage]
            url = "s3://bucket/prefix"
            [storage.options]
            endpoint_url = "http://127.0.0.1:5000"
            key = "k"
            client_kwargs = { region_name = "eu-west-1" }
            anon = false

            [limits]
            max_upload_bytes = 1024

            [processing]
            pipeline = ["echo", "thumbs"]
            timeout_seconds = 5

            [plugins.echo]
            greeting = "hi"
            sizes = [1, 2]
            """,
        )
    )
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    assert settings.storage.url == "s3://bucket/prefix"
    assert settings.storage.options == {
        "endpoint_url": "http://127.0.0.1:5000",
        "key": "k",
        "client_kwargs": {"region_name": "eu-west-1"},
        "anon": False,
    }
    assert settings.limits.max_upload_bytes == 1024
    assert settings.processing.pipeline == ["echo", "thumbs"]
    assert settings.processing.timeout_seconds == 5.0
    assert settings.plugins == {"echo": {"greeting": "hi", "sizes": [1, 2]}}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"limit": {}}, "limit"),
        ({"limits": {"max_upload_byte": 5}}, "limits.max_upload_byte"),
        ({"server": {"hots": "x"}}, "server.hots"),
        ({"storage": {"url": "memory://x", "option": {}}}, "storage.option"),
        ({"processing": {"pipelines": []}}, "processing.pipelines"),
    ],
)
def test_unknown_keys_are_named(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, source="my.toml")
    message = str(caught.value)
    assert message == f"my.toml: {key}: unknown key"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server": {"port": "80"}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"host": 1}}, "server.host"),
        ({"server": 5}, "server"),
        ({"limits": {"max_upload_bytes": "1GB"}}, "limits.max_upload_bytes"),
        ({"limits": {"max_upload_bytes": 0}}, "limits.max_upload_bytes"),
        ({"processing": {"pipeline": "echo"}}, "processing.pipeline"),
        ({"processing": {"timeout_seconds": 0}}, "processing.timeout_seconds"),
        ({"storage": {"options": []}}, "storage.options"),
        ({"plugins": {"echo": 1}}, "plugins.echo"),
    ],
)
def test_wrong_types_and_values_are_named(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data)
    message = str(caught.value)
    assert message.startswith(f"<config>: {key}: ")
    assert "\n" not in message


def test_wrong_type_in_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = "80"\n')
    with pytest.raises(ConfigError, match=r"server\.port") as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: server.port: ")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 80\n")
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path)


def test_config_errors_carry_no_cause() -> None:
    """Printed as one line by the CLI: no chained pydantic or tomllib traceback."""
    with pytest.raises(ConfigError) as caught:
        parse_settings({"x": 1})
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def test_env_var_names_the_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1234\n")
    monkeypatch.setenv("UPLOADSVC_CONFIG", str(path))
    assert config_path() == path
    assert load_settings().server.port == 1234


def test_env_var_replaces_the_default_file_as_a_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_CONFIG", str(write(tmp_path, "[limits]\nmax_upload_bytes = 7\n")))
    settings = load_settings()
    assert settings.limits.max_upload_bytes == 7
    assert settings.server == Settings().server


def test_env_var_pointing_nowhere_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_settings()


def test_an_explicit_path_wins_over_the_env_var(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_CONFIG", str(tmp_path / "missing.toml"))
    assert load_settings(write(tmp_path, "[server]\nport = 1\n")).server.port == 1


def test_without_env_var_or_shipped_file_the_defaults_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("UPLOADSVC_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    assert config_path() is None
    assert load_settings() == Settings()
