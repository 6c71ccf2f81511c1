"""Reads. Every function takes the tenant explicitly; nothing here can return another tenant's rows."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from conversations.models import Conversation, ConversationStatus, EmbeddingState, Message, Tenant, TenantAPIKey


@dataclass(frozen=True)
class ConversationFilters:
    user_id: str | None = None
    channel: str | None = None
    status: str | None = None
    session_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: dict[str, Any] | None = None


def conversation_list(*, tenant: Tenant, filters: ConversationFilters) -> QuerySet[Conversation]:
    """Live (not deleted) conversations of ``tenant`` matching ``filters``; unordered (the caller
    paginates). Each filter maps onto one of the (tenant, …, created_at) indexes."""
    queryset = Conversation.objects.filter(tenant=tenant, deleted_at__isnull=True)
    if filters.user_id is not None:
        queryset = queryset.filter(external_user_id=filters.user_id)
    if filters.channel is not None:
        queryset = queryset.filter(channel=filters.channel)
    if filters.status is not None:
        queryset = queryset.filter(status=filters.status)
    if filters.session_id is not None:
        queryset = queryset.filter(session_id=filters.session_id)
    if filters.created_after is not None:
        queryset = queryset.filter(created_at__gte=filters.created_after)
    if filters.created_before is not None:
        queryset = queryset.filter(created_at__lt=filters.created_before)
    if filters.metadata:
        queryset = queryset.filter(metadata__contains=filters.metadata)  # the jsonb_path_ops GIN index
    return queryset


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(conversation=conversation).order_by("created_at", "id")


@dataclass(frozen=True)
class UserConversationStats:
    """Seed 001's ``get_conversation_stats``."""

    user_id: str
    days: int
    total: int
    active: int
    with_embeddings: int
    handoff_complete: int
    avg_per_day: float


def user_conversation_stats(*, tenant: Tenant, user_id: str, days: int) -> UserConversationStats:
    """Counts over the user's live conversations created in the last ``days`` days, in one query
    on the (tenant, user, created_at) index."""
    since = timezone.now() - timedelta(days=days)
    counts = Conversation.objects.filter(
        tenant=tenant, external_user_id=user_id, deleted_at__isnull=True, created_at__gte=since
    ).aggregate(
        total=Count("id"),
        active=Count("id", filter=Q(status=ConversationStatus.ACTIVE)),
        with_embeddings=Count("id", filter=Q(embedding_state=EmbeddingState.DONE)),
        handoff_complete=Count("id", filter=Q(status=ConversationStatus.HANDOFF_COMPLETE)),
    )
    return UserConversationStats(
        user_id=user_id,
        days=days,
        total=counts["total"],
        active=counts["active"],
        with_embeddings=counts["with_embeddings"],
        handoff_complete=counts["handoff_complete"],
        avg_per_day=round(counts["total"] / days, 2),
    )


# --- API keys ----------------------------------------------------------------------------------

_key_cache: dict[str, tuple[float, Tenant | None, str | None]] = {}
_key_cache_lock = threading.Lock()
_KEY_CACHE_MAX = 10_000


def tenant_for_api_key(*, key: str) -> tuple[Tenant, str] | None:
    """The active tenant owning the usable API ``key`` and the key's id, or None.

    Verified keys are remembered in this process for ``CONVO_API_KEY_CACHE_SECONDS`` (keyed by the
    key's SHA-512, never the key), which takes a database round trip off every request; a revoked
    key therefore stops working within that many seconds.
    """
    digest = hashlib.sha512(key.encode()).hexdigest()
    ttl: float = settings.CONVO_API_KEY_CACHE_SECONDS
    now = time.monotonic()
    cached = _key_cache.get(digest)
    if cached is not None and now - cached[0] < ttl:
        tenant, key_id = cached[1], cached[2]
        return (tenant, key_id) if tenant is not None and key_id is not None else None

    result: tuple[Tenant, str] | None = None
    prefix, _, _ = key.partition(".")
    api_key = TenantAPIKey.objects.get_usable_keys().select_related("tenant").filter(prefix=prefix).first()
    if api_key is not None and api_key.is_valid(key) and not api_key.has_expired and api_key.tenant.is_active:
        result = (api_key.tenant, api_key.pk)
    with _key_cache_lock:
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[digest] = (now, result[0] if result else None, result[1] if result else None)
    return result


def api_key_cache_clear() -> None:
    with _key_cache_lock:
        _key_cache.clear()
