"""The harness's hands inside a store, through uploadsvc's own storage and records code.

    python benchmarks/storetool.py seed URL --options JSON --count N
    python benchmarks/storetool.py list URL --options JSON --limit N --count N
    python benchmarks/storetool.py statuses URL --options JSON ID...

`seed` writes N completed uploads as the service would have left them: a tiny object under
`<id>`, then `Records.create` (the listing's `index.` marker and the record). Going through
`Records` rather than writing files or objects by hand means the listing under test finds
exactly the layout the service makes, and 10,000 records take seconds, not 10,000 HTTP
uploads. The objects are 1 KiB: the listing reads records, never the bytes.

`list` times `Storage.list` of one page of `index.` names, `count` times: the part of a
listing request that is the store's listing, without HTTP and without reading records (on
moto it grows with the bucket: moto scans every key of a bucket to list any prefix).

`statuses` reads records straight from the store while no service runs (after a SIGKILL,
before the restart): what the crash left behind, and when each lease runs out.

A program of its own, run in a child process like loadgen.py (the harness puts the checkout
on its PYTHONPATH): seeding's CPU and memory stay out of the harness, and store calls run on
an event loop as they do in the service. Each subcommand prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from typing import Any

from uploadsvc.models import Status, StoredRecord, new_id, now
from uploadsvc.records import INDEX, Records
from uploadsvc.storage import Storage, open_storage

SEED_OBJECT_BYTES = 1024
#: Records written at once: enough to keep a remote store busy, few enough that
#: moto's threaded server does not start refusing connections.
SEED_CONCURRENCY = 32


async def seed_one(storage: Storage, records: Records, index: int) -> None:
    upload_id = new_id()
    data = os.urandom(SEED_OBJECT_BYTES)
    await storage.put_small(upload_id, data)
    created = now()
    await records.create(
        StoredRecord(
            id=upload_id,
            filename=f"seed-{index:05d}.bin",
            size=len(data),
            content_type="application/octet-stream",
            sha256=hashlib.sha256(data).hexdigest(),
            status=Status.completed,
            created_at=created,
            completed_at=created,
            url=f"/uploads/{upload_id}/content",
        )
    )


async def seed(url: str, options: dict[str, Any], count: int) -> dict[str, Any]:
    storage = open_storage(url, options)
    records = Records(storage)
    slots = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(index: int) -> None:
        async with slots:
            await seed_one(storage, records, index)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    return {"seeded": count, "seconds": time.monotonic() - started}


async def list_times(url: str, options: dict[str, Any], limit: int, count: int) -> dict[str, Any]:
    storage = open_storage(url, options)
    await storage.list(INDEX, limit=limit)  # untimed: connections, imports
    seconds = []
    for _ in range(count):
        started = time.monotonic()
        keys = await storage.list(INDEX, limit=limit)
        seconds.append(time.monotonic() - started)
    return {"seconds": seconds, "keys": len(keys)}


async def statuses(url: str, options: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """Each id's status and lease expiry (epoch seconds, or None); a missing record is an
    error, since every id given was answered 202."""
    records = Records(open_storage(url, options))
    found = await asyncio.gather(*(records.get(i) for i in ids))
    return {
        "records": {
            r.id: {
                "status": str(r.status),
                "lease_until": (
                    r.job.lease_until.timestamp() if r.job and r.job.lease_until else None
                ),
            }
            for r in found
        }
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("seed", "list", "statuses"):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("--options", default="{}", help="storage options, as JSON")
        if name == "statuses":
            p.add_argument("ids", nargs="+")
        else:
            p.add_argument("--count", type=int, required=True)
        if name == "list":
            p.add_argument("--limit", type=int, required=True)
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    if args.command == "seed":
        result = asyncio.run(seed(args.url, options, args.count))
    elif args.command == "list":
        result = asyncio.run(list_times(args.url, options, args.limit, args.count))
    else:
        result = asyncio.run(statuses(args.url, options, args.ids))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
