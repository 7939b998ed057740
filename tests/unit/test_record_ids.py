"""Only an id of the service's own shape reaches the store: `$` alone would let a
trailing newline through (`re.match("^[0-9a-f]{28}$", id + "\\n")` matches)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from uploadsvc.errors import NotFound
from uploadsvc.leftovers import _owner
from uploadsvc.records import Records

REAL = "019d2c3a4b5c" + "0" * 16


class Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"storage.{name} was called")


@pytest.mark.parametrize(
    "bad", [REAL + "\n", REAL + "\n\n", REAL[:-1], REAL.upper(), REAL + ".json", "../" + REAL[3:]]
)
def test_ids_not_of_the_services_shape_never_reach_the_store(bad: str) -> None:
    with pytest.raises(NotFound):
        asyncio.run(Records(Untouchable()).get(bad))  # type: ignore[arg-type]


def test_a_key_with_a_newline_after_an_id_belongs_to_no_upload() -> None:
    assert _owner(REAL) == REAL
    assert _owner(REAL + "\n") is None
