"""TOML configuration -> validated `Settings`.

`config.toml` at the repository root is the default; `UPLOADSVC_CONFIG` names
another file that replaces it. Unknown keys and wrong types are rejected, and
every problem is reported as one `ConfigError` line naming the key, because a
user's typo should never look like a crash.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_VAR = "UPLOADSVC_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(Exception):
    """A user's configuration mistake: printed as one line, exit status 1."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Processes `uploadsvc serve` runs (uvicorn workers); they share the storage
    #: as separate instances would.
    workers: int = Field(default=1, ge=1)


class StorageSettings(_Section):
    url: str = "file://./uploads"
    options: dict[str, Any] = Field(default_factory=dict)


class StagingSettings(_Section):
    """Where background uploads become durable before the 202: any storage URL.

    A local folder is the default; a bucket prefix lets any instance finish
    any upload. `path` (a local folder) is the older spelling of a `file://`
    URL and stays accepted; giving both is a mistake.
    """

    url: str = "file://./staging"
    #: fsspec options for `url`; when absent and `url` has the storage URL's
    #: protocol, `[storage.options]` are used (see `Settings.staging_options`).
    options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _path_is_a_file_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "path" in data:
            if "url" in data:
                raise ValueError("give url or path, not both")
            path = data["path"]
            if not isinstance(path, str):
                raise ValueError("path must be a string")
            data = {k: v for k, v in data.items() if k != "path"} | {"url": f"file://{path}"}
        return data


class JobsSettings(_Section):
    """How background steps are retried and owned (see `jobs.py`)."""

    attempts: int = Field(default=5, ge=1)
    backoff_seconds: float = Field(default=1.0, ge=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    grace_seconds: float = Field(default=3600.0, gt=0)


class QueueSettings(_Section):
    """Empty: jobs run inside the service; `redis://...`: on Redis, run by `uploadsvc worker`."""

    url: str = ""


class LimitsSettings(_Section):
    max_upload_bytes: int = Field(default=1 << 30, ge=1)
    #: Uploads being received at once; beyond it 503 `busy` (0: no limit).
    max_concurrent_uploads: int = Field(default=0, ge=0)
    #: A body (or a request's headers) that sends nothing for this long is dropped: 408.
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    #: Local storage or staging with less free space than this: new uploads get 507.
    min_free_bytes: int = Field(default=0, ge=0)


class MetricsSettings(_Section):
    enabled: bool = True
    #: Served without a token even when [auth] tokens are set.
    public: bool = False


class ProcessingSettings(_Section):
    pipeline: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(default=300.0, gt=0)


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    staging: StagingSettings = Field(default_factory=StagingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def staging_options(self) -> dict[str, Any]:
        """`[staging.options]`, or `[storage.options]` when staging is on the same protocol."""
        if self.staging.options is not None:
            return self.staging.options
        if protocol_of(self.staging.url) == protocol_of(self.storage.url):
            return self.storage.options
        return {}


def protocol_of(url: str) -> str:
    """`s3` for `s3://bucket/x`; a URL without a protocol is a local path."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def config_path() -> Path | None:
    """The file to read: `UPLOADSVC_CONFIG` if set, else the checkout's `config.toml`.

    None when installed from a wheel without either: the built-in defaults,
    which equal the shipped `config.toml`, apply.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate a TOML file; raise `ConfigError` with one clear line."""
    path = path or config_path()
    if path is None:
        return Settings()
    try:
        with path.open("rb") as f:  # tomllib wants bytes
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_settings(data, source=str(path))


def parse_settings(data: dict[str, Any], source: str = "<config>") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{source}: {key}: {problem}") from None
