"""S3 on moto's server, in a process of its own, reached by s3fs over real HTTP.

moto's in-process mock does not intercept aiobotocore (moto#9784). Its own
process keeps its CPU (~10 s per GiB) and memory (it keeps every object) out
of the process under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.backends import Backend
from tests.backends.tools import Served
from uploadsvc.storage.s3 import PART_SIZE, PARTS_IN_FLIGHT

_MOTO = """
import logging
import sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the test session closes our stdin
server.stop()
"""

#: Storage options that give up on the first failed attempt, for tests of an
#: unreachable endpoint (s3fs and botocore would otherwise retry for seconds).
FAST_FAIL = {"config_kwargs": {"retries": {"max_attempts": 1}}}


@contextmanager
def serve(workdir: Path) -> Iterator[Served]:
    """moto's S3 server on a free 127.0.0.1 port until the block ends; its log in `workdir`.

    Stopped by closing its stdin, so it shuts down its own server thread.
    """
    log = workdir / "moto.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"moto's server did not start: {log.read_text()[-800:]}")
        yield Served(address, proc.pid)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in credentials.items():
        os.environ.setdefault(key, value)
    with serve(tmp_path_factory.mktemp("moto")) as moto:
        yield f"http://{moto.address}"


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    """A plain boto3 client to look inside moto (made once: clients are slow to build)."""
    return boto3.client("s3", endpoint_url=moto_endpoint)


@dataclass
class S3Backend(Backend):
    s3: Any = None
    bucket: str = ""
    prefix: str = "uploads/"
    # The parts in flight, one filling, one being copied into its body.
    writer_memory: int | None = (PARTS_IN_FLIGHT + 2) * PART_SIZE

    def contents(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"].removeprefix(self.prefix) for item in listing.get("Contents", []))

    def pending(self) -> list[str]:
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [f"multipart:{u['Key'].removeprefix(self.prefix)}" for u in uploads]

    def unreachable(self) -> Backend:
        return self.with_options(endpoint_url="http://127.0.0.1:9", **FAST_FAIL)

    def missing_root(self) -> Backend:
        return replace(self, url="s3://no-such-bucket-here/x")

    def via(self, address: str) -> Backend:
        return self.with_options(endpoint_url=f"http://{address}", **FAST_FAIL)


def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    endpoint = request.getfixturevalue("moto_endpoint")
    s3 = request.getfixturevalue("s3_client")
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=bucket)
    yield S3Backend(
        "s3",
        f"s3://{bucket}/uploads",
        {"endpoint_url": endpoint},
        endpoint=endpoint.removeprefix("http://"),
        s3=s3,
        bucket=bucket,
    )
