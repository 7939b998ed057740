"""A folder on the local disk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends import Backend


@dataclass
class LocalBackend(Backend):
    def contents(self) -> list[str]:
        root = Path(self.url.removeprefix("file://"))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def unreachable(self) -> Backend:
        # A folder below a plain file can neither be created nor written.
        root = Path(self.url.removeprefix("file://"))
        blocker = root.parent / "a-file"
        blocker.write_bytes(b"")
        return LocalBackend(self.name, f"file://{blocker}/store")


def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield LocalBackend("local", f"file://{tmp_path / 'store'}")
