"""Output and filter serializers of the ops endpoints (they document the OpenAPI schema)."""

from __future__ import annotations

from rest_framework import serializers


class TimingStatsSerializer(serializers.Serializer):
    operation = serializers.CharField()
    window_minutes = serializers.IntegerField(help_text="The last N minutes, the current one included.")
    outcome = serializers.ChoiceField(choices=["ok", "error"])
    count = serializers.IntegerField()
    p50_ms = serializers.FloatField(allow_null=True)
    p95_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True)


class QueueStatsSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="message, conversation or knowledge.")
    pending = serializers.IntegerField()
    processing = serializers.IntegerField()
    failed = serializers.IntegerField(allow_null=True, help_text="null when the count ran out of time.")
    oldest_pending_seconds = serializers.FloatField(allow_null=True)


class CacheStatsSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    hot_hits = serializers.IntegerField()
    durable_hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(allow_null=True)


class PoolStatsSerializer(serializers.Serializer):
    min_size = serializers.IntegerField()
    max_size = serializers.IntegerField()
    size = serializers.IntegerField(help_text="Connections open.")
    idle = serializers.IntegerField(help_text="Connections open and free.")
    waiting = serializers.IntegerField(help_text="Requests waiting for a connection.")


class TableSizeSerializer(serializers.Serializer):
    table = serializers.CharField()
    total_bytes = serializers.IntegerField()
    table_bytes = serializers.IntegerField()
    indexes_bytes = serializers.IntegerField()
    rows_estimate = serializers.IntegerField()


class IndexUsageSerializer(serializers.Serializer):
    index = serializers.CharField()
    table = serializers.CharField()
    bytes = serializers.IntegerField()
    scans = serializers.IntegerField()
    tuples_read = serializers.IntegerField()


class StorageSerializer(serializers.Serializer):
    tables = TableSizeSerializer(many=True)
    indexes = IndexUsageSerializer(many=True, help_text="The largest indexes of convo's tables.")


class OpsStatsSerializer(serializers.Serializer):
    generated_at = serializers.DateTimeField()
    timings_store = serializers.CharField(help_text="Where the timings of every process meet: redis or database.")
    timings_error = serializers.CharField(allow_null=True, help_text="Why the timings are missing (store down).")
    timings = TimingStatsSerializer(many=True)
    queue = QueueStatsSerializer(many=True)
    embedding_cache = CacheStatsSerializer(many=True, help_text="Today (days=1) and the last 7 days, UTC.")
    connection_pool = PoolStatsSerializer(allow_null=True, help_text="The answering process's pool; null without one.")
    storage = StorageSerializer()


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    rule = serializers.CharField()
    raised_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    value = serializers.FloatField()
    threshold = serializers.FloatField()
    message = serializers.CharField()


class AlertFilterSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["open", "resolved", "all"], default="all", required=False)
    limit = serializers.IntegerField(min_value=1, max_value=500, default=100, required=False)
