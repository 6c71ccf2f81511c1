"""A short-lived cache of search results (seed 004), invalidated when the searched data changes.

Each cache key carries a generation number of the tenant (for searches over all its users) or of
the one user a search is filtered to. Whatever changes what a search could return (new vectors,
a soft delete, a text change) bumps the generations of the tenant and the users concerned, so
every cached result for them is simply never read again and expires on its own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

import orjson
from django.conf import settings
from django.core.cache import cache

_PREFIX = "convo:search"


def _generation_key(tenant_id: int, user_id: str | None) -> str:
    if user_id is None:
        return f"{_PREFIX}:gen:{tenant_id}"
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:24]
    return f"{_PREFIX}:gen:{tenant_id}:{digest}"


def search_cache_enabled() -> bool:
    """Only with a cache every process shares (Redis): a per-process cache would go on serving a
    result in the processes that did not see the change."""
    return settings.SEARCH_CACHE_SECONDS > 0 and (settings.REDIS_URL != "" or settings.SEARCH_CACHE_LOCAL)


def search_cache_key(*, tenant_id: int, user_id: str | None, request: dict[str, Any]) -> str:
    # A generation is a time, not a counter: if its key is ever evicted, the new value can never
    # equal one that results were cached under before.
    generation = cache.get_or_set(_generation_key(tenant_id, user_id), time.time_ns(), timeout=None)
    canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    return f"{_PREFIX}:{tenant_id}:{generation}:{hashlib.sha256(canonical).hexdigest()}"


def search_cache_get(key: str) -> Any:
    return cache.get(key)


def search_cache_set(key: str, value: Any) -> None:
    cache.set(key, value, timeout=settings.SEARCH_CACHE_SECONDS)


def search_cache_invalidate(*, tenant_id: int, user_ids: Iterable[str]) -> None:
    """Forget cached results of the tenant's unfiltered searches and of these users' searches."""
    now = time.time_ns()
    keys = {_generation_key(tenant_id, None), *(_generation_key(tenant_id, user) for user in user_ids)}
    cache.set_many(dict.fromkeys(keys, now), timeout=None)
