"""The kinds of item the embedding pipeline embeds, and what differs between them.

Messages, conversations and (from the feedback app) knowledge entries all go through the same
queue, cache, worker, reconciler, model switch and per-space HNSW indexes. What differs is small
and declared here: where the rows and their vectors live, which SQL expression gives the text,
what a blank text means, whether the text can change after it was embedded, and what must
happen in the transaction that marks items done (messages join clusters there).

An app outside ``conversations`` adds its kind with ``embedding_kind_register`` from its
``AppConfig.ready`` (feedback/apps.py): the pipeline then never imports the apps built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from conversations.models import Conversation, ConversationEmbedding, EmbeddingSpace, Message, MessageEmbedding


@dataclass(frozen=True)
class EmbeddedItem:
    id: UUID
    tenant_id: int
    vector: list[float]


# Called inside the transaction that marks items done, with the items this claim finished.
OnDone = Callable[[EmbeddingSpace, Sequence[EmbeddedItem]], None]


@dataclass(frozen=True)
class EmbeddableKind:
    name: str
    items: Any  # the EmbeddingWork model (typed loosely: the ORM managers differ per model)
    vectors: Any  # its ItemEmbedding model
    # SQL giving the text to embed, over the item table aliased ``t``.
    text_sql: str
    # Prefix of the per-space HNSW index name: ``<prefix>_hnsw_space_<id>``.
    index_prefix: str
    # A blank text fails the item (a message must say something) or skips it (a conversation
    # with no summary yet).
    blank_state: str = "failed"
    # The text can change after it was embedded (a summary, an edited knowledge entry): the
    # worker replaces its vector, and a space revived for a switch must drop its old vectors.
    mutable_text: bool = False
    # After a switch, an item with a vector in the new space must still pass through the worker
    # (a message must be clustered in it) instead of being marked done directly.
    finish_in_worker: bool = False
    on_done: OnDone | None = None
    # Columns of the item table copied onto its vector rows when they are stored, so that search
    # can filter vectors without joining the items (a message's conversation).
    copied_columns: tuple[str, ...] = ()


_kinds: dict[str, EmbeddableKind] = {}


def embedding_kind_register(kind: EmbeddableKind) -> None:
    """Add ``kind`` to the pipeline (idempotent: ``ready`` may run more than once in tests)."""
    _kinds[kind.name] = kind


def embedding_kinds() -> tuple[EmbeddableKind, ...]:
    """Every registered kind, in the order the worker drains them."""
    return tuple(_kinds.values())


def embedding_kind(name: str) -> EmbeddableKind:
    try:
        return _kinds[name]
    except KeyError:
        raise ValueError(f"no embeddable kind {name!r}: one of {', '.join(_kinds)}") from None


def _messages_done(space: EmbeddingSpace, items: Sequence[EmbeddedItem]) -> None:
    """Inbound messages join clusters in the transaction that marks them done, so each is
    clustered exactly once whenever the worker dies; then their users' cached searches go."""
    from clustering.services.assignment import EmbeddedMessage, clusters_assign_embedded
    from conversations.services.search_forget import searches_forget_on_commit

    clusters_assign_embedded(
        space=space, items=[EmbeddedMessage(id=item.id, tenant_id=item.tenant_id, vector=item.vector) for item in items]
    )
    searches_forget_on_commit(message_ids=[item.id for item in items])


def _conversations_done(space: EmbeddingSpace, items: Sequence[EmbeddedItem]) -> None:
    from conversations.services.search_forget import searches_forget_on_commit

    searches_forget_on_commit(conversation_ids=[item.id for item in items])


embedding_kind_register(
    EmbeddableKind(
        name="message",
        items=Message,
        vectors=MessageEmbedding,
        text_sql="t.text",
        index_prefix="msg",
        finish_in_worker=True,
        copied_columns=("conversation_id",),
        on_done=_messages_done,
    )
)
embedding_kind_register(
    EmbeddableKind(
        name="conversation",
        items=Conversation,
        vectors=ConversationEmbedding,
        # A conversation is embedded by its summary, or by its transcript when it has no summary.
        text_sql="COALESCE(NULLIF(t.summary, ''), t.transcript)",
        index_prefix="conv",
        blank_state="skipped",
        mutable_text=True,
        on_done=_conversations_done,
    )
)
