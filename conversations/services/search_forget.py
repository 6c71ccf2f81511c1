"""Dropping cached search results that new vectors make stale (conversations/search_cache.py)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from django.db import connection, transaction

from conversations.models import Conversation, Message
from conversations.search_cache import search_cache_invalidate


def searches_forget_on_commit(*, message_ids: Sequence[UUID] = (), conversation_ids: Sequence[UUID] = ()) -> None:
    """Once the caller's transaction commits, drop the cached search results of the tenants and
    users these messages and conversations belong to: their new vectors change what searches
    return. The users are read now, inside the transaction, while the rows surely exist."""
    pairs: list[tuple[int, str]] = []
    with connection.cursor() as cursor:
        if message_ids:
            cursor.execute(
                f"SELECT DISTINCT c.tenant_id, c.external_user_id FROM {Conversation._meta.db_table} AS c "
                f"JOIN {Message._meta.db_table} AS m ON m.conversation_id = c.id WHERE m.id = ANY(%s)",
                [list(message_ids)],
            )
            pairs.extend(cursor.fetchall())
        if conversation_ids:
            cursor.execute(
                f"SELECT DISTINCT tenant_id, external_user_id FROM {Conversation._meta.db_table} WHERE id = ANY(%s)",
                [list(conversation_ids)],
            )
            pairs.extend(cursor.fetchall())
    if not pairs:
        return
    users: dict[int, set[str]] = {}
    for tenant_id, user_id in pairs:
        users.setdefault(tenant_id, set()).add(user_id)

    def forget() -> None:
        for tenant_id, user_ids in users.items():
            search_cache_invalidate(tenant_id=tenant_id, user_ids=user_ids)

    transaction.on_commit(forget, robust=True)
