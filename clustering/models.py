"""Clusters of look-alike inbound messages, their membership, moderator actions and answers.

A cluster lives in one embedding space (its vectors are only ever compared with vectors of that
space). It keeps ``vector_sum``, the sum of its members' vectors, rather than their mean: cosine
similarity does not depend on length, so the sum ranks exactly like the centroid, and a join is
one vector addition (``vector_sum + v``) with no read-modify-write of floats. The sum and
``size`` are only ever changed by ``clustering.services`` under the tenant's clustering lock,
and recomputed from the members on remove, merge and split.

Every write of a cluster row takes a new ``revision`` from one sequence (a database trigger,
migration 0002), so a worker's in-process copy of a tenant's clusters catches up by reading the
rows above the highest revision it has seen (``clustering/services/matrix.py``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now
from pgvector.django import VectorField

from conversations.models import EmbeddingSpace, Message, Tenant
from convo.ids import uuid7


class ClusterStatus(models.TextChoices):
    OPEN = "open"
    ANSWERED = "answered"
    ARCHIVED = "archived"


# Statuses whose clusters take new members.
JOINABLE = (ClusterStatus.OPEN, ClusterStatus.ANSWERED)


class Cluster(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="clusters", db_index=False)
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, related_name="+", editable=False)
    label = models.CharField(max_length=200, blank=True, default="")
    # The member whose text stands for the cluster (its founder until a moderator picks another).
    representative = models.ForeignKey(
        Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    representative_text = models.TextField(blank=True, default="", editable=False)
    vector_sum = VectorField(editable=False)
    size = models.PositiveIntegerField(default=0, editable=False)
    first_message_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_message_at = models.DateTimeField(null=True, blank=True, editable=False)
    status = models.CharField(max_length=10, choices=ClusterStatus.choices, default=ClusterStatus.OPEN, editable=False)
    answer = models.TextField(blank=True, default="", editable=False)
    # Bumped by every answer: a delivery is unique per (message, cluster, answer_version).
    answer_version = models.PositiveIntegerField(default=0, editable=False)
    answered_by = models.CharField(max_length=200, blank=True, default="", editable=False)
    answered_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set on a cluster merged into another (it is then archived and empty).
    merged_into = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)
    # Set by a trigger on every INSERT and UPDATE from the sequence clustering_cluster_revision
    # (whatever the ORM sends): the order in which a tenant's cluster changes were committed,
    # since every writer holds the tenant's clustering lock until it commits.
    revision = models.BigIntegerField(db_default=0, editable=False)

    class Meta:
        indexes = [
            # The moderator's lists: biggest first and most recent first, per status.
            models.Index(fields=["tenant", "status", "-size", "id"], name="cluster_tenant_status_size"),
            # Recency with emptied clusters (no last message) last, as the API sorts.
            models.Index(
                F("tenant"),
                F("status"),
                F("last_message_at").desc(nulls_last=True),
                F("id"),
                name="cluster_tenant_status_recent",
            ),
            models.Index(fields=["tenant", "-size", "id"], name="cluster_tenant_size"),
            models.Index(
                F("tenant"), F("last_message_at").desc(nulls_last=True), F("id"), name="cluster_tenant_recent"
            ),
            # Assignment's candidate set: the joinable clusters of a tenant in a space.
            models.Index(
                fields=["tenant", "space"], name="cluster_joinable", condition=Q(status__in=["open", "answered"])
            ),
            # A worker's catch-up read: the tenant's rows in a space changed since a revision.
            models.Index(fields=["tenant", "space", "revision"], name="cluster_space_revision"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ClusterStatus.values), name="cluster_status_valid"),
            models.CheckConstraint(
                condition=~Q(status=ClusterStatus.ANSWERED) | ~Q(answer=""), name="cluster_answered_has_answer"
            ),
        ]

    def __str__(self) -> str:
        return self.label or self.representative_text[:80] or str(self.id)


class TenantCentre(models.Model):
    """The running mean of a tenant's inbound message vectors in one space, and the running mean
    distance from it. Assignment measures similarity between vectors centred on this mean: it
    removes what all of a tenant's messages share (docs/clustering.md)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.CASCADE, related_name="+")
    vector_sum = VectorField()
    messages = models.BigIntegerField(default=0)
    # Sum over messages of |x - mean| (the mean as it was when x arrived).
    centred_norm_sum = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "space"], name="centre_once_per_tenant_space")]

    def __str__(self) -> str:
        return f"centre of {self.tenant_id} in {self.space_id} ({self.messages} messages)"


class JoinMethod(models.TextChoices):
    FOUNDER = "founder"  # started the cluster
    EXACT = "exact"  # the same normalised text as a member
    VECTOR = "vector"  # similar meaning
    TEXT = "text"  # a short message, similar wording
    MODERATOR = "moderator"  # moved by a moderator (split, merge, re-home)


