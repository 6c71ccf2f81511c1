"""Output of the feedback API (input is validated by ``feedback.payloads``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from conversations.models import Channel
from convo.api.pagination import keyset_page_serializer
from feedback.models import (
    THUMBS_UP,
    Feedback,
    FeedbackKind,
    KnowledgeEntry,
    KnowledgeEntryVersion,
    KnowledgeSource,
    LearningItem,
    LearningSource,
    LearningStatus,
    LookupDecision,
    OwnerCorrection,
    ResponseAnalytics,
    VoiceTranscript,
)


# Enums with their own component names: left to drf-spectacular, another app's ``status`` or
# ``kind`` enum would be renamed in the schema.
@extend_schema_field({"type": "string", "enum": FeedbackKind.values}, component_name="FeedbackKindEnum")
class FeedbackKindField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=FeedbackKind.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": LearningStatus.values}, component_name="LearningStatusEnum")
class LearningStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=LearningStatus.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": LearningSource.values}, component_name="LearningSourceEnum")
class LearningSourceField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=LearningSource.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": Channel.values}, component_name="FeedbackSourceEnum")
class FeedbackSourceField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Channel.choices, **kwargs)


def _queued(record: Feedback | OwnerCorrection) -> LearningItem | None:
    """The learning item a record queued: lists select it with the record (``select_related``),
    and the service that made both leaves it cached on the record."""
    try:
        return record.learning_item
    except LearningItem.DoesNotExist:
        return None


class FeedbackSerializer(serializers.ModelSerializer):
    conversation_id = serializers.UUIDField()
    message_id = serializers.UUIDField(allow_null=True)
    kind = FeedbackKindField()
    thumbs = serializers.SerializerMethodField(help_text="`up` or `down` for thumbs feedback, else null.")
    rating = serializers.SerializerMethodField(help_text="1 to 5 for a rating, else null.")
    source = FeedbackSourceField(help_text="The channel the feedback came from.")  # type: ignore[assignment]
    low = serializers.SerializerMethodField(help_text="Whether it queued a learning item (a low rating).")

    class Meta:
        model = Feedback
        fields = [
            "id",
            "conversation_id",
            "message_id",
            "kind",
            "thumbs",
            "rating",
            "comment",
            "source",
            "low",
            "created_at",
        ]

    @extend_schema_field({"type": ["string", "null"], "enum": ["up", "down", None]})
    def get_thumbs(self, obj: Feedback) -> str | None:
        if obj.kind != FeedbackKind.THUMBS:
            return None
        return "up" if obj.value == THUMBS_UP else "down"

    def get_rating(self, obj: Feedback) -> int | None:
        return obj.value if obj.kind == FeedbackKind.RATING else None

    def get_low(self, obj: Feedback) -> bool:
        return _queued(obj) is not None


class CorrectionSerializer(serializers.ModelSerializer):
    conversation_id = serializers.UUIDField()
    message_id = serializers.UUIDField(allow_null=True)
    learning_item_id = serializers.SerializerMethodField(help_text="The learning item it queued.")

    class Meta:
        model = OwnerCorrection
        fields = [
            "id",
            "conversation_id",
            "message_id",
            "original_response",
            "corrected_text",
            "reason",
            "corrected_by",
            "learning_item_id",
            "created_at",
        ]

    @extend_schema_field({"type": ["string", "null"], "format": "uuid"})
    def get_learning_item_id(self, obj: OwnerCorrection) -> str | None:
        item = _queued(obj)
        return str(item.pk) if item is not None else None


class AnalyticsSerializer(serializers.ModelSerializer):
    conversation_id = serializers.UUIDField()
    message_id = serializers.UUIDField(allow_null=True)
    cost = serializers.DecimalField(max_digits=14, decimal_places=6, coerce_to_string=True)

    class Meta:
        model = ResponseAnalytics
        fields = [
            "id",
            "conversation_id",
            "message_id",
            "latency_ms",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "from_cache",
            "created_at",
        ]


class TranscriptSerializer(serializers.ModelSerializer):
    conversation_id = serializers.UUIDField()
    duration_seconds = serializers.DecimalField(max_digits=9, decimal_places=3, coerce_to_string=True)
    # Not a URLField: empty when none was given, which "format: uri" would not admit.
    audio_url = serializers.CharField(help_text="An http(s) URL, or empty.")

    class Meta:
        model = VoiceTranscript
        fields = ["id", "conversation_id", "text", "language", "duration_seconds", "audio_url", "created_at"]


class LearningItemSerializer(serializers.ModelSerializer):
    source = LearningSourceField()  # type: ignore[assignment]
    status = LearningStatusField(
        help_text="pending: awaiting review; approved: `approved_answer` is to become knowledge; rejected; "
        "applied: taken into the knowledge base."
    )
    correction_id = serializers.UUIDField(allow_null=True)
    feedback_id = serializers.UUIDField(allow_null=True)
    cluster_id = serializers.UUIDField(allow_null=True)
    entry_id = serializers.UUIDField(allow_null=True, help_text="The knowledge entry it created or updated.")

    class Meta:
        model = LearningItem
        fields = [
            "id",
            "source",
            "correction_id",
            "feedback_id",
            "cluster_id",
            "cluster_answer_version",
            "question",
            "original_answer",
            "proposed_answer",
            "status",
            "approved_answer",
            "reviewed_by",
            "reviewed_at",
            "review_note",
            "entry_id",
            "created_at",
        ]


FeedbackPageSerializer = keyset_page_serializer(FeedbackSerializer, "FeedbackPageSerializer")
CorrectionPageSerializer = keyset_page_serializer(CorrectionSerializer, "CorrectionPageSerializer")
AnalyticsPageSerializer = keyset_page_serializer(AnalyticsSerializer, "AnalyticsPageSerializer")
TranscriptPageSerializer = keyset_page_serializer(TranscriptSerializer, "TranscriptPageSerializer")
LearningItemPageSerializer = keyset_page_serializer(LearningItemSerializer, "LearningItemPageSerializer")


class KnowledgeCountsSerializer(serializers.Serializer):
    entries = serializers.IntegerField(source="knowledge_entries", help_text="Knowledge entries.")
    active = serializers.IntegerField(source="knowledge_active", help_text="Active knowledge entries.")


class LookupCountsSerializer(serializers.Serializer):
    days = serializers.IntegerField(help_text="The window counted, in days (today included).")
    answered = serializers.IntegerField()
    suggested = serializers.IntegerField()
    unmatched = serializers.IntegerField()
    hit_rate = serializers.FloatField(
        allow_null=True, help_text="answered / all lookups in the window; null when there were none."
    )


class FeedbackRatingsSerializer(serializers.Serializer):
    total = serializers.IntegerField(source="feedback_total")
    ratings = serializers.DictField(child=serializers.IntegerField(), help_text='Ratings by value, "1" to "5".')
    thumbs = serializers.DictField(child=serializers.IntegerField(), help_text="Thumbs `up` and `down`.")
    by_channel = serializers.DictField(child=serializers.IntegerField(), help_text="Feedback by source channel.")


class FeedbackStatsSerializer(serializers.Serializer):
    feedback = FeedbackRatingsSerializer(source="*")
    corrections = serializers.IntegerField(help_text="Owner corrections.")
    learning_items = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="The learning queue by status (pending, approved, rejected, applied).",
    )
    knowledge = KnowledgeCountsSerializer(source="*")
    lookups = LookupCountsSerializer()


# --- the knowledge base ---------------------------------------------------------------------------


@extend_schema_field({"type": "string", "enum": KnowledgeSource.values}, component_name="KnowledgeSourceEnum")
class KnowledgeSourceField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=KnowledgeSource.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": LookupDecision.values}, component_name="LookupDecisionEnum")
class LookupDecisionField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=LookupDecision.choices, **kwargs)


class KnowledgeEntrySerializer(serializers.ModelSerializer):
    source = KnowledgeSourceField()  # type: ignore[assignment]
    tags = serializers.ListField(child=serializers.CharField())
    embedding_state = serializers.CharField(
        help_text="pending until the worker has embedded the question (it is found by words meanwhile)."
    )

    class Meta:
        model = KnowledgeEntry
        fields = [
            "id",
            "key",
            "question",
            "answer",
            "tags",
            "source",
            "active",
            "version",
            "updated_by",
            "embedding_state",
            "created_at",
            "updated_at",
        ]


KnowledgeEntryPageSerializer = keyset_page_serializer(KnowledgeEntrySerializer, "KnowledgeEntryPageSerializer")


class KnowledgeVersionSerializer(serializers.ModelSerializer):
    tags = serializers.ListField(child=serializers.CharField())
    learning_item_id = serializers.UUIDField(allow_null=True)

    class Meta:
        model = KnowledgeEntryVersion
        fields = [
            "version",
            "question",
            "answer",
            "tags",
            "active",
            "changed_by",
            "change",
            "learning_item_id",
            "created_at",
        ]


class KnowledgeHitSerializer(serializers.Serializer):
    entry = KnowledgeEntrySerializer()
    similarity = serializers.FloatField(
        allow_null=True, help_text="Cosine similarity of the questions; null when found by words alone."
    )
    score = serializers.FloatField(help_text="What the hits are ordered by (similarity, text rank or fused rank).")


class KnowledgeSearchResultSerializer(serializers.Serializer):
    results = KnowledgeHitSerializer(many=True, source="hits")
    strategy = serializers.CharField()


class AnswerLookupSerializer(serializers.Serializer):
    decision = LookupDecisionField(
        help_text="answer: confident enough to send; suggest: show it to a human first; no_match: nothing near."
    )
    answer = serializers.CharField(allow_null=True, source="entry.answer", default=None)
    entry = KnowledgeEntrySerializer(allow_null=True)
    similarity = serializers.FloatField(help_text="The chosen entry's similarity to the question.")
    agreement = serializers.FloatField(help_text="The answer's share of the neighbours' votes.")
    candidates = KnowledgeHitSerializer(many=True)
