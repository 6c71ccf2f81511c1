"""Tenants, their API keys, conversations and messages.

Every row carries its tenant. ``embedding_state`` on conversations and messages is the durable
queue of embedding work: an acknowledged item is a committed ``pending`` row (ARCHITECTURE.md,
decision 1). ``updated_at`` and ``last_message_at`` are maintained by database triggers (migration
0002), so every write path keeps them right, including bulk SQL and the admin.
"""

from __future__ import annotations

from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from rest_framework_api_key.models import AbstractAPIKey

from convo.ids import uuid7


class Tenant(models.Model):
    """A bot, a creator or a product key: the unit of data isolation."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TenantAPIKey(AbstractAPIKey):
    """An API key of a tenant. Only a SHA-512 hash of the key is stored; the key itself is shown
    once, when it is made."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "tenant API key"
        verbose_name_plural = "tenant API keys"


class Channel(models.TextChoices):
    WEB = "web"
    API = "api"
    TELEGRAM = "telegram"
    WHATSAPP = "whatsapp"
    SMS = "sms"
    EMAIL = "email"
    VOICE = "voice"
    MESSENGER = "messenger"
    INSTAGRAM = "instagram"
    SLACK = "slack"
    DISCORD = "discord"
    OTHER = "other"


class ConversationStatus(models.TextChoices):
    ACTIVE = "active"
    CLOSED = "closed"
    HANDOFF_PENDING = "handoff_pending"
    HANDOFF_COMPLETE = "handoff_complete"


class Role(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    OPERATOR = "operator"


class EmbeddingState(models.TextChoices):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


def _choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


_ACTIVE = Q(status=ConversationStatus.ACTIVE, deleted_at__isnull=True)


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="conversations", db_index=False)
    # The client's own id for the conversation; replaying a create with it returns the same row.
    external_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 NULL = none given; unique when set
    # Chat platforms identify people with strings ("tg:12345", an e-mail address, a UUID).
    external_user_id = models.CharField("user id", max_length=255)
    channel = models.CharField(max_length=20, choices=Channel.choices, default=Channel.WEB)
    session_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 NULL = no session
    status = models.CharField(max_length=20, choices=ConversationStatus.choices, default=ConversationStatus.ACTIVE)
    summary = models.TextField(blank=True, default="")
    transcript = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)
    last_message_at = models.DateTimeField(null=True, blank=True, editable=False)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)
    embedding_state = models.CharField(
        max_length=12, choices=EmbeddingState.choices, default=EmbeddingState.PENDING, editable=False
    )
    # sha256 of the create payload: a replay with the same external_id must carry the same body.
    ingest_fingerprint = models.CharField(max_length=64, blank=True, default="", editable=False)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "external_user_id", "-created_at"], name="conv_tenant_user_created"),
            models.Index(fields=["tenant", "channel", "-created_at"], name="conv_tenant_channel_created"),
            models.Index(fields=["tenant", "status", "-created_at"], name="conv_tenant_status_created"),
            models.Index(
                fields=["tenant", "-created_at"], name="conv_tenant_created_live", condition=Q(deleted_at__isnull=True)
            ),
            models.Index(
                fields=["tenant", "external_user_id", "-last_message_at"], name="conv_active_user", condition=_ACTIVE
            ),
            GinIndex(fields=["metadata"], name="conv_metadata_gin", opclasses=["jsonb_path_ops"]),
            # The embedding worker's "next pending work": oldest first, only the rows still waiting.
            models.Index(fields=["created_at"], name="conv_embedding_pending", condition=Q(embedding_state="pending")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_user_id", "session_id"],
                name="conv_unique_active_session",
                condition=_ACTIVE,
            ),
            models.UniqueConstraint(
                fields=["tenant", "external_id"], name="conv_unique_external_id", condition=Q(external_id__isnull=False)
            ),
            _choices_check("status", ConversationStatus, "conv_status_valid"),
            _choices_check("channel", Channel, "conv_channel_valid"),
            _choices_check("embedding_state", EmbeddingState, "conv_embedding_state_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.external_user_id} · {self.channel} · {self.created_at:%Y-%m-%d %H:%M}"


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="messages", db_index=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.USER)
    text = models.TextField()
    sender_name = models.CharField(max_length=255, blank=True, default="")
    sender_avatar_url = models.URLField(max_length=2048, blank=True, default="")
    # The chat platform's id of the message; replaying it returns the same row.
    external_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 NULL = none given; unique when set
    raw_payload = models.JSONField(null=True, blank=True)
    # When the platform says the message was sent; created_at is when convo stored it.
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    embedding_state = models.CharField(
        max_length=12, choices=EmbeddingState.choices, default=EmbeddingState.PENDING, editable=False
    )

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="msg_conversation_created"),
            models.Index(fields=["created_at"], name="msg_embedding_pending", condition=Q(embedding_state="pending")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_id"], name="msg_unique_external_id", condition=Q(external_id__isnull=False)
            ),
            _choices_check("role", Role, "msg_role_valid"),
            _choices_check("embedding_state", EmbeddingState, "msg_embedding_state_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"


class IdempotencyRecord(models.Model):
    """The stored outcome of a request sent with an ``Idempotency-Key`` header. A replay with the
    same key and body gets the same answer; the same key with another body gets 409."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    scope = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "scope", "key"], name="idempotency_unique_key"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"
