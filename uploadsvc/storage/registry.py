"""Which backend serves a storage URL: a small registry by protocol, as fsspec's.

Built-in backends are named by dotted path and imported only when their
protocol is configured, so a missing optional package (adlfs for `az://`)
costs nothing until it is asked for, and then stops start-up with one line
naming what to install. Third parties add protocols through the
`uploadsvc.storage` entry point group: the entry point's name is the
protocol, its object a `Storage` subclass. Built-in protocols cannot be
replaced by an installed package (a silent swap of the S3 backend would be
a surprise no one asked for).

`open_storage` then refuses a backend that does not declare every ability
the configuration needs: the service never runs on promises a store cannot
keep.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import fsspec

from ..config import ConfigError, protocol_of
from .interface import REQUIRED_ABILITIES, Ability, Storage

ENTRY_POINT_GROUP = "uploadsvc.storage"


@dataclass(frozen=True)
class _Builtin:
    target: str  # "module:Class", relative to this package
    package: str | None = None  # what `pip install` needs, when not a core dependency
    extra: str | None = None  # the uploadsvc extra that brings it


_BUILTIN: dict[str, _Builtin] = {
    "file": _Builtin("local:LocalStorage"),
    "local": _Builtin("local:LocalStorage"),
    "memory": _Builtin("memory:MemoryStorage"),
    "s3": _Builtin("s3:S3Storage"),
    "s3a": _Builtin("s3:S3Storage"),
    "az": _Builtin("azure:AzureStorage", "adlfs", "azure"),
    "abfs": _Builtin("azure:AzureStorage", "adlfs", "azure"),
    "abfss": _Builtin("azure:AzureStorage", "adlfs", "azure"),
    "gs": _Builtin("gcs:GCSStorage", "gcsfs", "gcs"),
    "gcs": _Builtin("gcs:GCSStorage", "gcsfs", "gcs"),
    "sftp": _Builtin("sftp:SFTPStorage", "sshfs", "sftp"),
    "ssh": _Builtin("sftp:SFTPStorage", "sshfs", "sftp"),
}


def backend_class(url: str) -> type[Storage]:
    """The `Storage` class for `url`'s protocol; `ConfigError` naming what is wrong."""
    protocol = protocol_of(url)
    builtin = _BUILTIN.get(protocol)
    if builtin is not None:
        return _import_builtin(url, builtin)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == protocol:
            return _checked(url, ep.load(), f"entry point {ep.value!r}")
    if protocol in fsspec.available_protocols():
        raise ConfigError(
            f"storage.url: {url}: fsspec knows {protocol}://, but no uploadsvc backend does: "
            f"an fsspec filesystem alone cannot promise {_named(REQUIRED_ABILITIES)}; "
            f"use one of {_listed()} or install a plugin for the {ENTRY_POINT_GROUP!r} "
            "entry point group"
        )
    raise ConfigError(f"storage.url: {url}: unknown protocol {protocol!r}; use one of {_listed()}")


def open_storage(
    url: str,
    options: dict[str, Any] | None = None,
    required: frozenset[Ability] = REQUIRED_ABILITIES,
) -> Storage:
    """The backend for `url`, if it declares every ability in `required`.

    Builds clients only; nothing contacts the store (see `Storage.check`).
    """
    cls = backend_class(url)
    missing = required - cls.abilities
    if missing:
        raise ConfigError(
            f"storage.url: {url}: the {cls.__name__} backend cannot keep {_named(missing)}"
        )
    return cls.from_url(url, dict(options or {}))


def _import_builtin(url: str, builtin: _Builtin) -> type[Storage]:
    module_name, _, name = builtin.target.partition(":")
    try:
        if builtin.package is not None:
            # First, and by name: fsspec would only say so later, in its own words.
            importlib.import_module(builtin.package)
        module = importlib.import_module(f"{__package__}.{module_name}")
    except ImportError as e:
        if builtin.package is None:
            raise
        raise ConfigError(
            f"storage.url: {url} needs the package {builtin.package!r} ({e.name} is missing): "
            f"pip install 'uploadsvc[{builtin.extra}]'"
        ) from None
    return _checked(url, getattr(module, name), builtin.target)


def _checked(url: str, found: object, where: str) -> type[Storage]:
    if not (isinstance(found, type) and issubclass(found, Storage)):
        raise ConfigError(f"storage.url: {url}: {where} is not a uploadsvc Storage class")
    return found


def _named(abilities: Iterable[Ability]) -> str:
    return ", ".join(sorted(a.value for a in abilities))


def _listed() -> str:
    installed = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return ", ".join(f"{p}://" for p in [*_BUILTIN, *sorted(installed)])
