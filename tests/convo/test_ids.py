from __future__ import annotations

import time

from convo.ids import uuid7


def test_uuid7_is_version_7_and_strictly_increasing_within_a_process():
    ids = [uuid7() for _ in range(20_000)]
    assert all(value.version == 7 and value.variant == "specified in RFC 4122" for value in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_uuid7_carries_the_time():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    assert abs((value.int >> 80) - before) < 1000
