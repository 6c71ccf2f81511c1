"""The test suite's settings: the embedded database, fast hashing, synchronous django-q2."""

from __future__ import annotations

import os

from convo.env import BASE_DIR

# The suite runs its own embedded server, so `make test` never disturbs a running `make run`.
os.environ.setdefault("CONVO_DATA_DIR", str(BASE_DIR / ".data" / "test"))

from convo.settings.base import *  # noqa: F403
from convo.settings.base import Q_CLUSTER as _Q_CLUSTER

DEBUG = False
SECRET_KEY = "convo-tests-only-not-secret"  # noqa: S105
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
Q_CLUSTER = {**_Q_CLUSTER, "sync": True}
# Tests run on a local-memory cache; tests that exercise Redis build their own client from REDIS_URL.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "convo-tests"}}
