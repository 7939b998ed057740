"""`[server] root_path` and `forwarded_allow_ips`: validated at start-up, handed to uvicorn
by `uploadsvc serve`, and applied at the edge (a record's paths under the prefix).

What they do behind a real nginx is tests/e2e/test_nginx.py's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from uploadsvc import cli
from uploadsvc.config import ConfigError, parse_settings
from uploadsvc.web.urls import under_root


@pytest.mark.parametrize("prefix", ["", "/uploads-service", "/a/b-c_d.e~f"])
def test_a_root_path_is_empty_or_a_path_prefix(prefix: str) -> None:
    assert parse_settings({"server": {"root_path": prefix}}).server.root_path == prefix


@pytest.mark.parametrize(
    "prefix",
    ["uploads", "/uploads/", "/", "/a b", "/a?b", "/a#b", "/%41", "/\u00e9", "/a\nb", "/a\\b"],
)
def test_a_root_path_that_is_no_plain_prefix_is_one_line_naming_it(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"^<config>: server\.root_path: "):
        parse_settings({"server": {"root_path": prefix}})


def test_by_default_only_loopback_is_believed() -> None:
    server = parse_settings({}).server
    assert server.forwarded_allow_ips == ["127.0.0.1", "::1"]
    assert server.root_path == ""


@pytest.mark.parametrize(
    "addresses", [[], ["*"], ["10.0.0.7", "10.1.0.0/16", "fd00::/8", "::1"], ["192.0.2.1/32"]]
)
def test_forwarded_allow_ips_takes_addresses_and_networks(addresses: list[str]) -> None:
    settings = parse_settings({"server": {"forwarded_allow_ips": addresses}})
    assert settings.server.forwarded_allow_ips == addresses


@pytest.mark.parametrize(
    "address",
    [
        "localhost",  # a name: uvicorn would compare it as text, never matching a peer
        "10.0.0.1/24",  # host bits set: uvicorn would silently take it as text too
        "10.0.0.0/33",
        "",
        "*.example.org",
    ],
)
def test_forwarded_allow_ips_that_uvicorn_would_not_match_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match=r"^<config>: server\.forwarded_allow_ips: "):
        parse_settings({"server": {"forwarded_allow_ips": ["127.0.0.1", address]}})


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({}, {"root_path": "", "proxy_headers": True, "forwarded_allow_ips": ["127.0.0.1", "::1"]}),
        (
            {"root_path": "/files-here", "forwarded_allow_ips": ["10.0.0.0/8"]},
            {
                "root_path": "/files-here",
                "proxy_headers": True,
                "forwarded_allow_ips": ["10.0.0.0/8"],
            },
        ),
        (
            {"forwarded_allow_ips": []},
            {"root_path": "", "proxy_headers": False, "forwarded_allow_ips": []},
        ),
    ],
)
def test_serve_hands_them_to_uvicorn(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in server.items()]
    config = tmp_path / "service.toml"
    config.write_text(
        "[server]\n" + "\n".join(lines) + "\n"
        f'[storage]\nurl = "file://{tmp_path / "store"}"\n'
        f'[staging]\nurl = "file://{tmp_path / "staging"}"\n'
    )
    given: dict[str, Any] = {}
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **options: given.update(options))
    assert cli.main(["serve", "--config", str(config)]) == 0
    assert {key: given[key] for key in expected} == expected


def test_a_record_is_answered_under_the_prefix_and_unchanged_without_one() -> None:
    record = {
        "id": "x",
        "url": "/uploads/x/content",
        "derived": {"thumbnail": "/uploads/x/derived/thumbnail"},
    }
    assert under_root(dict(record), "") == record
    assert under_root(dict(record), "/p") == {
        "id": "x",
        "url": "/p/uploads/x/content",
        "derived": {"thumbnail": "/p/uploads/x/derived/thumbnail"},
    }
