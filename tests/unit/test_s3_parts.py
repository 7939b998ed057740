"""S3 part sizing: within S3's rules for every object the service can accept."""

from __future__ import annotations

from uploadsvc.storage.s3 import PART_SIZE, part_size

S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 << 20


def test_parts_start_small_and_grow() -> None:
    assert part_size(1) == PART_SIZE >= S3_MIN_PART
    assert part_size(1000) == PART_SIZE
    assert part_size(1001) == 2 * PART_SIZE


def test_ten_thousand_parts_hold_more_than_400_gib() -> None:
    total = sum(part_size(n) for n in range(1, S3_MAX_PARTS + 1))
    assert total > 400 << 30
