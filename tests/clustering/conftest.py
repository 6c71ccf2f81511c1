"""Clustering fixtures: messages pushed through the real worker (hashing embedder, real database)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from clustering.models import Cluster, ClusterMembership
from conversations.models import Message, Role, Tenant
from conversations.services.embedding import embedding_drain
from tests.factories import ConversationFactory, MessageFactory

Inbound = Callable[..., list[Message]]


@pytest.fixture
def inbound(db: Any) -> Inbound:
    """``inbound(tenant, "text", …)``: store inbound messages (one conversation each, as from many
    users) and run the embedding worker over them, which assigns them to clusters."""

    def push(tenant: Tenant, *texts: str, role: str = Role.USER, drain: bool = True) -> list[Message]:
        made = [
            MessageFactory(conversation=ConversationFactory(tenant=tenant), tenant=tenant, role=role, text=text)
            for text in texts
        ]
        if drain:
            embedding_drain(seconds=30)
        return made

    return push


def cluster_of(message: Message) -> Cluster:
    return ClusterMembership.objects.select_related("cluster").get(message=message).cluster
