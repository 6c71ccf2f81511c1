"""Time-ordered UUIDs (RFC 9562 version 7).

Made in the application so a batch knows its ids before the single INSERT that stores it, and
time-ordered so new rows land at the right-hand edge of the primary-key index instead of at
random pages (UUIDv4 keys scatter writes across the whole index). Python 3.11 has no uuid7.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_BITS = 12


def uuid7() -> uuid.UUID:
    """A UUIDv7. Within one process the ids are strictly increasing: rand_a holds a counter
    that restarts at a random value each millisecond (RFC 9562 §6.2, method 1)."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # leave room to count up
        else:
            _counter += 1
            if _counter >> _COUNTER_BITS:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
