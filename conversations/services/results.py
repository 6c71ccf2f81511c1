"""What an ingest service answers for each item it was given."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID


@dataclass(frozen=True)
class Accepted:
    """The item is stored (or was already stored: ``replayed``) and waits for embedding."""

    id: UUID
    replayed: bool = False
    conversation_id: UUID | None = None
    message_ids: tuple[UUID, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """The item was not stored; ``fields`` names what was wrong with it."""

    code: str
    message: str
    fields: dict[str, list[str]] = field(default_factory=dict)


ItemResult = Accepted | Rejected
