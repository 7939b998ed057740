"""fsspec's in-process `memory://` store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from tests.backends import Backend


@dataclass
class MemoryBackend(Backend):
    writer_memory: int | None = None

    def contents(self) -> list[str]:
        root = "/" + self.url.removeprefix("memory://").strip("/") + "/"
        return sorted(k[len(root) :] for k in MemoryFileSystem.store if k.startswith(root))


def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    root = f"test-{uuid.uuid4().hex}"
    yield MemoryBackend("memory", f"memory://{root}")
    for key in [k for k in MemoryFileSystem.store if k.startswith(f"/{root}/")]:
        del MemoryFileSystem.store[key]
