"""The short-lived cache of cluster lists (seed 002), dropped by every change to a tenant's clusters.

A cached page is keyed by the tenant's generation, a time that every mutation (a join, a new
cluster, any moderator action) replaces once its transaction commits: pages cached before the
change are never read again and expire on their own. Unlike the search cache, this one is on
without Redis too: a process that did not see a change serves a list at most
``CLUSTER_LIST_CACHE_SECONDS`` old, which is the staleness seed 002 accepts.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

_PREFIX = "convo:clusters"


def _generation_key(tenant_id: int) -> str:
    return f"{_PREFIX}:gen:{tenant_id}"


def cluster_list_cache_key(*, tenant_id: int, request: dict[str, Any]) -> str | None:
    """The cache key of one list request, or None when the cache is off."""
    if settings.CLUSTER_LIST_CACHE_SECONDS <= 0:
        return None
    generation = cache.get_or_set(_generation_key(tenant_id), time.time_ns(), timeout=None)
    canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    return f"{_PREFIX}:{tenant_id}:{generation}:{hashlib.sha256(canonical).hexdigest()}"


def cluster_list_cache_get(key: str | None) -> Any:
    return None if key is None else cache.get(key)


def cluster_list_cache_set(key: str | None, value: Any) -> None:
    if key is not None:
        cache.set(key, value, timeout=settings.CLUSTER_LIST_CACHE_SECONDS)


def cluster_list_cache_invalidate(*, tenant_id: int) -> None:
    cache.set(_generation_key(tenant_id), time.time_ns(), timeout=None)


def cluster_list_cache_invalidate_on_commit(*, tenant_id: int) -> None:
    """Drop the tenant's cached lists once the change commits (robust: the change is stored; a
    cache outage must only be logged, and the lists then expire on their own)."""
    transaction.on_commit(lambda: cluster_list_cache_invalidate(tenant_id=tenant_id), robust=True)
