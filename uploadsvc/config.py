"""TOML configuration and `UPLOADSVC_*` environment variables -> validated `Settings`.

`config.toml` at the repository root is the default; `UPLOADSVC_CONFIG` names
another file that replaces it. Unknown keys and wrong types are rejected, and
every problem is reported as one `ConfigError` line naming the key, because a
user's typo should never look like a crash.

On top of the file, every key can be set from the environment, the way
container platforms configure a service (pydantic-settings reads them; see
`_Environment` for what it leaves to us): `UPLOADSVC_STORAGE__URL` is
`[storage] url`, and `UPLOADSVC_<KEY>_FILE=/path` reads the value from a file
(Docker and Kubernetes secrets).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

ENV_VAR = "UPLOADSVC_CONFIG"
#: `UPLOADSVC_STORAGE__OPTIONS__ENDPOINT_URL` is `[storage.options] endpoint_url`.
ENV_PREFIX = "UPLOADSVC_"
ENV_DELIMITER = "__"
#: `UPLOADSVC_<KEY>_FILE=/path`: the value of `UPLOADSVC_<KEY>` is in that file.
FILE_SUFFIX = "_FILE"
#: A secret is a line or a key, not a disk image: a file larger than this is refused.
MAX_FILE_BYTES = 1 << 20
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(Exception):
    """A user's configuration mistake: printed as one line, exit status 1."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServerSettings(_Section):
    """Where `uploadsvc serve` listens, and how it sits behind a reverse proxy.

    `root_path` is the path prefix the proxy serves the app under
    ("/uploads-service"): every URL the service emits carries it. A proxy's
    `X-Forwarded-For` and `X-Forwarded-Proto` are believed only from the
    addresses in `forwarded_allow_ips` (IPs, networks, or "*"); the default,
    loopback, is uvicorn's own default, so a local nginx works out of the box
    while no remote client can claim another address. `[]` trusts no one.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Processes `uploadsvc serve` runs (uvicorn workers); they share the storage
    #: as separate instances would.
    workers: int = Field(default=1, ge=1)
    root_path: str = ""
    forwarded_allow_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    @field_validator("root_path")
    @classmethod
    def _a_path_prefix(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ValueError('must be empty or start with "/" and not end with "/"')
        # uvicorn prepends it to every request's raw path as ASCII bytes.
        if not (value.isascii() and value.isprintable()) or any(c in value for c in "?#%\\ "):
            raise ValueError("must be a plain ASCII path (no ?, #, %, backslash or spaces)")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item)  # strict, as uvicorn reads it
            except ValueError:
                raise ValueError(f'{item!r} is not an IP address, a network or "*"') from None
        return value


class StorageSettings(_Section):
    url: str = "file://./uploads"
    options: dict[str, Any] = Field(default_factory=dict)
    #: The longest any one call to the storage or staging may take (a block
    #: written, a commit, a record read) before it counts as unavailable.
    timeout_seconds: float = Field(default=30.0, gt=0)


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


#: What a token may do (see web/access.py for which route needs which).
Scope = Literal["upload", "read", "delete"]
ALL_SCOPES: tuple[Scope, ...] = ("upload", "read", "delete")


class TokenEntry(_Section):
    """A token limited to `scopes`: given plainly (`token`) or by its sha256 (`sha256`)."""

    # Kept out of repr: settings may be printed, a token never.
    token: str | None = Field(default=None, pattern=r"^\S+$", repr=False)
    sha256: str | None = Field(default=None, pattern="^[0-9a-fA-F]{64}$")
    scopes: list[Scope] = Field(default_factory=lambda: list(ALL_SCOPES))

    @model_validator(mode="after")
    def _one_of_token_or_sha256(self) -> TokenEntry:
        if (self.token is None) == (self.sha256 is None):
            raise ValueError("give token or sha256, not both or neither")
        return self


class AuthSettings(_Section):
    """Empty `tokens` and no `tokens_file`: open. Else a bearer token on every route but /healthz.

    `tokens_file` names a file of sha256 hashes, one `<hex> [scope ...]` a line, so
    that no token needs to sit in this file (see auth.py).
    """

    tokens: list[TokenEntry] = Field(default_factory=list)
    tokens_file: str = ""

    @field_validator("tokens", mode="before")
    @classmethod
    def _plain_token_has_every_scope(cls, tokens: Any) -> Any:
        # `tokens = ["..."]`, the contract's shape, is a list of tables with every scope.
        if isinstance(tokens, list):
            return [{"token": t} if isinstance(t, str) else t for t in tokens]
        return tokens


class CorsSettings(_Section):
    """Browser origins (`https://app.example.org`, or `*`) allowed to call the API."""

    allow_origins: list[str] = Field(default_factory=list)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return origins


class ProcessingSettings(_Section):
    pipeline: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(default=300.0, gt=0)


class LoggingSettings(_Section):
    """One line per event on stderr: `text` for people, `json` for collectors (see `logs.py`)."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """Every key, validated. `Settings(...)` is exactly what it is given (tests,
    `create_app`); `load_settings` adds the file and the environment."""

    # Case-sensitive like the TOML file it validates; `_Environment` reads names in any case.
    model_config = SettingsConfigDict(extra="forbid", strict=True, frozen=True, case_sensitive=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    staging: StagingSettings = Field(default_factory=StagingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    def staging_options(self) -> dict[str, Any]:
        """`[staging.options]`, or `[storage.options]` when staging is on the same protocol."""
        if self.staging.options is not None:
            return self.staging.options
        if protocol_of(self.staging.url) == protocol_of(self.storage.url):
            return self.storage.options
        return {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Given values only: a developer's UPLOADSVC_* variables must not leak into
        # the settings a test builds. `load_settings` names its sources itself.
        return (init_settings,)


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
    """The TOML file under the `UPLOADSVC_*` environment, validated; `ConfigError`
    with one clear line naming the key and where it came from (file or variable)."""
    path = path or config_path()
    environment = _Environment(os.environ)
    sources: tuple[PydanticBaseSettingsSource, ...] = (environment,)
    if path is not None:
        sources += (_TomlFile(path),)
    try:
        # Earlier sources win; tables (`[storage.options]`) merge key by key. (mypy sees
        # the fields' __init__ that pydantic declares, not BaseSettings' own arguments.)
        return Settings(_build_sources=(sources, {}))  # type: ignore[call-arg]
    except ValidationError as e:
        loc, key, problem = _first_problem(e)
        variable = environment.variable_for(loc)
        where = f"environment variable {variable}" if variable else str(path or "environment")
        raise ConfigError(f"{where}: {key}: {problem}") from None
    except SettingsError as e:  # what the checks in `_Environment` did not foresee
        raise ConfigError(f"environment: {e}") from None


def parse_settings(data: dict[str, Any], source: str = "<config>") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        _, key, problem = _first_problem(e)
        raise ConfigError(f"{source}: {key}: {problem}") from None


def environment_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The `UPLOADSVC_*` variables that set keys (`load_settings` refuses any other)."""
    environ = os.environ if environ is None else environ
    return sorted(
        name for name in environ if name.upper().startswith(ENV_PREFIX) and name != ENV_VAR
    )


