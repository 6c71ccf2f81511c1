"""Feedback, owner corrections, response analytics, voice transcripts, and the learning queue.

Seed 001's ``conversation_feedback``, ``owner_corrections``, ``response_analytics``,
``voice_transcripts`` and ``learning_queue`` tables, rebuilt. Every row carries its tenant and its
conversation; ``message``, where present, is the single response a record is about. Choices and
ranges are database check constraints, so no write path (bulk SQL, the admin, a bug) can store a
rating of 7 or a status the services do not know.

A ``LearningItem`` is made by the services in the same transaction as its source: an owner
correction, a low rating, or a cluster's answer (feedback/services.py). Approving one creates or
updates a ``KnowledgeEntry`` (feedback/knowledge.py), which the message pipeline embeds like any
other item (``EmbeddingWork``): its vectors live in ``KnowledgeEmbedding``, one per embedding
space, and every change to an entry is kept as a ``KnowledgeEntryVersion`` (docs/knowledge.md).
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from clustering.models import Cluster
from conversations.models import Channel, Conversation, EmbeddingState, EmbeddingWork, ItemEmbedding, Message, Tenant
from convo.ids import uuid7


def _choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


class FeedbackKind(models.TextChoices):
    THUMBS = "thumbs"
    RATING = "rating"


# A thumbs value: up is 1, down is -1. A rating's value is 1 to 5.
THUMBS_UP = 1
THUMBS_DOWN = -1
RATING_MIN = 1
RATING_MAX = 5


class Feedback(models.Model):
    """An end user's verdict on a conversation, or on one response of it (``message``)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="feedback", db_index=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True, related_name="feedback")
    kind = models.CharField(max_length=10, choices=FeedbackKind.choices)
    value = models.SmallIntegerField(help_text="thumbs: 1 up, -1 down; rating: 1 to 5.")
    comment = models.TextField(blank=True, default="")
    # The channel the feedback came from (the widget, Telegram, …).
    source = models.CharField(max_length=20, choices=Channel.choices, default=Channel.WEB)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        verbose_name_plural = "feedback"
        indexes = [
            models.Index(fields=["tenant", "-created_at", "-id"], name="feedback_tenant_created"),
            models.Index(fields=["conversation", "-created_at", "-id"], name="feedback_conversation_created"),
        ]
        constraints = [
            _choices_check("kind", FeedbackKind, "feedback_kind_valid"),
            _choices_check("source", Channel, "feedback_source_valid"),
            models.CheckConstraint(
                condition=Q(kind=FeedbackKind.THUMBS, value__in=[THUMBS_UP, THUMBS_DOWN])
                | Q(kind=FeedbackKind.RATING, value__gte=RATING_MIN, value__lte=RATING_MAX),
                name="feedback_value_valid",
            ),
        ]

    def __str__(self) -> str:
        if self.kind == FeedbackKind.THUMBS:
            return "thumbs up" if self.value == THUMBS_UP else "thumbs down"
        return f"rating {self.value}/{RATING_MAX}"


