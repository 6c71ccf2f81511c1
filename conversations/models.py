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
from pgvector.django import VectorField
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
    # Nothing to embed (a conversation with neither summary nor transcript yet).
    SKIPPED = "skipped"


class EmbeddingWork(models.Model):
    """The fields that make a row an item of the durable embedding queue (ARCHITECTURE.md, 1)."""

    embedding_state = models.CharField(
        max_length=12, choices=EmbeddingState.choices, default=EmbeddingState.PENDING, editable=False
    )
    # Claims made, including the current one; an item failing ``EMBEDDING_MAX_ATTEMPTS`` times ends failed.
    embedding_attempts = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)
    # When a worker claimed the row; a claim older than the lease is handed back by the reconciler.
    embedding_claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    embedding_error = models.TextField(blank=True, default="", db_default="", editable=False)

    class Meta:
        abstract = True


def _choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


_ACTIVE = Q(status=ConversationStatus.ACTIVE, deleted_at__isnull=True)


class Conversation(EmbeddingWork):
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
            models.Index(
                fields=["embedding_claimed_at"],
                name="conv_embedding_claimed",
                condition=Q(embedding_state="processing"),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_user_id", "session_id"],
                name="conv_unique_active_session",
                condition=_ACTIVE,
                violation_error_message="This user already has an active conversation with this session id.",
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


class Message(EmbeddingWork):
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

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="msg_conversation_created"),
            models.Index(fields=["created_at"], name="msg_embedding_pending", condition=Q(embedding_state="pending")),
            models.Index(
                fields=["embedding_claimed_at"], name="msg_embedding_claimed", condition=Q(embedding_state="processing")
            ),
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


class SpaceState(models.TextChoices):
    BUILDING = "building"
    ACTIVE = "active"
    RETIRED = "retired"


class EmbeddingSpace(models.Model):
    """The vector space of one embedding model. Vectors of different spaces are never compared;
    search reads the one ``active`` space, and a model change fills a ``building`` one beside it."""

    model_id = models.CharField(max_length=200, unique=True)
    dimensions = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=SpaceState.choices, default=SpaceState.BUILDING)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    activated_at = models.DateTimeField(null=True, blank=True)
    # The EMBEDDINGS-shaped config (BACKEND, MODEL, DIMENSIONS, OPTIONS) that builds this space's
    # embedder, so workers and search follow the active space rather than their settings. Never a
    # secret: an API key is named by OPTIONS["api_key_env"] and read from the environment.
    config = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["state"], name="one_active_space", condition=Q(state=SpaceState.ACTIVE)),
            _choices_check("state", SpaceState, "space_state_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} ({self.dimensions}d, {self.state})"


class ItemEmbedding(models.Model):
    """A vector of one item in one space. The column has no fixed dimension so spaces of any size
    share the table; each space has its own partial HNSW index on ``embedding::vector(<dims>)``."""

    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, related_name="+")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    embedding = VectorField()
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        abstract = True


class ConversationEmbedding(ItemEmbedding):
    # Looked up through conv_embedding_once_per_space (item first): an index of its own would only
    # be one more write per vector.
    item = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="embeddings", db_index=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "space"], name="conv_embedding_once_per_space")]
        indexes = [models.Index(fields=["tenant", "space"], name="conv_embedding_tenant_space")]

    def __str__(self) -> str:
        return f"{self.item_id} in {self.space_id}"


class MessageEmbedding(ItemEmbedding):
    # Neither foreign key has an index of its own: msg_embedding_once_per_space (item first) and
    # msg_embedding_space_conv (space first) serve their lookups, and every vector the worker
    # stores would pay for two more index entries.
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, related_name="+", db_index=False)
    item = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="embeddings", db_index=False)
    # The message's conversation, copied when the vector is stored (a message never moves): a
    # per-user search reads the user's conversations, then their vectors through
    # ``msg_embedding_space_conv``, without visiting the messages at all (less than half
    # the cost of the three-table join at 100k messages). Deleting a conversation deletes these
    # rows through its messages (``item``); a cascade of its own would look them up by
    # conversation alone, which no index leads with: a scan of the table per delete.
    conversation = models.ForeignKey(Conversation, on_delete=models.DO_NOTHING, related_name="+", db_index=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "space"], name="msg_embedding_once_per_space")]
        indexes = [
            models.Index(fields=["tenant", "space"], name="msg_embedding_tenant_space"),
            models.Index(fields=["space", "conversation"], name="msg_embedding_space_conv"),
        ]

    def __str__(self) -> str:
        return f"{self.item_id} in {self.space_id}"


class EmbeddingCacheEntry(models.Model):
    """The durable embedding cache: one vector per (model, normalised text), shared by every
    worker and kept across restarts, so an identical text is never sent to a provider twice."""

    key = models.CharField(max_length=64, primary_key=True)  # sha256(model_id, normalised text)
    model_id = models.CharField(max_length=200)
    embedding = VectorField()
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    def __str__(self) -> str:
        return f"{self.model_id}:{self.key[:12]}"


class EmbeddingCacheStats(models.Model):
    """Hits and misses of the embedding cache per model and day (written once per batch)."""

    model_id = models.CharField(max_length=200)
    day = models.DateField()
    hot_hits = models.BigIntegerField(default=0)
    durable_hits = models.BigIntegerField(default=0)
    misses = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model_id", "day"], name="cache_stats_model_day")]

    def __str__(self) -> str:
        return f"{self.model_id} {self.day}"
