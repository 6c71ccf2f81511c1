"""Feedback fixtures: a conversation of the tenant (and of another tenant) with a question and an answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conversations.models import Conversation, Message, Role, Tenant
from tests.clustering.conftest import inbound  # noqa: F401
from tests.factories import ConversationFactory, MessageFactory

QUESTION = "When are you open on Sundays?"
ANSWER = "We are closed on Sundays."


@dataclass(frozen=True)
class Exchange:
    conversation: Conversation
    question: Message
    answer: Message


def exchange_of(tenant: Tenant) -> Exchange:
    conversation = ConversationFactory(tenant=tenant)
    question = MessageFactory(conversation=conversation, tenant=tenant, role=Role.USER, text=QUESTION)
    answer = MessageFactory(conversation=conversation, tenant=tenant, role=Role.ASSISTANT, text=ANSWER)
    return Exchange(conversation, question, answer)


@pytest.fixture
def mine(tenant: Tenant, db: Any) -> Exchange:
    return exchange_of(tenant)


@pytest.fixture
def theirs(other_tenant: Tenant, db: Any) -> Exchange:
    return exchange_of(other_tenant)