class OwnerCorrection(models.Model):
    """An owner's correction of a response: what was said, what should have been, and why."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="corrections", db_index=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True, related_name="corrections")
    original_response = models.TextField(blank=True, default="")
    corrected_text = models.TextField()
    reason = models.TextField(blank=True, default="")
    # Who corrected it, as the chat backend names them (an owner's e-mail, a staff handle).
    corrected_by = models.CharField(max_length=255)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at", "-id"], name="correction_tenant_created"),
            models.Index(fields=["conversation", "-created_at", "-id"], name="correction_conv_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(corrected_text=""), name="correction_text_present"),
            models.CheckConstraint(condition=~Q(corrected_by=""), name="correction_by_present"),
        ]

    def __str__(self) -> str:
        return f"correction by {self.corrected_by}"


class ResponseAnalytics(models.Model):
    """How one response was made, as the chat backend reports it: latency, model, tokens, cost."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="response_analytics", db_index=False
    )
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="response_analytics"
    )
    latency_ms = models.PositiveIntegerField()
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # In the chat backend's currency unit (normally US dollars), to a millionth.
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    from_cache = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        verbose_name_plural = "response analytics"
        indexes = [
            models.Index(fields=["tenant", "-created_at", "-id"], name="analytics_tenant_created"),
            models.Index(fields=["conversation", "-created_at", "-id"], name="analytics_conv_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(cost__gte=0), name="analytics_cost_not_negative"),
            models.CheckConstraint(condition=~Q(model=""), name="analytics_model_present"),
        ]

    def __str__(self) -> str:
        return f"{self.model} · {self.latency_ms} ms"


class VoiceTranscript(models.Model):
    """The transcript of a voice exchange attached to a conversation."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="voice_transcripts", db_index=False
    )
    text = models.TextField()
    # A BCP 47 language tag ("en", "pt-BR"); empty when unknown.
    language = models.CharField(max_length=35, blank=True, default="")
    duration_seconds = models.DecimalField(max_digits=9, decimal_places=3)
    audio_url = models.URLField(max_length=2048, blank=True, default="")
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at", "-id"], name="transcript_tenant_created"),
            models.Index(fields=["conversation", "-created_at", "-id"], name="transcript_conv_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(text=""), name="transcript_text_present"),
            models.CheckConstraint(condition=Q(duration_seconds__gte=0), name="transcript_duration_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.duration_seconds}s {self.language or '?'}"


class LearningSource(models.TextChoices):
    CORRECTION = "correction"
    LOW_RATING = "low_rating"
    ANSWERED_CLUSTER = "answered_cluster"


class LearningStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    # Taken into the knowledge base: ``entry`` is the entry it created or updated.
    APPLIED = "applied"


REVIEWED = [LearningStatus.APPROVED, LearningStatus.REJECTED, LearningStatus.APPLIED]


class LearningItem(models.Model):
    """A candidate piece of knowledge awaiting review: a question and the answer it should get.

    ``source`` says where it came from and which one of ``correction``, ``feedback`` or
    ``cluster`` points at the row that made it. ``approved_answer`` is what a reviewer approved
    (the proposed answer, or their edit of it); the knowledge base takes that one."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    source = models.CharField(max_length=20, choices=LearningSource.choices)
    correction = models.OneToOneField(
        OwnerCorrection, on_delete=models.CASCADE, null=True, blank=True, related_name="learning_item"
    )
    feedback = models.OneToOneField(
        Feedback, on_delete=models.CASCADE, null=True, blank=True, related_name="learning_item"
    )
    # Clusters are archived, not deleted; should one go, its items stay, for the record.
    cluster = models.ForeignKey(Cluster, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The cluster's answer_version this item holds: re-answering a cluster makes a new item.
    cluster_answer_version = models.PositiveIntegerField(null=True, blank=True)
    question = models.TextField(blank=True, default="")
    original_answer = models.TextField(blank=True, default="")
    proposed_answer = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=LearningStatus.choices, default=LearningStatus.PENDING)
    approved_answer = models.TextField(blank=True, default="")
    reviewed_by = models.CharField(max_length=200, blank=True, default="")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True, default="")
    # The knowledge entry this item created or updated when it was applied.
    entry = models.ForeignKey(
        "KnowledgeEntry", on_delete=models.SET_NULL, null=True, blank=True, related_name="learning_items"
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [
            # The review queue: a tenant's items of one status, oldest first.
            models.Index(fields=["tenant", "status", "created_at", "id"], name="learning_review_queue"),
            models.Index(fields=["tenant", "created_at", "id"], name="learning_tenant_created"),
        ]
        constraints = [
            _choices_check("source", LearningSource, "learning_source_valid"),
            _choices_check("status", LearningStatus, "learning_status_valid"),
            # The pointer matches the source (a cluster pointer may be emptied by SET_NULL).
            models.CheckConstraint(
                condition=Q(
                    source=LearningSource.CORRECTION,
                    correction__isnull=False,
                    feedback__isnull=True,
                    cluster__isnull=True,
                )
                | Q(
                    source=LearningSource.LOW_RATING,
                    feedback__isnull=False,
                    correction__isnull=True,
                    cluster__isnull=True,
                )
                | Q(source=LearningSource.ANSWERED_CLUSTER, correction__isnull=True, feedback__isnull=True),
                name="learning_source_matches_pointer",
            ),
            # Reviewed items say when; pending ones have not been reviewed.
            models.CheckConstraint(
                condition=Q(status=LearningStatus.PENDING, reviewed_at__isnull=True)
                | Q(status__in=REVIEWED, reviewed_at__isnull=False),
                name="learning_reviewed_has_time",
            ),
            models.CheckConstraint(
                condition=~Q(status__in=[LearningStatus.APPROVED, LearningStatus.APPLIED]) | ~Q(approved_answer=""),
                name="learning_approved_has_answer",
            ),
            models.UniqueConstraint(
                fields=["cluster", "cluster_answer_version"],
                name="learning_once_per_cluster_answer",
                condition=Q(cluster__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source}: {self.question[:60] or '(no question)'}"


class KnowledgeSource(models.TextChoices):
    MANUAL = "manual"
    IMPORT = "import"
    CORRECTION = "correction"
    LOW_RATING = "low_rating"
    ANSWERED_CLUSTER = "answered_cluster"


class KnowledgeEntry(EmbeddingWork):
    """An approved answer to a question, which the answer lookup returns for look-alike questions.

    The question is what gets embedded (a new question is compared with questions, not answers);
    full-text search reads both. ``key`` is an optional name, unique per tenant, that an import
    uses to update an entry instead of adding a second one. ``version`` counts the entry's
    changes; each one is kept in ``KnowledgeEntryVersion``. An inactive entry is kept, with its
    history, but never searched or returned."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=200, blank=True, default="")
    question = models.TextField()
    answer = models.TextField()
    tags = ArrayField(models.CharField(max_length=50), default=list, blank=True)
    source = models.CharField(max_length=20, choices=KnowledgeSource.choices, default=KnowledgeSource.MANUAL)
    active = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1)
    updated_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        verbose_name_plural = "knowledge entries"
        indexes = [
            models.Index(fields=["tenant", "-updated_at", "-id"], name="knowledge_tenant_updated"),
            models.Index(fields=["tenant", "source"], name="knowledge_tenant_source"),
            models.Index(fields=["created_at"], name="kb_embedding_pending", condition=Q(embedding_state="pending")),
            models.Index(
                fields=["embedding_claimed_at"], name="kb_embedding_claimed", condition=Q(embedding_state="processing")
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="knowledge_unique_key", condition=~Q(key="")),
            models.CheckConstraint(condition=~Q(question=""), name="knowledge_question_present"),
            models.CheckConstraint(condition=~Q(answer=""), name="knowledge_answer_present"),
            _choices_check("source", KnowledgeSource, "knowledge_source_valid"),
            _choices_check("embedding_state", EmbeddingState, "knowledge_embedding_state_valid"),
        ]

    def __str__(self) -> str:
        return self.question[:80]


class KnowledgeEntryVersion(models.Model):
    """One state of an entry, written by every change (the first version included), with who made
    it and why: the entry's history, and what a reviewer compares an edit with."""

    id = models.BigAutoField(primary_key=True)
    entry = models.ForeignKey(KnowledgeEntry, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    question = models.TextField()
    answer = models.TextField()
    tags = ArrayField(models.CharField(max_length=50), default=list, blank=True)
    active = models.BooleanField()
    changed_by = models.CharField(max_length=200, blank=True, default="")
    # Why it changed ("created", "edited", "applied learning item …", "imported").
    change = models.CharField(max_length=200, blank=True, default="")
    learning_item = models.ForeignKey(LearningItem, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entry", "version"], name="knowledge_version_once")]

    def __str__(self) -> str:
        return f"v{self.version}"


class KnowledgeEmbedding(ItemEmbedding):
    """The vector of an entry's question in one embedding space (HNSW per space, like messages)."""

    # Looked up through kb_embedding_once_per_space (item first): no index of its own.
    item = models.ForeignKey(KnowledgeEntry, on_delete=models.CASCADE, related_name="embeddings", db_index=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "space"], name="kb_embedding_once_per_space")]
        indexes = [models.Index(fields=["tenant", "space"], name="kb_embedding_tenant_space")]

    def __str__(self) -> str:
        return f"{self.item_id} in {self.space_id}"


class LookupDecision(models.TextChoices):
    ANSWER = "answer"
    SUGGEST = "suggest"
    NO_MATCH = "no_match"


class KnowledgeLookupDay(models.Model):
    """Answer lookups of one tenant on one day, by decision: the hit rate's durable counters.
    One row per (tenant, day), bumped by an upsert with each lookup."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    day = models.DateField()
    answered = models.PositiveIntegerField(default=0)
    suggested = models.PositiveIntegerField(default=0)
    unmatched = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="knowledge_lookup_day_once")]

    def __str__(self) -> str:
        return f"{self.day}: {self.answered}/{self.suggested}/{self.unmatched}"
