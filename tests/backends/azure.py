"""Azure Blob Storage on Azurite, in a process of its own, reached by the SDK over real HTTP.

Azurite (npm `azurite`, installed into `.cache/npm` when missing) runs once
per session; each test gets a fresh container, removed afterwards so the
session's disk use stays flat. The account is Azurite's published
development account, whose key is public.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from tests.backends import Backend, tools
from uploadsvc.storage.azure import BLOCK_BYTES, BLOCKS_IN_FLIGHT

AZURITE = "azurite@3.37.0"
ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development key (published in its documentation).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

#: Storage options that give up on the first failed attempt, for tests of an
#: unreachable endpoint (the SDK's default retries wait about a minute).
FAST_FAIL = {"retry_total": 0}


def connection_string(address: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{address}/{ACCOUNT};"
    )


@contextmanager
def serve(workdir: Path) -> Iterator[tools.Served]:
    """Azurite's blob service on a free 127.0.0.1 port until the block ends; its
    data and log in `workdir`."""
    program = tools.npm_program("azurite-blob", AZURITE)
    port = tools.free_port()
    args = [
        program,
        *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
        *("--location", str(workdir / "data")),
        "--skipApiVersionCheck",  # the current SDK's API version is newer than Azurite's
        "--disableTelemetry",  # otherwise Azurite tries to reach the internet
        "--silent",
    ]
    with tools.running(args, port, log=workdir / "azurite.log") as proc:
        yield tools.Served(f"127.0.0.1:{port}", proc.pid)


@pytest.fixture(scope="session")
def azurite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ "127.0.0.1:PORT" of a running Azurite blob service."""
    with serve(tmp_path_factory.mktemp("azurite")) as azurite:
        yield azurite.address


@pytest.fixture(scope="session")
def azure_service(azurite_endpoint: str) -> Iterator[BlobServiceClient]:
    """A plain sync client to look inside Azurite (the tests' own thread, never a server loop)."""
    with BlobServiceClient.from_connection_string(connection_string(azurite_endpoint)) as client:
        yield client


@dataclass
class AzureBackend(Backend):
    container: ContainerClient | None = None
    prefix: str = "uploads/"
    # The blocks in flight, one filling, one being copied into its body.
    writer_memory: int | None = (BLOCKS_IN_FLIGHT + 2) * BLOCK_BYTES

    def _container(self) -> ContainerClient:
        assert self.container is not None
        return self.container

    def contents(self) -> list[str]:
        return sorted(
            name.removeprefix(self.prefix) for name in self._container().list_blob_names()
        )

    def pending(self) -> list[str]:
        """Blob names holding uncommitted blocks: never listed, but kept (and billed)."""
        container = self._container()
        found = []
        for blob in container.list_blobs(include=["uncommittedblobs"]):
            _, uncommitted = container.get_blob_client(blob.name).get_block_list("uncommitted")
            if uncommitted:
                found.append(f"blocks:{blob.name.removeprefix(self.prefix)}")
        return sorted(found)

    def _reached_at(self, address: str, **options: Any) -> Backend:
        return self.with_options(connection_string=connection_string(address), **options)

    def unreachable(self) -> Backend:
        return self._reached_at("127.0.0.1:9", **FAST_FAIL)

    def missing_root(self) -> Backend:
        return replace(self, url=f"az://no-such-{uuid.uuid4().hex[:12]}/uploads")

    def via(self, address: str) -> Backend:
        return self._reached_at(address, **FAST_FAIL)


def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    endpoint: str = request.getfixturevalue("azurite_endpoint")
    service: BlobServiceClient = request.getfixturevalue("azure_service")
    name = f"test-{uuid.uuid4().hex[:20]}"
    container = service.create_container(name)
    yield AzureBackend(
        "azure",
        f"az://{name}/uploads",
        {"connection_string": connection_string(endpoint)},
        endpoint=endpoint,
        container=container,
    )
    container.delete_container()
