"""Examples of the API's answers, for the OpenAPI description (and so /docs).

Without them Swagger UI makes its own from the schemas and shows the first
status of the enum, `queued`, in a blocking upload's 201, which only ever
answers with a final record. Each is built from its model, so it cannot lack
a field or hold a wrong type; tests/api/test_openapi.py checks each against
what a real server answers, `null`s included (see `keep_example_nulls`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from ..models import Accepted, Health, Status, UploadPage, UploadRecord

UPLOAD_ID = "019ac0e6d5a03f2b9c4d5e6f7a8b"

RECORD = UploadRecord(
    id=UPLOAD_ID,
    filename="report.pdf",
    size=12345,
    content_type="application/pdf",
    sha256="5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
    status=Status.completed,
    created_at=datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC),
    completed_at=datetime(2026, 11, 25, 10, 0, 1, tzinfo=UTC),
    url=f"/uploads/{UPLOAD_ID}/content",
    results={
        "mimetype": {"detected": "application/pdf", "claimed": "application/pdf", "matches": True}
    },
).public()

ACCEPTED = Accepted(
    id=UPLOAD_ID, status=Status.queued, status_url=f"/uploads/{UPLOAD_ID}"
).model_dump(mode="json")

PAGE = UploadPage(items=[UploadRecord(**RECORD)], next_cursor=UPLOAD_ID).model_dump(mode="json")

HEALTH = Health(status="ok").model_dump(mode="json")


#: Stands for `null` inside examples until the description is generated:
#: FastAPI's last pass encodes it with `exclude_none=True`, which strips `null`
#: values out of examples too (fastapi#5559); `keep_example_nulls` puts them back.
_NULL = "\u0000null"


def json_example(
    status: int, example: Any, description: str | None = None
) -> dict[int | str, dict[str, Any]]:
    """A `responses=` entry giving `status` its JSON example (the schema comes from the route)."""
    entry: dict[str, Any] = {
        "content": {"application/json": {"example": _replace(example, None, _NULL)}}
    }
    if description is not None:
        entry["description"] = description
    return {status: entry}


def keep_example_nulls(app: FastAPI) -> None:
    """Make `app.openapi()` show the examples' `null`s, as the routes answer them."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        spec: dict[str, Any] = _replace(generate(), _NULL, None)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _replace(value: Any, old: object, new: object) -> Any:
    """`value` with every `old` among its dict values and list items made `new`."""
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    return new if value == old else value