def _first_problem(e: ValidationError) -> tuple[tuple[str, ...], str, str]:
    first: ErrorDetails = e.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return loc, ".".join(loc), problem


class _TomlFile(TomlConfigSettingsSource):
    """The TOML file, read by pydantic-settings, except that a file it cannot read
    or parse is a mistake named in one line (pydantic-settings skips a missing one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise self._unreadable(e) from None
        super().__init__(Settings, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except OSError as e:
            raise self._unreadable(e) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{self.path}: invalid TOML: {e}") from None

    def _unreadable(self, e: OSError) -> ConfigError:
        return ConfigError(f"{self.path}: cannot read configuration: {e.strerror or e}")


class _Environment(EnvSettingsSource):
    """`UPLOADSVC_*` variables as pydantic-settings reads them: the prefix, `__`
    between levels, names in any case, JSON for lists and tables (also inside
    free-form tables such as `[plugins.<name>]`), a single value inside a
    free-form table as a string.

    What it leaves to us:
    - `UPLOADSVC_<KEY>_FILE=/path` reads the value of `UPLOADSVC_<KEY>` from the
      file (one trailing newline dropped), for any key, `[plugins.*]` included;
      both set is a mistake, since one of them would be ignored;
    - a variable that names no key is refused, as an unknown key in the file
      is: pydantic-settings ignores unknown variables, so a typo
      (`UPLOADSVC_STORAGE_URL`) would silently leave the file's value in force.
      Unknown keys below a section (`UPLOADSVC_STORAGE__URLL`) reach validation
      and are refused there, like the file's;
    - which variable set which key, so a message names the variable;
    - a variable for a key inside a table given as JSON merges into it,
      whatever the order of the environment (pydantic-settings lets the last
      one win), and a value that must be JSON and is not names its variable.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(
            Settings,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_DELIMITER,
        )
        #: key path (lower case) -> the variable that set it, as the user spelled it
        self.origins: dict[tuple[str, ...], str] = {}
        self.env_vars = self._read(environ)

    def variable_for(self, loc: tuple[str, ...]) -> str | None:
        """The variable that set the value at `loc`, or a value inside it."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.origins:
                return self.origins[loc[:n]]
        return next((v for path, v in self.origins.items() if path[: len(loc)] == loc), None)

    def _read(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Ours (lower-cased, as pydantic-settings matches them), `_FILE`s read."""
        prefix, suffix = ENV_PREFIX.lower(), FILE_SUFFIX.lower()
        spelled: dict[str, str] = {}
        for name in environ:
            lower = name.lower()
            if lower.startswith(prefix) and name != ENV_VAR:
                if lower in spelled:  # names differing in case only: which one wins?
                    raise ConfigError(
                        f"environment variables {spelled[lower]} and {name}: give one of them"
                    )
                spelled[lower] = name
        values: dict[str, str] = {}
        for lower, name in spelled.items():
            if lower.endswith(suffix):
                lower = lower.removesuffix(suffix)
                if lower in spelled:
                    raise ConfigError(
                        f"environment variables {spelled[lower]} and {name}: give one of them"
                    )
                values[lower] = _read_secret(name, environ[name])
            else:
                values[lower] = environ[name]
            path = tuple(lower.removeprefix(prefix).split(ENV_DELIMITER))
            self._check_names_a_key(name, path)
            self.origins[path] = name
        return values

    def _check_names_a_key(self, name: str, path: tuple[str, ...]) -> None:
        if "" in path:
            raise ConfigError(f"environment variable {name}: an empty key between {ENV_DELIMITER}")
        if path[0] not in Settings.model_fields:
            meant = [f for f in Settings.model_fields if path[0].startswith(f"{f}_")]
            hint = (
                f"did you mean {ENV_PREFIX}{meant[0].upper()}{ENV_DELIMITER}"
                f"{path[0].removeprefix(meant[0] + '_').upper()}?"
                if meant
                else f"sections: {', '.join(Settings.model_fields)}; {ENV_VAR} names the file"
            )
            raise ConfigError(f"environment variable {name}: {path[0]}: unknown key ({hint})")

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError:  # a whole section as JSON (UPLOADSVC_STORAGE='{...}') that is not
            variable = self.origins.get((field_name,), f"{ENV_PREFIX}{field_name.upper()}")
            raise ConfigError(self._not_json(variable, field_name)) from None

    def explode_env_vars(
        self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]
    ) -> dict[str, Any]:
        exploded: dict[str, Any] = {}
        # One at a time, the shallower first: see the class docstring.
        for lower in sorted(env_vars, key=lambda n: n.count(ENV_DELIMITER)):
            try:
                one = super().explode_env_vars(field_name, field, {lower: env_vars[lower]})
            except ValueError:
                path = tuple(lower.removeprefix(ENV_PREFIX.lower()).split(ENV_DELIMITER))
                raise ConfigError(self._not_json(self.origins[path], ".".join(path))) from None
            exploded = _merged(exploded, one)
        return exploded

    @staticmethod
    def _not_json(variable: str, key: str) -> str:
        return (
            f"environment variable {variable}: {key}: not valid JSON "
            """(lists and tables are written as JSON: '["a", "b"]', '{"key": "value"}')"""
        )


def _read_secret(variable: str, path: str) -> str:
    """The content of a `_FILE` variable's file, without its trailing newline."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(
            f"environment variable {variable}: cannot read {path}: {e.strerror or e}"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"environment variable {variable}: {path} is larger than 1 MiB")
    try:
        return data.decode().removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ConfigError(f"environment variable {variable}: {path} is not UTF-8 text") from None


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` over it, tables merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged
