"""auth: tokens by digest, the tokens file, and page sessions that reveal no token."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.unit.test_cli import one_line_error, serve, write_config
from uploadsvc.auth import SESSION_SECONDS, Tokens, read_tokens_file
from uploadsvc.config import AuthSettings, ConfigError, parse_settings

NOW = 1_800_000_000.0


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens(*entries: object, tokens_file: str = "") -> Tokens:
    auth = parse_settings({"auth": {"tokens": list(entries), "tokens_file": tokens_file}}).auth
    return Tokens.from_settings(auth)


def test_no_token_means_open() -> None:
    assert not Tokens.from_settings(AuthSettings()).enabled


def test_a_plain_token_has_every_scope_and_others_are_refused() -> None:
    table = tokens("s3cret-token")
    assert table.enabled
    assert table.check(b"s3cret-token") == {"upload", "read", "delete"}
    assert table.check(b"s3cret-toke") is None
    assert table.check(b"") is None


def test_tables_give_scopes_by_token_or_by_digest() -> None:
    table = tokens(
        {"token": "reader", "scopes": ["read"]},
        {"sha256": sha("uploader"), "scopes": ["upload"]},
        {"sha256": sha("reader").upper(), "scopes": ["delete"]},  # the same token again
    )
    assert table.check(b"uploader") == {"upload"}
    assert table.check(b"reader") == {"read", "delete"}  # every matching entry counts


def test_the_tokens_file_holds_digests_and_scopes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "# who may do what\n"
        f"{sha('everything')}  -\n"  # as `printf %s "$T" | sha256sum` prints it
        "\n"
        f"{sha('reader')} read   # the dashboard\n"
        f"{sha('dropbox')} upload read\n",
        encoding="utf-8",
    )
    table = tokens(tokens_file=str(path))
    assert table.check(b"everything") == {"upload", "read", "delete"}
    assert table.check(b"reader") == {"read"}
    assert table.check(b"dropbox") == {"upload", "read"}
    assert table.check(sha("reader").encode()) is None  # the digest is not the token


def test_tokens_and_the_file_add_up(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{sha('from-file')} read\n", encoding="utf-8")
    table = tokens("from-config", tokens_file=str(path))
    assert table.check(b"from-config") and table.check(b"from-file") == {"read"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no token digest"),
        ("# only comments\n\n", "holds no token digest"),
        ("my-plain-token read\n", "line 1: not a sha256 digest"),
        (f"{sha('x')}\n{sha('y')[:-1]}\n", "line 2: not a sha256 digest"),
        (f"{sha('x')} read write\n", "line 1: scopes are upload, read, delete"),
    ],
)
def test_a_bad_tokens_file_is_one_line_naming_the_line_not_its_content(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_tokens_file(path)
    message = str(caught.value)
    assert message.startswith(f"auth.tokens_file: {path}: ") and problem in message
    assert "my-plain-token" not in message and "\n" not in message


def test_a_missing_tokens_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.tokens_file: .*missing.*: cannot read"):
        tokens(tokens_file=str(tmp_path / "missing"))


def test_a_bad_tokens_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("my-plain-token\n", encoding="utf-8")
    config = write_config(
        tmp_path, '[storage]\nurl = "memory://x"\n[auth]\ntokens_file = "tokens"\n'
    )
    line = one_line_error(serve(config))
    assert "auth.tokens_file: tokens: line 1: not a sha256 digest" in line
    assert "my-plain-token" not in line


def test_a_session_names_the_token_without_revealing_it() -> None:
    table = tokens({"token": "reader-token", "scopes": ["read"]}, "admin-token")
    value = table.open_session(b"reader-token", now=NOW)
    assert value is not None
    assert "reader-token" not in value and sha("reader-token") not in value
    assert table.check_session(value, now=NOW + 60) == {"read"}
    assert table.check_session(value, now=NOW + SESSION_SECONDS + 1) is None  # expired
    assert table.open_session(b"wrong", now=NOW) is None


def test_a_forged_or_altered_session_is_refused() -> None:
    table = tokens("admin-token")
    value = table.open_session(b"admin-token", now=NOW)
    assert value is not None
    expires, fingerprint, mac = value.split(".")
    later = f"{int(expires) + 10**6}.{fingerprint}.{mac}"
    for forged in (later, f"{expires}.{fingerprint}.{'0' * 64}", "", "a.b.c", "é.é.é", value[:-1]):
        assert table.check_session(forged, now=NOW) is None


def test_sessions_end_when_the_tokens_change() -> None:
    value = tokens("admin-token").open_session(b"admin-token", now=NOW)
    assert value is not None
    assert tokens("admin-token").check_session(value, now=NOW)  # another worker: same key
    assert tokens("admin-token", "new-token").check_session(value, now=NOW) is None
    narrowed = tokens({"token": "admin-token", "scopes": ["read"]})
    assert narrowed.check_session(value, now=NOW) is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"token": "a", "sha256": sha("a")}, "give token or sha256"),
        ({"scopes": ["read"]}, "give token or sha256"),
        ({"token": "a", "scopes": ["write"]}, "auth.tokens.0.scopes.0"),
        ({"sha256": "abc"}, "auth.tokens.0.sha256"),
        ("", "auth.tokens.0.token"),
        ("two words", "auth.tokens.0.token"),
        (1, "auth.tokens.0"),
    ],
)
def test_bad_token_entries_are_named(entry: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_settings({"auth": {"tokens": [entry]}})


def test_a_token_never_shows_in_the_settings_repr() -> None:
    settings = parse_settings({"auth": {"tokens": ["s3cret-token", {"token": "other-s3cret"}]}})
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)


@pytest.mark.parametrize("origin", ["https://app.example.org/", "app.example.org", "https://x/y"])
def test_cors_origins_are_origins(origin: str) -> None:
    with pytest.raises(ConfigError, match=r"cors\.allow_origins: .*is not an origin"):
        parse_settings({"cors": {"allow_origins": [origin]}})
    assert parse_settings({"cors": {"allow_origins": ["*", "http://127.0.0.1:3000"]}})
