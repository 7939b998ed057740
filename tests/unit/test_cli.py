"""The commands a user runs: a bad configuration is one line on stderr and exit status 1.

Run as real subprocesses, since what is protected is what a terminal shows
(no traceback) and the process's exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TIMEOUT = 60


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "UPLOADSVC_CONFIG"}
    environ.update(
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def serve(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run(["-m", "uploadsvc", "serve", "--config", str(config)], config.parent, **env)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed start-up (asserting there is exactly one)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("uploadsvc: ")
    return lines[0]


def test_unknown_key_is_one_line_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[limits]\nmax_upload_byte = 5\n")
    line = one_line_error(serve(config))
    assert "limits.max_upload_byte" in line
    assert "unknown key" in line


def test_wrong_type_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[server]\nport = "80"\n')
    assert "server.port" in one_line_error(serve(config))


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server\n")
    assert "invalid TOML" in one_line_error(serve(config))


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run(["-m", "uploadsvc", "serve", "--config", "nope.toml"], tmp_path)
    assert "nope.toml" in one_line_error(result)


def test_unreachable_s3_endpoint_is_one_line_naming_the_storage(tmp_path: Path) -> None:
    """Nothing listens on port 9: start-up must stop, not serve a broken app."""
    config = write_config(
        tmp_path,
        """
        [storage]
        url = "s3://no-such-bucket-xyz/p"
        [storage.options]
        endpoint_url = "http://127.0.0.1:9"
        """,
    )
    # One botocore attempt instead of the default retries: same outcome, seconds sooner.
    line = one_line_error(serve(config, AWS_MAX_ATTEMPTS="1"))
    assert "no-such-bucket-xyz" in line or "127.0.0.1:9" in line


def test_unknown_plugin_is_one_line_naming_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        [storage]
        url = "memory://cli-test"
        [processing]
        pipeline = ["no_such_plugin_xyz"]
        """,
    )
    assert "no_such_plugin_xyz" in one_line_error(serve(config))


def test_uvicorn_with_a_bad_config_is_one_line(tmp_path: Path) -> None:
    """`uvicorn uploadsvc.app:app` reads UPLOADSVC_CONFIG and fails like the CLI."""
    config = write_config(tmp_path, "[limits]\nmax_upload_byte = 5\n")
    result = run(
        ["-m", "uvicorn", "uploadsvc.app:app", "--port", "0"],
        tmp_path,
        UPLOADSVC_CONFIG=str(config),
    )
    assert "limits.max_upload_byte" in one_line_error(result)


def test_storage_folder_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(tmp_path / "unmounted" / "disk")
    config = write_config(tmp_path, '[storage]\nurl = "file://./data/uploads"\n')
    assert "data/uploads" in one_line_error(serve(config))


def test_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "brokenplugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[uploadsvc.plugins]\nthumbs = brokenplugin:create\n")
    (site / "brokenplugin.py").write_text("import no_such_module_xyz  # a missing dependency\n")
    config = write_config(
        tmp_path, '[storage]\nurl = "memory://cli-test"\n[processing]\npipeline = ["thumbs"]\n'
    )
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    assert "thumbs" in one_line_error(serve(config, PYTHONPATH=pythonpath))


def test_malformed_bucket_name_is_one_line(tmp_path: Path) -> None:
    """botocore's own message spans two lines; the user still gets one."""
    config = write_config(
        tmp_path,
        """
        [storage]
        url = "s3://bad!bucket/p"
        [storage.options]
        endpoint_url = "http://127.0.0.1:9"
        """,
    )
    line = one_line_error(serve(config, AWS_MAX_ATTEMPTS="1"))
    assert "bad!bucket" in line
