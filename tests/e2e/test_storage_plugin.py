"""A third party's storage backend, installed as a package and chosen in config alone.

The package (tests/e2e/conftest.py) is built and installed as a user would
(pip, entry point group `uploadsvc.storage`), outside the checkout; the
service is started by its command with a config naming the plugin's
protocol, and an upload lands in the plugin's store. A second protocol of the
same package declares fewer abilities than the service needs, and start-up
refuses it in one line.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from tests.backends.tools import free_port
from tests.e2e.conftest import Instance, plugin_env


def _config(tmp_path: Path, url: str, port: int) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [server]
            port = {port}
            [storage]
            url = "{url}"
            [staging]
            path = "{tmp_path / "staging"}"
            """
        )
    )
    return path


def test_a_plugin_backend_serves_uploads_from_config_alone(
    plugin_site: Path, tmp_path: Path, instances: list[Instance]
) -> None:
    store = tmp_path / "tiny-store"
    config = _config(tmp_path, f"tiny://{store}", free_port())
    service = Instance(config, plugin_env(plugin_site), tmp_path / "service.log")
    instances.append(service)
    service.wait_healthy()
    data = os.urandom(100_000)
    record = httpx.post(f"{service.url}/upload-blocking/", files={"file": ("t.bin", data)}).json()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (store / record["id"]).read_bytes() == data
    assert (store / f"{record['id']}.json").is_file()


def test_a_plugin_backend_lacking_abilities_is_refused_in_one_line(
    plugin_site: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, f"weak://{tmp_path / 'weak'}", free_port())
    result = subprocess.run(
        [sys.executable, "-m", "uploadsvc", "serve", "--config", str(config)],
        env=plugin_env(plugin_site),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("uploadsvc: storage.url: weak://")
    assert "conditional create" in line and "conditional replace" in line
    assert not (tmp_path / "weak").exists()
