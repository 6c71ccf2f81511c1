"""Output of the clusters API (input is validated by ``clustering.payloads``).

The serializers below document every response shape in OpenAPI. Small answers (an action's log,
a message's cluster, the stats) are rendered through them; cluster rows and member rows, which
come by the hundred, are the selectors' rows as they are (``cluster_body`` for one cluster): DRF's
per-field ``to_representation`` was three quarters of a 100-cluster list's time, and orjson
renders UUIDs and datetimes exactly as DRF does (``…Z``). tests/clustering/test_cluster_api.py
checks that the rows keep the documented keys.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from clustering.models import Cluster, ClusterActionKind, ClusterStatus, DeliveryKind, DeliveryStatus, JoinMethod
from clustering.selectors import CLUSTER_FIELDS
from convo.api.pagination import keyset_page_serializer


# Enum fields with their own component names: left to drf-spectacular, a second enum under the
# name ``status`` (or ``kind``) would rename other apps' enums in the schema.
@extend_schema_field({"type": "string", "enum": ClusterStatus.values}, component_name="ClusterStatusEnum")
class ClusterStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=ClusterStatus.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": JoinMethod.values}, component_name="ClusterJoinMethodEnum")
class JoinMethodField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=JoinMethod.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": ClusterActionKind.values}, component_name="ClusterActionEnum")
class ClusterActionField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=ClusterActionKind.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": DeliveryStatus.values}, component_name="ClusterDeliveryStatusEnum")
class MemberDeliveryStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=DeliveryStatus.choices, **kwargs)


@extend_schema_field({"type": "string", "enum": DeliveryKind.values}, component_name="ClusterDeliveryKindEnum")
class MemberDeliveryKindField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=DeliveryKind.choices, **kwargs)


class ClusterSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    label = serializers.CharField()  # type: ignore[assignment]
    status = ClusterStatusField(
        help_text="open: takes new members; answered: new members get the answer as a "
        "suggestion; archived: takes no new members."
    )
    size = serializers.IntegerField(help_text="Members, always equal to the count of its messages.")
    representative_id = serializers.UUIDField(allow_null=True, help_text="The member whose text stands for it.")
    representative_text = serializers.CharField()
    answer = serializers.CharField(help_text="Empty until answered; kept when reopened.")
    answer_version = serializers.IntegerField(help_text="Bumped by every answer.")
    answered_by = serializers.CharField()
    answered_at = serializers.DateTimeField(allow_null=True)
    merged_into_id = serializers.UUIDField(allow_null=True, help_text="Set on a cluster merged into another.")
    first_message_at = serializers.DateTimeField(allow_null=True)
    last_message_at = serializers.DateTimeField(allow_null=True, help_text="Null only for an emptied cluster.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def cluster_body(cluster: Cluster) -> dict[str, Any]:
    """One cluster as the API shows it (``ClusterSerializer``), from a model instance."""
    return {name: getattr(cluster, name) for name in CLUSTER_FIELDS}


class ClusterPreviewSerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    text = serializers.CharField()
    sender_name = serializers.CharField()
    joined_at = serializers.DateTimeField()


class ClusterListItemSerializer(ClusterSerializer):
    recent_messages = ClusterPreviewSerializer(
        many=True, help_text="The newest CLUSTER_LIST_PREVIEW_MESSAGES members, newest first."
    )


ClusterPageSerializer = keyset_page_serializer(ClusterListItemSerializer, "ClusterPageSerializer")


class ClusterMemberDeliverySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    cluster_id = serializers.UUIDField(help_text="The cluster whose answer it carries.")
    kind = MemberDeliveryKindField(
        help_text="answer: the cluster was answered; suggestion: the message joined an answered cluster."
    )
    status = MemberDeliveryStatusField()
    answer_version = serializers.IntegerField()


class ClusterMemberSerializer(serializers.Serializer):
    message_id = serializers.UUIDField()
    similarity = serializers.FloatField(help_text="Cosine similarity to the cluster when it joined.")
    method = JoinMethodField()
    answer_suggested = serializers.BooleanField(help_text="It joined while the cluster was answered.")
    joined_at = serializers.DateTimeField()
    conversation_id = serializers.UUIDField()
    user_id = serializers.CharField()
    channel = serializers.CharField()
    sender_name = serializers.CharField()
    sender_avatar_url = serializers.CharField()
    text = serializers.CharField()
    sent_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    delivery = ClusterMemberDeliverySerializer(
        allow_null=True, help_text="The message's latest answer delivery (of any cluster), if any."
    )


ClusterMemberPageSerializer = keyset_page_serializer(ClusterMemberSerializer, "ClusterMemberPageSerializer")


class ClusterDetailSerializer(ClusterSerializer):
    messages = ClusterMemberSerializer(many=True, help_text="The newest CLUSTER_DETAIL_MESSAGES members.")
    messages_truncated = serializers.BooleanField(help_text="More members than shown: page through /messages.")


class ClusterMoveSerializer(serializers.Serializer):
    """The answer of split and remove-message: where the messages went, and what is left."""

    cluster = ClusterSerializer(help_text="The cluster the messages are now in (split: the new cluster).")
    source = ClusterSerializer(help_text="The cluster they left, after the move.")  # type: ignore[assignment]


class ClusterActionLogSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    cluster_id = serializers.UUIDField()
    action = ClusterActionField()
    actor = serializers.CharField(help_text='"api-key:<key prefix>", "user:<username>" or "system".')
    before = serializers.DictField()
    after = serializers.DictField()
    created_at = serializers.DateTimeField()


ClusterActionPageSerializer = keyset_page_serializer(ClusterActionLogSerializer, "ClusterActionPageSerializer")


class MessageDeliverySerializer(ClusterMemberDeliverySerializer):
    answer = serializers.CharField()
    attempts = serializers.IntegerField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class MessageClusterSerializer(serializers.Serializer):
    message_id = serializers.UUIDField(source="message.pk")
    embedding_state = serializers.CharField(
        source="message.embedding_state", help_text="A message is clustered once embedded (`done`)."
    )
    cluster = ClusterSerializer(allow_null=True, help_text="Null while the message is in no cluster.")
    similarity = serializers.FloatField(source="membership.similarity", allow_null=True, default=None)
    method = JoinMethodField(source="membership.method", allow_null=True, default=None)
    joined_at = serializers.DateTimeField(source="membership.joined_at", allow_null=True, default=None)
    answer_suggested = serializers.BooleanField(source="membership.answer_suggested", default=False)
    suggested_answer = serializers.CharField(
        allow_null=True, help_text="The cluster's answer, when the message met it by joining it answered."
    )
    deliveries = MessageDeliverySerializer(many=True, help_text="Every delivery made for the message, newest first.")


class ClusteringStatsClustersSerializer(serializers.Serializer):
    open = serializers.IntegerField()
    answered = serializers.IntegerField()
    archived = serializers.IntegerField()
    total = serializers.IntegerField()


class ClusteringStatsSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    since = serializers.DateTimeField()
    clusters = ClusteringStatsClustersSerializer(source="*", help_text="Clusters by status, now.")
    messages_clustered = serializers.IntegerField(help_text="Messages put in a cluster in the window (lookups).")
    new_clusters = serializers.IntegerField(help_text="Of those, the ones that started a cluster.")
    answered_joins = serializers.IntegerField(
        help_text="Of those, the ones that joined an answered cluster and were sent its answer (hits)."
    )
    hit_rate = serializers.FloatField(
        allow_null=True, help_text="answered_joins / messages_clustered: the semantic response-cache hit rate."
    )
