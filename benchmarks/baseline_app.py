"""The peer the service is compared with: what a FastAPI user writes from the tutorials.

An `async def` route taking `file: UploadFile` and `shutil.copyfileobj` into a folder. Starlette
first spools the whole body to a temporary file while parsing the form, then the copy writes
every byte a second time, on the event loop. Nothing here is tuned on purpose: the benchmark
asks how much better the service does than this obvious code, so this must stay obvious.

Run it like the service: `python -m uvicorn baseline_app:app --app-dir benchmarks`, one worker.
`BASELINE_UPLOAD_DIR` names the folder the files go to.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, UploadFile

UPLOAD_DIR = Path(os.environ.get("BASELINE_UPLOAD_DIR", "baseline-uploads"))
UPLOAD_DIR.mkdir(parents=True, exist_ok=True)

app = FastAPI()


@app.post("/upload-blocking/", status_code=201)
async def upload_blocking(file: UploadFile) -> dict[str, object]:
    name = Path(file.filename or "upload").name
    dest = UPLOAD_DIR / f"{uuid.uuid4().hex}-{name}"
    with open(dest, "wb") as out:
        shutil.copyfileobj(file.file, out)
    return {"filename": name, "size": dest.stat().st_size}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
