from __future__ import annotations

import factory

from conversations.models import Channel, Conversation, Message, Role, Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation

    tenant = factory.SubFactory(TenantFactory)
    external_user_id = factory.Sequence(lambda n: f"user-{n}")
    channel = Channel.WEB
    session_id = factory.Sequence(lambda n: f"session-{n}")


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    conversation = factory.SubFactory(ConversationFactory)
    tenant = factory.SelfAttribute("conversation.tenant")
    role = Role.USER
    text = factory.Sequence(lambda n: f"message number {n}")
