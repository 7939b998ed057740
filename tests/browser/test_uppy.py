"""Another client: Uppy on a page of a second origin uploads through CORS.

The page is served by a plain HTTP server on another port (another origin);
it loads Uppy's shipped bundle (`uppy` from npm, `dist/uppy.min.js`, which
holds `@uppy/core` and `@uppy/xhr-upload`) and uploads to `/upload-blocking/`
with XHRUpload, exactly as the README's "Uppy" example says. The service
allows that origin in `[cors] allow_origins`; the page reads the record from
the answer and sees progress events along the way.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.backends import Backend
from tests.backends.tools import CHECKOUT, free_port, npm_file
from tests.conftest import Live, make_settings
from uploadsvc.config import CorsSettings

README = CHECKOUT / "README.md"
PAYLOAD = "hello from another origin\n" * 20_000  # ~0.5 MB: several progress events


def readme_uppy_options() -> str:
    """The XHRUpload options of the README's Uppy example (a JavaScript object)."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"### Uppy.*?```js\n(.*?)```", text, flags=re.S)
    assert block, "the README has no Uppy example"
    options = re.search(r"uppy\.use\(Uppy\.XHRUpload, (\{.*?\})\)", block.group(1), flags=re.S)
    assert options, block.group(1)
    return options.group(1)


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static server on another port: (its origin, the folder it serves)."""
    folder = tmp_path / "site"
    folder.mkdir()
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_uppy_on_another_origin_uploads_with_progress_through_cors(
    browser: Browser,
    live_factory: Callable[..., Live],
    backend: Backend,
    tmp_path: Path,
    other_origin: tuple[str, Path],
) -> None:
    origin, folder = other_origin
    settings = make_settings(backend, tmp_path, max_upload_bytes=8 << 20)
    settings = settings.model_copy(update={"cors": CorsSettings(allow_origins=[origin])})
    live = live_factory(settings)
    bundle = npm_file(Path("uppy/dist/uppy.min.js"), "uppy@6")
    (folder / "uppy.min.js").write_bytes(bundle.read_bytes())
    options = readme_uppy_options().replace("https://uploads.example.org", live.url)
    (folder / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>Uppy</title>"
        '<script src="uppy.min.js"></script><script src="client.js"></script>'
    )
    (folder / "client.js").write_text(
        "window.progress = [];\n"
        "const uppy = new Uppy.Uppy({ autoProceed: false });\n"
        f"uppy.use(Uppy.XHRUpload, {options});\n"
        "uppy.on('upload-progress', (file, p) => window.progress.push(p.bytesUploaded));\n"
        "uppy.on('upload-success', (file, response) => { window.record = response.body; });\n"
        "uppy.on('upload-error', (file, error) => { window.failure = String(error); });\n"
        "uppy.addFile({ name: 'hello.txt', type: 'text/plain', "
        f"data: new Blob([{PAYLOAD!r}]) }});\n"
        "uppy.upload();\n"
    )
    page = browser.new_page()
    try:
        page.goto(f"{origin}/index.html")
        page.wait_for_function("window.record || window.failure", timeout=30_000)
        failure = page.evaluate("window.failure")
        assert failure is None, failure
        record = page.evaluate("window.record")
        progress = page.evaluate("window.progress")
    finally:
        page.close()
    assert record["status"] == "completed" and record["filename"] == "hello.txt"
    assert record["size"] == len(PAYLOAD)
    assert progress and progress[-1] == len(PAYLOAD), progress
    stored = live.http.get(record["url"])
    assert stored.content == PAYLOAD.encode()