class ClusterMembership(models.Model):
    """A message's place in a cluster: at most one per message."""

    message = models.OneToOneField(
        Message, on_delete=models.CASCADE, primary_key=True, related_name="cluster_membership"
    )
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    # Cosine similarity to the cluster when the message joined (1.0 for a founder or exact copy).
    similarity = models.FloatField()
    method = models.CharField(max_length=10, choices=JoinMethod.choices)
    # sha256 of the normalised text (hex, 32 chars): exact duplicates are found by index, not vector.
    text_key = models.CharField(max_length=32)
    # Joined while the cluster was answered: the answer was suggested to it (the response-cache hit).
    answer_suggested = models.BooleanField(default=False)
    joined_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [
            # Newest members first; one batch shares a join time, so the message id breaks ties.
            models.Index(fields=["cluster", "-joined_at", "-message"], name="membership_cluster_joined"),
            models.Index(fields=["tenant", "text_key"], name="membership_tenant_text"),
            models.Index(fields=["tenant", "-joined_at"], name="membership_tenant_joined"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} in {self.cluster_id}"


class ClusterActionKind(models.TextChoices):
    ANSWER = "answer"
    REMOVE_MESSAGE = "remove_message"
    MERGE = "merge"
    SPLIT = "split"
    REOPEN = "reopen"
    ARCHIVE = "archive"
    RELABEL = "relabel"


class ClusterAction(models.Model):
    """The audit log of moderator actions: who did what to which cluster, with before and after."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="actions", db_index=False)
    action = models.CharField(max_length=20, choices=ClusterActionKind.choices)
    # "user:<username>" for staff, "api-key:<prefix>" for API clients, "system" for jobs.
    actor = models.CharField(max_length=200)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    before = models.JSONField(default=dict)
    after = models.JSONField(default=dict)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [
            models.Index(fields=["cluster", "-created_at"], name="cluster_action_cluster"),
            models.Index(fields=["tenant", "-created_at"], name="cluster_action_tenant"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(action__in=ClusterActionKind.values), name="cluster_action_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor}"


class ClusteringPolicy(models.Model):
    """A tenant's own clustering thresholds; an empty field falls back to the setting."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="clustering_policy")
    similarity_threshold = models.FloatField(null=True, blank=True)
    warmup_similarity_threshold = models.FloatField(null=True, blank=True)
    text_similarity_threshold = models.FloatField(null=True, blank=True)
    short_message_chars = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "clustering policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(similarity_threshold__isnull=True)
                | Q(similarity_threshold__gte=0, similarity_threshold__lte=1),
                name="policy_similarity_in_range",
            ),
            models.CheckConstraint(
                condition=Q(warmup_similarity_threshold__isnull=True)
                | Q(warmup_similarity_threshold__gte=0, warmup_similarity_threshold__lte=1),
                name="policy_warmup_similarity_in_range",
            ),
            models.CheckConstraint(
                condition=Q(text_similarity_threshold__isnull=True)
                | Q(text_similarity_threshold__gte=0, text_similarity_threshold__lte=100),
                name="policy_text_similarity_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"clustering policy of {self.tenant}"


class DeliveryKind(models.TextChoices):
    ANSWER = "answer"  # a moderator answered the cluster the message is in
    SUGGESTION = "suggestion"  # the message joined a cluster that was already answered


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # waiting for the webhook, or for the chat backend to pull it
    DELIVERED = "delivered"
    FAILED = "failed"  # the webhook kept failing; retry from the admin or the API


class AnswerDelivery(models.Model):
    """One answer for one message, to be delivered to the tenant's chat backend.

    Unique per (message, cluster, answer_version): fanning an answer out twice, or a message
    joining twice, never makes a second delivery. The id is sent as the webhook's idempotency key.
    """

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="answer_deliveries", db_index=False)
    answer_version = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, choices=DeliveryKind.choices)
    answer = models.TextField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_default=Now())
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        verbose_name_plural = "answer deliveries"
        constraints = [
            models.UniqueConstraint(fields=["message", "cluster", "answer_version"], name="delivery_once"),
            models.CheckConstraint(condition=Q(status__in=DeliveryStatus.values), name="delivery_status_valid"),
            models.CheckConstraint(condition=Q(kind__in=DeliveryKind.values), name="delivery_kind_valid"),
        ]
        indexes = [
            models.Index(fields=["tenant", "status", "created_at"], name="delivery_tenant_status"),
            models.Index(fields=["cluster", "status"], name="delivery_cluster_status"),
            # The sender's "next due delivery".
            models.Index(fields=["next_attempt_at"], name="delivery_due", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.message_id} ({self.status})"


class DeliveryEndpoint(models.Model):
    """Where a tenant's answers are pushed: a webhook signed with HMAC-SHA256 of its secret.
    A tenant without an active endpoint pulls its deliveries through the API."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="delivery_endpoint")
    url = models.URLField(max_length=2048)
    secret = models.CharField(max_length=128)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    def __str__(self) -> str:
        return f"{self.url} ({'active' if self.is_active else 'paused'})"
