"""The remote stores the rows run on, each on its emulator: S3 on moto, Azure Blob on Azurite,
GCS on fake-gcs-server, SFTP on Debian's OpenSSH server, all on 127.0.0.1.

The emulators are started by the same context managers the test suite's session fixtures
use (`serve(workdir)` in tests/backends/<name>.py, which also installs a missing emulator as
the tests do), so the benchmark and the tests cannot drift apart on how a store is run. Each
runs in a process of its own: its CPU is read from /proc and shown as the limit row's server
CPU (here the emulator is the limit), never charged to the service.

A `Store` says, for one running emulator, where uploadsvc writes (a URL and options, as in
`[storage]`) and how the library's own `put_file` reaches the same place, for the limit rows.
Buckets and containers are created here, since the service never creates them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import servers

# tests.backends lives in the checkout, beside this folder.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUCKET = "uploadsvc-bench"

#: The library each store's limit row uses, as a user of that store would.
LIBRARIES = {"s3": "s3fs", "azure": "adlfs", "gcs": "gcsfs", "sftp": "sshfs"}
EMULATORS = {"s3": "moto", "azure": "Azurite", "gcs": "fake-gcs-server", "sftp": "OpenSSH"}
#: How tables and target names call each storage.
TITLES = {"local": "local", "s3": "S3", "azure": "Azure", "gcs": "GCS", "sftp": "SFTP"}
TITLES["nginx"] = "local via nginx"  # proxy.py's rows


@dataclass(frozen=True)
class Store:
    """One running emulator: uploadsvc's view of it and its own library's view of it."""

    kind: str  # "s3", "azure", "gcs", "sftp": the rows' storage name
    root: str  # uploadsvc's URL of the bucket, container or folder, without a trailing /
    options: dict[str, Any]  # uploadsvc's [storage.options]
    protocol: str  # the library's fsspec protocol, for the limit rows
    fs_options: dict[str, Any]  # the library's filesystem arguments
    fs_root: str  # the same bucket, container or folder in the library's terms
    pid: int  # the emulator's process
    makedirs: bool = field(default=False)  # put_file needs the folder made first (SFTP)

    def url(self, prefix: str) -> str:
        return f"{self.root}/{prefix}"

    def target(self, key: str) -> str:
        return f"{self.fs_root}/{key}"

    def cpu_seconds(self) -> float:
        """The emulator's CPU, its ended children's included: sshd serves each connection
        in processes of its own, which end with the connection."""
        return servers.tree_cpu_seconds(self.pid, reaped_children=True)


def running(kind: str, workdir: Path) -> AbstractContextManager[Store]:
    """The emulator of `kind`, with the benchmark's bucket (or folder) in it, until the
    block ends. `workdir` holds its data and log."""
    starters: dict[str, Callable[[Path], AbstractContextManager[Store]]] = {
        "s3": _s3,
        "azure": _azure,
        "gcs": _gcs,
        "sftp": _sftp,
    }
    return starters[kind](workdir)


@contextmanager
def _s3(workdir: Path) -> Iterator[Store]:
    import boto3

    from tests.backends import s3

    with s3.serve(workdir) as moto:
        endpoint = f"http://{moto.address}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        options = {"endpoint_url": endpoint}
        yield Store("s3", f"s3://{BUCKET}", options, "s3", options, BUCKET, moto.pid)


@contextmanager
def _azure(workdir: Path) -> Iterator[Store]:
    from azure.storage.blob import BlobServiceClient

    from tests.backends import azure

    with azure.serve(workdir) as azurite:
        options = {"connection_string": azure.connection_string(azurite.address)}
        with BlobServiceClient.from_connection_string(options["connection_string"]) as client:
            client.create_container(BUCKET)
        yield Store("azure", f"az://{BUCKET}", options, "az", options, BUCKET, azurite.pid)


@contextmanager
def _gcs(workdir: Path) -> Iterator[Store]:
    from tests.backends import gcs

    with gcs.serve(workdir) as fake:
        endpoint = f"http://{fake.address}"
        gcs.create_bucket(endpoint, BUCKET)
        # "anon": no credential search; the service takes gcsfs's options as they are.
        options = {"endpoint_url": endpoint, "token": "anon", "project": "test"}
        yield Store("gcs", f"gs://{BUCKET}", options, "gs", options, BUCKET, fake.pid)


@contextmanager
def _sftp(workdir: Path) -> Iterator[Store]:
    from tests.backends import sftp

    with sftp.serve(workdir) as sshd:
        folder = workdir / "root"  # the server is this machine: its folder is local too
        folder.mkdir()
        options = dict(sshd.options)  # the client key, and known_hosts that trusts sshd's
        # sshfs as its users call it: its own defaults beyond the login (ChaCha20 among
        # them; uploadsvc prefers AES-GCM, see uploadsvc/storage/sftp.py).
        fs_options = {"host": "127.0.0.1", "port": sshd.port, "username": sshd.user, **options}
        yield Store(
            "sftp",
            f"sftp://{sshd.user}@{sshd.address}{folder}",
            options,
            "ssh",
            fs_options,
            str(folder),
            sshd.pid,
            makedirs=True,
        )
