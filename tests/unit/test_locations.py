"""storage.locations: staging and storage must not overlap (start-up refuses it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from uploadsvc.config import ConfigError
from uploadsvc.storage.locations import check_apart


@pytest.mark.parametrize(
    ("storage", "staging"),
    [
        ("file://./uploads", "file://./uploads"),
        ("file://./uploads", "file://./uploads/staging"),  # staged files among the objects
        ("file://./data/uploads/..", "file://./data"),  # the same folder, spelt otherwise
        ("./uploads", "file://./uploads/x"),
        ("s3://bucket", "s3://bucket/staging"),
        ("s3://bucket/uploads/", "s3://bucket/uploads"),
        ("s3://bucket/a/b", "s3://bucket/a"),  # storage inside staging
    ],
)
def test_overlapping_places_are_refused(storage: str, staging: str) -> None:
    with pytest.raises(ConfigError, match=r"^staging\.url: .* overlaps the storage"):
        check_apart(storage, staging)


@pytest.mark.parametrize(
    ("storage", "staging"),
    [
        ("file://./uploads", "file://./staging"),
        ("file://./uploads", "file://./uploads-staging"),  # a sibling, not a child
        ("s3://bucket/uploads", "s3://bucket/staging"),
        ("s3://bucket/uploads", "s3://other/uploads"),
        ("s3://bucket/uploads", "gs://bucket/uploads"),  # other stores
        ("memory://uploads", "file://./uploads"),
    ],
)
def test_separate_places_are_accepted(storage: str, staging: str) -> None:
    check_apart(storage, staging)


def test_relative_folders_are_compared_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        check_apart(f"file://{tmp_path}/store", "file://./store/staging")
