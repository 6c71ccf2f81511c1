"""The test suite's settings: the embedded database, fast hashing, synchronous django-q2."""

from __future__ import annotations

import os

from convo.env import BASE_DIR

# The suite runs its own embedded server, so `make test` never disturbs a running `make run`.
os.environ.setdefault("CONVO_DATA_DIR", str(BASE_DIR / ".data" / "test"))
# Each test run gets its own database on that server, so runs in parallel never drop each other's.
os.environ.setdefault("CONVO_TEST_DB_NAME", f"test_convo_{os.getpid()}")

from convo.settings.base import *  # noqa: F403
from convo.settings.base import Q_CLUSTER as _Q_CLUSTER

DEBUG = False
SECRET_KEY = "convo-tests-only-not-secret"  # noqa: S105
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Synchronous tasks on the ORM broker, whatever REDIS_URL says (the suite's cache is local memory).
Q_CLUSTER = {**{k: v for k, v in _Q_CLUSTER.items() if k != "django_redis"}, "orm": "default", "sync": True}
# Tests run on a local-memory cache; tests that exercise Redis build their own client from REDIS_URL.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "convo-tests"}}
# Fast, deterministic vectors; tests of the real model and the HTTP backends build their own.
EMBEDDINGS = {
    "BACKEND": "conversations.embeddings.hashing.HashingEmbedder",
    "MODEL": "v1",
    "DIMENSIONS": 384,
    "OPTIONS": {},
}
# Tasks run inline: no django-q2 cluster to find (tests of the worker check turn this on).
READYZ_EXPECT_WORKER = False
# One process: the per-process cache is coherent, so the search result cache can be tested.
SEARCH_CACHE_LOCAL = True
# Timings wait for timings_flush() (no flusher thread writing to the test database behind the
# tests' backs), in the database whatever REDIS_URL says; Redis-store tests build their own.
TIMINGS_FLUSH_SECONDS = float(os.environ.get("TIMINGS_FLUSH_SECONDS", "0"))
TIMINGS_STORE = os.environ.get("TIMINGS_STORE", "database")
# The webhook tests deliver to local HTTP servers; the address guard's own tests turn it off.
DELIVERY_ALLOW_PRIVATE_ADDRESSES = True
