"""Schemathesis against the live OpenAPI schema: no generated request is a 5xx.

The schema is loaded from the running instance's `/openapi.json` (what
clients see, not the app object), and every operation is driven with
schemathesis's strategies, valid and invalid data both, over real HTTP to a
real uvicorn: once with the service open and once with `[auth] tokens` set and
the token sent as a header. The multipart upload routes get bodies generated
from their declared multipart schema.

Hypothesis is used directly (`operation.as_strategy()`) rather than through
the pytest plugin, so one test sees every request it sent and can report how
many there were and which statuses came back. The examples per operation are
bounded so each run stays well under a minute.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import Backend, Live, make_settings
from uploadsvc.config import parse_settings

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

TOKEN = "schemathesis-5c1e9a7b3d2f4e6a"
#: Per operation and generation mode: 9 operations today x 2 modes x this many.
EXAMPLES = 25
#: Operations left out: none today. (`/files/` is reserved for tus and not in the schema.)
SKIP: frozenset[str] = frozenset()


def run_schemathesis(
    live: Live, headers: dict[str, str]
) -> tuple[Counter[int], list[str], list[str]]:
    """Every operation, positive and negative data: (statuses seen, 5xx reproductions,
    operations without negative cases)."""
    # A copy: the loader adds its User-Agent to the dict it is given.
    schema = schemathesis.openapi.from_url(
        f"{live.url}/openapi.json", headers=dict(headers), timeout=10
    )
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    unsatisfiable: list[str] = []
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /upload-blocking/", "POST /upload-nonblocking/", "GET /healthz"} <= labels, labels
    for operation in operations:
        if operation.label in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: schemathesis.Case) -> None:
                response = case.call(
                    base_url=live.url, session=session, headers=headers, timeout=30
                )
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(
                        f"{response.status_code} {case.operation.label}: "
                        f"{response.text[:300]}\n{case.as_curl_command()}"
                    )

            try:
                call()
            except Unsatisfiable:
                # No negative case: the operation takes nothing (healthz, metrics), or
                # only path parameters, whose invalid values schemathesis 4.32 filters
                # out as unsafe in a URL (tests/api/test_hostile.py sends hostile ids).
                assert mode is GenerationMode.NEGATIVE, operation.label
                unsatisfiable.append(operation.label)
    session.close()
    return statuses, server_errors, unsatisfiable


@pytest.mark.parametrize("auth", [False, True], ids=["open", "tokens"])
def test_no_generated_request_is_a_server_error(
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    auth: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = make_settings(backend, tmp_path, max_upload_bytes=1 << 20)
    if auth:
        base = parse_settings(base.model_dump() | {"auth": {"tokens": [TOKEN]}})
    live = live_factory(base)
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    started = time.monotonic()
    statuses, server_errors, no_negative = run_schemathesis(live, headers)
    elapsed = time.monotonic() - started
    sent = sum(statuses.values())
    with capsys.disabled():
        print(
            f"\nschemathesis ({'tokens' if auth else 'open'}): {sent} requests in {elapsed:.1f} s, "
            f"statuses {dict(sorted(statuses.items()))}, 5xx: {len(server_errors)}; "
            f"no negative cases for {sorted(no_negative)}"
        )
    assert sent > 100
    assert server_errors == [], "\n\n".join(server_errors[:5])
    # With the token sent, generated requests get past authentication.
    if auth:
        assert statuses[401] < sent
    assert live.http.get("/healthz").status_code == 200
