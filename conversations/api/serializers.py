"""Output and filter serializers. Input is validated by the pydantic payloads (payloads.py)."""

from __future__ import annotations

from typing import Any

import orjson
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from conversations.models import Channel, Conversation, ConversationStatus, Message
from conversations.selectors import ConversationFilters
from conversations.services.results import Accepted, ItemResult


class AcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    state = serializers.CharField(help_text="`pending` until the item is embedded.")
    replayed = serializers.BooleanField(help_text="True when this request repeated an earlier one.")


class AcceptedMessageSerializer(AcceptedSerializer):
    conversation_id = serializers.UUIDField()


class AcceptedConversationSerializer(AcceptedSerializer):
    message_ids = serializers.ListField(child=serializers.UUIDField())


class ItemErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))  # type: ignore[assignment]


class BatchItemSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    id = serializers.UUIDField(required=False)
    state = serializers.CharField(required=False)
    replayed = serializers.BooleanField(required=False)
    error = ItemErrorSerializer(required=False)


class BatchResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = BatchItemSerializer(many=True)


def accepted_body(result: Accepted, *, kind: str) -> dict[str, Any]:
    """The JSON of one accepted item: id, state and what else its kind carries."""
    body: dict[str, Any] = {"id": str(result.id), "state": "pending", "replayed": result.replayed}
    if kind == "message":
        body["conversation_id"] = str(result.conversation_id)
    elif kind == "conversation":
        body["message_ids"] = [str(message_id) for message_id in result.message_ids]
    return body


def batch_body(results: list[ItemResult | dict[str, list[str]]], *, kind: str) -> dict[str, Any]:
    """Per-item results in request order; a dict item is a validation failure (field errors)."""
    items: list[dict[str, Any]] = []
    accepted = 0
    for index, result in enumerate(results):
        if isinstance(result, Accepted):
            accepted += 1
            items.append({"index": index, **accepted_body(result, kind=kind)})
        elif isinstance(result, dict):
            items.append({"index": index, "error": {"code": "invalid", "message": "Invalid fields.", "fields": result}})
        else:
            error = {"code": result.code, "message": result.message, "fields": result.fields}
            items.append({"index": index, "error": error})
    return {"accepted": accepted, "rejected": len(results) - accepted, "results": items}


@extend_schema_field({"type": ["object", "null"]})
class _ObjectOrNull(serializers.JSONField):
    """A JSON object or null. DRF's field is described as ``oneOf: [{}, null]``, which a null
    matches twice, so no validator accepts it."""


class MessageSerializer(serializers.ModelSerializer):
    # Not a URLField: empty when the platform sent none, which "format: uri" would not admit.
    sender_avatar_url = serializers.CharField(read_only=True, help_text="An http(s) URL, or empty.")
    raw_payload = _ObjectOrNull(read_only=True, help_text="The platform's own message, as sent; null if none.")

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "role",
            "text",
            "sender_name",
            "sender_avatar_url",
            "external_id",
            "raw_payload",
            "sent_at",
            "created_at",
            "embedding_state",
        ]
        read_only_fields = fields

    conversation_id = serializers.UUIDField(read_only=True)


class ConversationSerializer(serializers.ModelSerializer):
    user_id = serializers.CharField(source="external_user_id", read_only=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "external_id",
            "user_id",
            "channel",
            "session_id",
            "status",
            "summary",
            "transcript",
            "metadata",
            "created_at",
            "updated_at",
            "last_message_at",
            "embedding_state",
        ]
        read_only_fields = fields


class ConversationDetailSerializer(ConversationSerializer):
    messages = MessageSerializer(many=True, read_only=True, source="first_messages")
    message_count = serializers.IntegerField(read_only=True)
    messages_truncated = serializers.BooleanField(read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "message_count", "messages_truncated", "messages"]
        read_only_fields = fields


class ConversationFilterSerializer(serializers.Serializer):
    user_id = serializers.CharField(required=False, max_length=255)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    status = serializers.ChoiceField(choices=ConversationStatus.choices, required=False)
    session_id = serializers.CharField(required=False, max_length=255)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    metadata = serializers.CharField(
        required=False, help_text='A JSON object the metadata must contain, e.g. {"shop_id": 7}.'
    )
    page_size = serializers.IntegerField(required=False, help_text="Items per page.")
    cursor = serializers.CharField(required=False, help_text="The cursor of the page to fetch.")

    def validate_metadata(self, value: str) -> dict[str, Any]:
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise serializers.ValidationError("Must be a JSON object.") from None
        if not isinstance(parsed, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        if "\\u0000" in value or "\x00" in value:
            raise serializers.ValidationError("Must not contain NUL characters.")
        return parsed

    def to_filters(self) -> ConversationFilters:
        data = dict(self.validated_data)
        data.pop("page_size", None)
        data.pop("cursor", None)
        return ConversationFilters(**data)


class UserStatsQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=3650, default=30)


class UserStatsSerializer(serializers.Serializer):
    user_id = serializers.CharField()
    days = serializers.IntegerField()
    total = serializers.IntegerField()
    active = serializers.IntegerField()
    with_embeddings = serializers.IntegerField()
    handoff_complete = serializers.IntegerField()
    avg_per_day = serializers.FloatField()
