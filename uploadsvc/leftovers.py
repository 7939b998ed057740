"""Removing what no record owns, once it is older than `[jobs] grace_seconds`.

A process that dies mid-upload leaves bytes no one will finish: a part file
or a pending multipart upload (the write never committed), an object whose
record was never written (killed between the two), a staged copy of an
upload that is final or was never recorded, markers (`records.py`) whose
record never came, derived files (`derived.py`) of an upload deleted while a
processor wrote them. Nothing here can be told apart from an upload still in
progress except by age, so only what is older than the grace period goes;
the upload ids carry their creation time. Records without a listing index
entry (written before the index existed, or lost to a power cut: index entries
are written without a flush) get it here, at start-up and after.

Kept on purpose: the staged bytes of a `failed` upload (until it is deleted)
and of every upload not yet final.
"""

from __future__ import annotations

import logging
import re
import time

from . import derived
from .errors import NotFound
from .models import ID_PATTERN, Status, age_seconds
from .records import ACTIVE, INDEX, index_key, indexed_id
from .service import UploadService

log = logging.getLogger(__name__)

_ID = re.compile(ID_PATTERN)


async def remove_leftovers(service: UploadService, grace: float) -> int:
    """One pass over storage and staging; returns how much was removed."""
    storage = service.storage
    removed = await storage.remove_incomplete(grace, _began)
    removed += await service.staging.remove_incomplete(grace, _began)
    keys = await storage.list()
    recorded = {k.removesuffix(".json") for k in keys if k.endswith(".json")}
    indexed = {indexed_id(k) for k in keys if k.startswith(INDEX)}
    for upload_id in recorded - indexed:
        if _ID.fullmatch(upload_id):
            await storage.put_marker(index_key(upload_id))  # from before the index, or lost
    for key in keys:
        owner = _owner(key)
        if owner and owner not in recorded and age_seconds(owner) > grace:
            await storage.delete(key)
            removed += 1
    for key in await service.staging.list():
        if _ID.fullmatch(key) and await _staged_copy_unneeded(service, key, grace):
            await service.staging.delete(key)
            removed += 1
    if removed:
        log.info("removed %d leftovers older than %g s", removed, grace)
    return removed


def _owner(key: str) -> str | None:
    """The upload a byte object, derived file or marker belongs to (records excluded)."""
    if key.startswith(INDEX):
        key = indexed_id(key)
    elif key.startswith(derived.PREFIX):
        key = derived.owner_of(key)
    key = key.removeprefix(ACTIVE)
    return key if _ID.fullmatch(key) else None


def _began(key: str) -> float | None:
    """When the upload behind `key` began, from its id; None for other keys."""
    return time.time() - age_seconds(key) if _ID.fullmatch(key) else None


async def _staged_copy_unneeded(service: UploadService, upload_id: str, grace: float) -> bool:
    try:
        record = await service.records.get(upload_id)
    except NotFound:
        return age_seconds(upload_id) > grace  # staged, but never recorded
    return record.status is Status.completed
