"""`memory://`: fsspec's in-process store, for trying things out and for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .files import RenamingStorage
from .interface import Ability, Storage

#: memory:// lives in this process only, so one lock of the process guards it all.
_MEMORY_GUARD = threading.Lock()


class MemoryStorage(RenamingStorage):
    """`memory://`: fsspec's in-process store, for trying things out and for tests.

    Nothing survives the process and no other process can see it, so it
    declares neither durability nor conditions shared between processes.
    """

    abilities = frozenset(
        {
            Ability.atomic_commit,
            Ability.conditional_create,
            Ability.conditional_replace,
            Ability.consistent_listing,
        }
    )

    @contextmanager
    def guard(self) -> Iterator[None]:
        with _MEMORY_GUARD:
            yield

    # A writer here dies only with its process, and the store with it: nothing to
    # remove. (Its part files have no modification time to age them by, either.)
    remove_incomplete = Storage.remove_incomplete
