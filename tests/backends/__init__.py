"""Test backends: each module starts its store once per session and makes a
fresh, empty root for each test.

A module offers `make(request, tmp_path) -> Iterator[Backend]` (a generator
that cleans up after the test) and whatever session fixtures it needs; the
root `conftest.py` lists the modules in `BACKENDS` and registers them as
pytest plugins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any

from uploadsvc.storage import Storage, open_storage


@dataclass
class Backend(ABC):
    """One storage backend for one test, and ways to look inside it.

    Subclasses implement `contents` (and `pending` when the store keeps
    uncommitted writes outside its listings), and may offer a broken twin.
    """

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def storage(self) -> Storage:
        return open_storage(self.url, self.options)

    @abstractmethod
    def contents(self) -> list[str]:
        """Every object or file under the backend's root, whatever its name, sorted,
        relative to the root (part files and temporary names included)."""

    def pending(self) -> list[str]:
        """Uncommitted writes the store keeps outside its listings (multipart uploads,
        uncommitted blocks), as `kind:key`."""
        return []

    def leftovers(self) -> list[str]:
        return self.contents() + self.pending()

    def unreachable(self) -> Backend | None:
        """The same root through an endpoint that refuses connections; None if it cannot be."""
        return None

    def missing_root(self) -> Backend | None:
        """A root whose bucket or container does not exist; None where there is none."""
        return None

    def via(self, address: str) -> Backend | None:
        """The same root reached through `address` ("127.0.0.1:PORT", a fault proxy in
        front of `endpoint`); None for stores that are not on the network."""
        return None

    #: "127.0.0.1:PORT" of the store's server, for backends on the network.
    endpoint: str | None = None

    #: The most an object writer may hold in memory (buffers of parts or blocks
    #: in flight); None for a store that keeps whole files in memory by design.
    writer_memory: int | None = 0

    def with_options(self, **options: Any) -> Backend:
        return replace(self, options={**self.options, **options})
