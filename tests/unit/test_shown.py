"""shown.py: a configured URL in a message never shows its password."""

from __future__ import annotations

import pytest

from uploadsvc.config import ConfigError
from uploadsvc.shown import shown_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("sftp://me:pa%40ss@host:22/folder", "sftp://me:***@host:22/folder"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("redis://user:pw@h/0", "redis://user:***@h/0"),
        ("redis://:s3cret@[::1", "redis:..."),
    ],
)
def test_the_password_is_masked_and_nothing_else_changes(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_a_redis_url_that_does_not_parse_keeps_its_password_out_of_the_message() -> None:
    pytest.importorskip("saq")
    from uploadsvc.redis_queue import RedisQueue

    with pytest.raises(ConfigError) as caught:
        RedisQueue("redis://:s3cret@127.0.0.1:notaport/0", heartbeat_seconds=5)
    assert "s3cret" not in str(caught.value)
