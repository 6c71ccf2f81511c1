"""Context for an LLM prompt about one end user (seed 004's ``buildConversationContext``).

The most recent messages of the user come first (a conversation continues from where it is), then
the past messages and conversation summaries most relevant to the query, without duplicates, all
within a token budget. Tokens are estimated as ceil(characters / 4), the usual rule of thumb for
English with BPE tokenizers; the estimate is conservative enough for budgeting, and convo does not
know which LLM (and so which tokenizer) the caller will use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from conversations.models import Conversation, EmbeddingSpace, Message, Tenant
from conversations.search import Ranking, SearchFilters, conversation_neighbours, message_search


def tokens_estimate(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class ContextItem:
    kind: Literal["recent", "relevant", "summary"]
    id: UUID
    conversation_id: UUID
    role: str
    text: str
    created_at: datetime
    tokens: int
    similarity: float | None = None


@dataclass
class Context:
    items: list[ContextItem] = field(default_factory=list)
    tokens: int = 0
    budget: int = 0
    truncated: bool = False

    def render(self) -> str:
        """Plain text for a prompt: summaries, then relevant past messages, then the recent ones."""
        sections = []
        for kind, title in (
            ("summary", "Earlier conversations"),
            ("relevant", "Relevant earlier messages"),
            ("recent", "Recent messages"),
        ):
            lines = [f"{item.role}: {item.text}" for item in self.items if item.kind == kind]
            if lines:
                sections.append(f"## {title}\n" + "\n".join(lines))
        return "\n\n".join(sections)


def context_build(
    *,
    tenant: Tenant,
    user_id: str,
    query_vector: list[float] | None,
    space: EmbeddingSpace | None,
    recent: int,
    k: int,
    token_budget: int,
    channel: str | None = None,
) -> Context:
    context = Context(budget=token_budget)
    seen: set[UUID] = set()

    latest = list(
        Message.objects.filter(
            tenant=tenant, conversation__external_user_id=user_id, conversation__deleted_at__isnull=True
        )
        .order_by("-created_at", "-id")
        .values_list("id", "conversation_id", "role", "text", "created_at")[:recent]
    )
    recent_items: list[ContextItem] = []
    for message_id, conversation_id, role, text, created_at in latest:  # newest first: keep the newest
        item = ContextItem("recent", message_id, conversation_id, role, text, created_at, tokens_estimate(text))
        if not _fits(context, item):
            context.truncated = True
            break
        recent_items.append(item)
        seen.add(message_id)
    recent_items.reverse()  # chronological in the prompt

    relevant: list[ContextItem] = []
    if query_vector is not None and space is not None and k > 0:
        summaries = conversation_neighbours(tenant=tenant, space=space, vector=query_vector, user_id=user_id, limit=k)
        found = Conversation.objects.in_bulk([conversation_id for conversation_id, _ in summaries])
        for conversation_id, similarity in summaries:
            conversation = found.get(conversation_id)
            text = conversation.summary if conversation and conversation.summary else ""
            if not text or conversation is None:
                continue
            item = ContextItem(
                "summary",
                conversation_id,
                conversation_id,
                "summary",
                text,
                conversation.created_at,
                tokens_estimate(text),
                similarity,
            )
            if _fits(context, item):
                relevant.append(item)
            else:
                context.truncated = True
        result = message_search(
            tenant=tenant,
            space=space,
            vector=query_vector,
            filters=SearchFilters(user_id=user_id),
            k=k + len(seen),
            ranking=Ranking(channel=channel),
        )
        for hit in result.hits:
            if hit.message_id in seen or len([i for i in relevant if i.kind == "relevant"]) >= k:
                continue
            item = ContextItem(
                "relevant",
                hit.message_id,
                hit.conversation_id,
                hit.role,
                hit.text,
                hit.created_at,
                tokens_estimate(hit.text),
                hit.similarity,
            )
            if _fits(context, item):
                relevant.append(item)
                seen.add(hit.message_id)
            else:
                context.truncated = True
    context.items = relevant + recent_items
    return context


def _fits(context: Context, item: ContextItem) -> bool:
    if context.tokens + item.tokens > context.budget:
        return False
    context.tokens += item.tokens
    return True
