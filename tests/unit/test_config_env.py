"""config: `UPLOADSVC_*` environment variables and `*_FILE` secrets over the TOML file.

Each mistake is one `ConfigError` line naming the variable; a variable that
names no key is refused, as an unknown key in the file is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uploadsvc import config
from uploadsvc.config import ConfigError, Settings, environment_variables, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No UPLOADSVC_* variable of the developer's shell reaches these tests."""
    for name in os.environ:
        if name.upper().startswith("UPLOADSVC_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def secret(tmp_path: Path, content: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def error(path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.__cause__ is None
    return message


# Overrides and precedence.


def test_a_variable_overrides_one_key_of_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = toml(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 9000\n')
    monkeypatch.setenv("UPLOADSVC_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert settings.server.port == 9100  # a string in the environment, an int here
    assert settings.server.host == "0.0.0.0"  # the file's, untouched


def test_variables_apply_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    monkeypatch.setenv("UPLOADSVC_STORAGE__URL", "memory://from-env")
    monkeypatch.setenv("UPLOADSVC_JOBS__LEASE_SECONDS", "2.5")
    settings = load_settings()
    assert settings.storage.url == "memory://from-env"
    assert settings.jobs.lease_seconds == 2.5


def test_the_environment_applies_over_the_file_named_by_uploadsvc_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """UPLOADSVC_CONFIG names the file; it is not a key, and is not refused."""
    monkeypatch.setenv("UPLOADSVC_CONFIG", str(toml(tmp_path, "[limits]\nmax_upload_bytes = 7\n")))
    monkeypatch.setenv("UPLOADSVC_QUEUE__URL", "")
    settings = load_settings()
    assert settings.limits.max_upload_bytes == 7
    assert settings.queue.url == ""


def test_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("uploadsvc_Server__Port", "1234")
    assert load_settings(toml(tmp_path)).server.port == 1234


def test_explicit_settings_take_nothing_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings(...) is what a test gives it: the environment is load_settings' business."""
    monkeypatch.setenv("UPLOADSVC_SERVER__PORT", "1")
    monkeypatch.setenv("UPLOADSVC_NO_SUCH_KEY", "x")
    assert Settings().server.port == 8000


# Lists and tables.


def test_a_list_is_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = toml(tmp_path, '[processing]\npipeline = ["mimetype"]\n')
    monkeypatch.setenv("UPLOADSVC_PROCESSING__PIPELINE", '["delay", "thumbnail"]')
    assert load_settings(path).processing.pipeline == ["delay", "thumbnail"]


def test_storage_options_merge_key_by_key_with_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = toml(
        tmp_path,
        """
        [storage]
        url = "s3://bucket/prefix"
        [storage.options]
        key = "from-file"
        anon = false
        client_kwargs = { region_name = "eu-west-1", verify = false }
        """,
    )
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__KEY", "from-env")
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__CLIENT_KWARGS__REGION_NAME", "us-east-1")
    assert load_settings(path).storage.options == {
        "key": "from-env",
        "anon": False,
        "endpoint_url": "http://127.0.0.1:5000",
        "client_kwargs": {"region_name": "us-east-1", "verify": False},
    }


def test_a_table_as_json_merges_with_the_file_and_with_deeper_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The deeper variable wins over the JSON table, whatever the environment's order."""
    path = toml(tmp_path, '[storage.options]\nkey = "k"\n')
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__USE_SSL", "yes")
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS", '{"anon": true, "use_ssl": false}')
    assert load_settings(path).storage.options == {"key": "k", "anon": True, "use_ssl": "yes"}


def test_a_single_value_in_a_free_form_table_stays_a_string(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pydantic-settings' rule, kept: a numeric password stays a password; typed values
    in a free-form table come with the table as JSON (the test above)."""
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__SECRET", "12345")
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__ANON", "false")
    assert load_settings(toml(tmp_path)).storage.options == {"secret": "12345", "anon": "false"}


def test_plugin_options_merge_with_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = toml(
        tmp_path,
        '[processing]\npipeline = ["mimetype"]\n[plugins.mimetype]\nallow = ["image/*"]\n',
    )
    monkeypatch.setenv("UPLOADSVC_PLUGINS__WEBHOOK", '{"urls": ["https://example.org/hook"]}')
    monkeypatch.setenv("UPLOADSVC_PLUGINS__DELAY__SECONDS", "5")
    assert load_settings(path).plugins == {
        "mimetype": {"allow": ["image/*"]},
        "webhook": {"urls": ["https://example.org/hook"]},
        "delay": {"seconds": "5"},  # the plugin's own (lax) options model reads 5.0
    }


# *_FILE secrets.


def test_a_file_variable_reads_the_value_without_its_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = toml(tmp_path, '[storage.options]\nkey = "k"\n')
    monkeypatch.setenv(
        "UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE", str(secret(tmp_path, "s3cr3t 12\n"))
    )
    assert load_settings(path).storage.options == {"key": "k", "secret": "s3cr3t 12"}


def test_a_file_variable_works_for_any_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No code per key: a typed key, a list (JSON, as in the variable) and a plugin's
    free-form option, as `[auth] tokens` and `[plugins.webhook] secret` will be."""
    monkeypatch.setenv("UPLOADSVC_SERVER__PORT_FILE", str(secret(tmp_path, "8123\r\n", "port")))
    monkeypatch.setenv(
        "UPLOADSVC_PROCESSING__PIPELINE_FILE", str(secret(tmp_path, '["webhook"]\n', "pipeline"))
    )
    monkeypatch.setenv(
        "UPLOADSVC_PLUGINS__WEBHOOK__SECRET_FILE", str(secret(tmp_path, "whsec_abc\n", "wh"))
    )
    settings = load_settings(toml(tmp_path))
    assert settings.server.port == 8123
    assert settings.processing.pipeline == ["webhook"]
    assert settings.plugins["webhook"]["secret"] == "whsec_abc"


def test_a_file_variable_with_its_plain_variable_names_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__SECRET", "a")
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE", str(secret(tmp_path, "b")))
    message = error(toml(tmp_path))
    assert "UPLOADSVC_STORAGE__OPTIONS__SECRET " in message
    assert "UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE" in message


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_an_unreadable_file_names_the_variable_and_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, what: str
) -> None:
    target = tmp_path / "missing" if what == "missing" else tmp_path
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE", str(target))
    message = error(toml(tmp_path))
    assert message.startswith("environment variable UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE: ")
    assert f"cannot read {target}" in message


def test_a_file_that_is_not_text_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00")
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__SECRET_FILE", str(binary))
    assert "not UTF-8 text" in error(toml(tmp_path))


def test_a_secret_never_shows_in_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UPLOADSVC_SERVER__PORT_FILE", str(secret(tmp_path, "hunter2-secret")))
    message = error(toml(tmp_path))
    assert "UPLOADSVC_SERVER__PORT_FILE" in message and "server.port" in message
    assert "hunter2" not in message


# Mistakes: one line naming the variable.


def test_a_wrong_type_names_the_key_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_SERVER__PORT", "abc")
    message = error(toml(tmp_path))
    assert message.startswith("environment variable UPLOADSVC_SERVER__PORT: server.port: ")


def test_a_wrong_value_in_the_file_still_names_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = toml(tmp_path, '[server]\nport = "80"\n')
    monkeypatch.setenv("UPLOADSVC_SERVER__HOST", "0.0.0.0")
    assert error(path).startswith(f"{path}: server.port: ")


def test_an_unknown_file_key_is_still_refused_under_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = toml(tmp_path, "[limits]\nmax_upload_byte = 5\n")
    monkeypatch.setenv("UPLOADSVC_SERVER__PORT", "1")
    assert error(path) == f"{path}: limits.max_upload_byte: unknown key"


def test_a_variable_naming_no_section_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_STORAG__URL", "memory://x")
    message = error(toml(tmp_path))
    assert message.startswith("environment variable UPLOADSVC_STORAG__URL: storag: unknown key")


def test_a_single_underscore_gets_a_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UPLOADSVC_STORAGE_URL", "memory://x")
    assert "did you mean UPLOADSVC_STORAGE__URL?" in error(toml(tmp_path))


def test_a_variable_naming_no_key_of_a_section_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLOADSVC_STORAGE__URLL", "memory://x")
    assert error(toml(tmp_path)) == (
        "environment variable UPLOADSVC_STORAGE__URLL: storage.urll: unknown key"
    )


def test_an_empty_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UPLOADSVC_STORAGE__OPTIONS__", "x")
    assert "empty key" in error(toml(tmp_path))


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("UPLOADSVC_PROCESSING__PIPELINE", "delay", "processing.pipeline"),
        ("UPLOADSVC_STORAGE", "{url", "storage"),
    ],
)
def test_json_that_is_not_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, key: str
) -> None:
    monkeypatch.setenv(name, value)
    assert error(toml(tmp_path)).startswith(f"environment variable {name}: {key}: not valid JSON")


def test_environment_variables_lists_the_keys_set() -> None:
    environ = {
        "UPLOADSVC_CONFIG": "x",
        "UPLOADSVC_B__X_FILE": "/f",
        "UPLOADSVC_A__X": "1",
        "HOME": "/",
    }
    assert environment_variables(environ) == ["UPLOADSVC_A__X", "UPLOADSVC_B__X_FILE"]
