"""django-q2 entry points. Thin: they take no model instances and call one service each."""

from __future__ import annotations

from conversations.services.embedding import embedding_drain, embedding_reconcile


def embed_pending() -> int:
    """Embed pending conversations and messages until none are left or the drain budget is spent
    (then kick a fresh drain, so a long backlog never runs into the task timeout)."""
    from conversations.services.embedding_kick import embedding_kick

    claimed = embedding_drain()
    if claimed:
        embedding_kick(force=True)
    return claimed


def reconcile_embeddings() -> int:
    """Hand back expired claims, then make sure a drain runs (the safety net behind the kicks)."""
    from conversations.services.embedding_kick import embedding_kick

    handed_back = embedding_reconcile()
    embedding_kick(force=True)
    return handed_back
