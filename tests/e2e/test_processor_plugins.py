"""Processors are plugins chosen in `config.toml`: the README's example plugin,
built and installed with pip, runs from config alone; switching only the config
moves the same upload flow to another backend and another pipeline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import wait_until
from tests.backends import Backend
from tests.backends.s3 import S3Backend
from tests.e2e.conftest import Instance, plugin_env
from uploadsvc.resources import PLUGINS_DIR

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the README's "Writing a plugin" part."""
    text = README.read_text(encoding="utf-8")
    part = text.split("### Writing a plugin", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", part, flags=re.S)


@pytest.fixture(scope="module")
def readme_plugin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's plugin, packaged as the README says and installed by pip into a
    folder of its own; returns that folder and the README's config for it."""
    blocks = _readme_blocks()
    module = next(code for lang, code in blocks if lang == "python")
    pyproject, config = [code for lang, code in blocks if lang == "toml"]
    source = tmp_path_factory.mktemp("linecount")
    (source / "uploadsvc_linecount.py").write_text(module)
    (source / "pyproject.toml").write_text(pyproject)
    target = source / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), str(source)], check=True, timeout=120)
    return target, config


def _serve(tmp_path: Path, name: str, storage: str, site: Path, extra: str) -> Instance:
    config = tmp_path / f"{name}.toml"
    config.write_text(f"{storage}\n[staging]\nurl = 'file://{tmp_path / name}-staging'\n{extra}")
    instance = Instance(config, plugin_env(site), tmp_path / f"{name}.log")
    instance.wait_healthy()
    return instance


def _flow(instance: Instance, name: str, data: bytes) -> tuple[httpx.Response, dict[str, Any]]:
    """One blocking and one background upload of `data`; the blocking answer and the
    background upload's final record."""
    files = {"file": (name, data, "text/plain")}
    blocking = httpx.post(f"{instance.url}/upload-blocking/", files=files, timeout=30)
    accepted = httpx.post(f"{instance.url}/upload-nonblocking/", files=files, timeout=30)
    assert accepted.status_code == 202, accepted.text
    record: dict[str, Any] = {}

    def final() -> bool:
        record.update(httpx.get(f"{instance.url}{accepted.json()['status_url']}").json())
        return record["status"] in ("completed", "failed")

    wait_until(final, timeout=30)
    return blocking, record


def test_the_readme_plugin_runs_from_config_alone(
    readme_plugin: tuple[Path, str], tmp_path: Path, instances: list[Instance]
) -> None:
    site, config = readme_plugin
    storage = f"[storage]\nurl = 'file://{tmp_path / 'uploads'}'"
    instance = _serve(tmp_path, "readme", storage, site, config)
    instances.append(instance)

    blocking, background = _flow(instance, "poem.txt", b"one\ntwo\nthree\n")
    assert blocking.status_code == 201, blocking.text
    assert blocking.json()["results"] == {"linecount": {"lines": 3}}
    assert (
        background["status"] == "completed" and background["results"] == blocking.json()["results"]
    )

    max_lines = int(re.search(r"max_lines = (\d+)", config).group(1))  # type: ignore[union-attr]
    refused, background = _flow(instance, "long.txt", b"\n" * (max_lines + 1))
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "rejected"
    assert (
        refused.json()["detail"]
        == f"rejected by linecount: {max_lines + 1} lines, more than {max_lines}"
    )
    assert background["status"] == "failed" and background["rejected"] is True
    for upload_id in (refused.json()["id"], background["id"]):
        assert not (tmp_path / "uploads" / upload_id).exists()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_switching_only_the_config_moves_the_flow_to_s3_and_another_pipeline(
    backend: Backend,
    readme_plugin: tuple[Path, str],
    tmp_path: Path,
    instances: list[Instance],
) -> None:
    assert isinstance(backend, S3Backend)
    assert (PLUGINS_DIR / "mimetype.py").is_file()
    site, _ = readme_plugin
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)
    local = _serve(
        tmp_path,
        "local",
        f"[storage]\nurl = 'file://{tmp_path / 'uploads'}'",
        site,
        "[processing]\npipeline = ['linecount']\n",
    )
    instances.append(local)
    options = "".join(f"{k} = {v!r}\n" for k, v in backend.options.items() if isinstance(v, str))
    s3 = _serve(
        tmp_path,
        "s3",
        f"[storage]\nurl = '{backend.url}'\n[storage.options]\n{options}",
        site,
        "[processing]\npipeline = ['mimetype']\n",
    )
    instances.append(s3)

    on_local, local_background = _flow(local, "picture.txt", png)
    on_s3, s3_background = _flow(s3, "picture.txt", png)
    assert on_local.json()["results"] == {"linecount": {"lines": png.count(b"\n")}}
    assert on_s3.json()["results"]["mimetype"]["detected"] == "image/png"
    assert s3_background["results"] == on_s3.json()["results"]
    assert local_background["results"] == on_local.json()["results"]
    stored = sorted(backend.contents())
    assert on_s3.json()["id"] in stored and s3_background["id"] in stored
    assert (tmp_path / "uploads" / on_local.json()["id"]).is_file()
