"""The leftovers pass repairs what a power cut may lose: index entries are written
without a flush, and a record without one is listed again after the pass."""

from __future__ import annotations

import asyncio

from tests.conftest import Live
from uploadsvc.leftovers import remove_leftovers
from uploadsvc.records import index_key


def test_a_record_whose_index_entry_was_lost_is_listed_again(live: Live) -> None:
    ids = [
        live.http.post("/upload-blocking/", files={"file": (f"f{i}", b"x")}).json()["id"]
        for i in range(2)
    ]
    service = live.app.state.service
    asyncio.run(service.storage.delete(index_key(ids[0])))
    assert [r["id"] for r in live.http.get("/uploads").json()["items"]] == [ids[1]]

    asyncio.run(remove_leftovers(service, grace=3600))
    assert [r["id"] for r in live.http.get("/uploads").json()["items"]] == ids[::-1]
