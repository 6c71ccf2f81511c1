"""Seed 001's two metric views as materialized views, each with the unique index that
``REFRESH MATERIALIZED VIEW CONCURRENTLY`` requires.

- ``conversation_metrics``: one row per UTC day, tenant and channel, over all time: conversations,
  messages, stored text bytes, embedding states, embedding lag, feedback by rating.
- ``performance_stats``: one row per UTC hour and tenant, over the last 7 days: conversations and
  messages stored, ingest batches and their sizes, embedding latency.

Both are created ``WITH NO DATA``, so this migration is instant on any database; the first refresh
(``manage.py convo_metrics_refresh`` or the schedules) fills them (metrics/services.py).

Embedding lag is ``conversations_messageembedding.created_at`` (when the vector was stored, by the
database's clock) minus ``conversations_message.created_at`` (when the message was acknowledged),
using each message's first vector, so a later model switch does not count as lag. An ingest batch
is one transaction, and every row of it has the same ``created_at`` (``now()`` is the transaction's
start), so a batch is a distinct (tenant, created_at) among messages.

Buckets are UTC whatever the refreshing session's time zone. BRIN indexes on ``created_at`` let the
five-minute refresh of ``performance_stats`` read only its 7-day window: rows arrive in time order,
so a BRIN index is a few pages and costs ingest next to nothing (a B-tree would cost every insert).

A later migration that changes a column these views read must drop and re-create them around it
(PostgreSQL refuses to alter a column a view depends on).
"""

from django.db import migrations

CONVERSATION_METRICS = """
CREATE MATERIALIZED VIEW conversation_metrics AS
WITH first_embedding AS (
    SELECT item_id, min(created_at) AS embedded_at
    FROM conversations_messageembedding
    GROUP BY item_id
),
conv AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, tenant_id, channel,
           count(*) AS conversations,
           sum(octet_length(summary) + octet_length(transcript)) AS conversation_bytes,
           count(*) FILTER (WHERE embedding_state = 'pending') AS conversations_pending,
           count(*) FILTER (WHERE embedding_state = 'done') AS conversations_done,
           count(*) FILTER (WHERE embedding_state = 'failed') AS conversations_failed
    FROM conversations_conversation
    GROUP BY 1, 2, 3
),
msg AS (
    SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day, m.tenant_id, c.channel,
           count(*) AS messages,
           sum(octet_length(m.text)) AS message_bytes,
           count(*) FILTER (WHERE m.embedding_state = 'pending') AS messages_pending,
           count(*) FILTER (WHERE m.embedding_state = 'processing') AS messages_processing,
           count(*) FILTER (WHERE m.embedding_state = 'done') AS messages_done,
           count(*) FILTER (WHERE m.embedding_state = 'failed') AS messages_failed,
           count(*) FILTER (WHERE m.embedding_state = 'skipped') AS messages_skipped,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM fe.embedded_at - m.created_at))
               AS embedding_lag_p50_seconds,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM fe.embedded_at - m.created_at))
               AS embedding_lag_p95_seconds
    FROM conversations_message m
    JOIN conversations_conversation c ON c.id = m.conversation_id
    LEFT JOIN first_embedding fe ON fe.item_id = m.id
    GROUP BY 1, 2, 3
),
fb AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, tenant_id, source AS channel,
           count(*) FILTER (WHERE kind = 'thumbs' AND value = 1) AS feedback_thumbs_up,
           count(*) FILTER (WHERE kind = 'thumbs' AND value = -1) AS feedback_thumbs_down,
           count(*) FILTER (WHERE kind = 'rating' AND value = 1) AS feedback_rating_1,
           count(*) FILTER (WHERE kind = 'rating' AND value = 2) AS feedback_rating_2,
           count(*) FILTER (WHERE kind = 'rating' AND value = 3) AS feedback_rating_3,
           count(*) FILTER (WHERE kind = 'rating' AND value = 4) AS feedback_rating_4,
           count(*) FILTER (WHERE kind = 'rating' AND value = 5) AS feedback_rating_5
    FROM feedback_feedback
    GROUP BY 1, 2, 3
),
keys AS (
    SELECT day, tenant_id, channel FROM conv
    UNION SELECT day, tenant_id, channel FROM msg
    UNION SELECT day, tenant_id, channel FROM fb
)
SELECT k.day, k.tenant_id, k.channel,
       coalesce(conv.conversations, 0)::bigint AS conversations,
       coalesce(msg.messages, 0)::bigint AS messages,
       coalesce(conv.conversation_bytes, 0)::bigint AS conversation_bytes,
       coalesce(msg.message_bytes, 0)::bigint AS message_bytes,
       coalesce(conv.conversations_pending, 0)::bigint AS conversations_pending,
       coalesce(conv.conversations_done, 0)::bigint AS conversations_done,
       coalesce(conv.conversations_failed, 0)::bigint AS conversations_failed,
       coalesce(msg.messages_pending, 0)::bigint AS messages_pending,
       coalesce(msg.messages_processing, 0)::bigint AS messages_processing,
       coalesce(msg.messages_done, 0)::bigint AS messages_done,
       coalesce(msg.messages_failed, 0)::bigint AS messages_failed,
       coalesce(msg.messages_skipped, 0)::bigint AS messages_skipped,
       msg.embedding_lag_p50_seconds::double precision AS embedding_lag_p50_seconds,
       msg.embedding_lag_p95_seconds::double precision AS embedding_lag_p95_seconds,
       coalesce(fb.feedback_thumbs_up, 0)::bigint AS feedback_thumbs_up,
       coalesce(fb.feedback_thumbs_down, 0)::bigint AS feedback_thumbs_down,
       coalesce(fb.feedback_rating_1, 0)::bigint AS feedback_rating_1,
       coalesce(fb.feedback_rating_2, 0)::bigint AS feedback_rating_2,
       coalesce(fb.feedback_rating_3, 0)::bigint AS feedback_rating_3,
       coalesce(fb.feedback_rating_4, 0)::bigint AS feedback_rating_4,
       coalesce(fb.feedback_rating_5, 0)::bigint AS feedback_rating_5
FROM keys k
LEFT JOIN conv USING (day, tenant_id, channel)
LEFT JOIN msg USING (day, tenant_id, channel)
LEFT JOIN fb USING (day, tenant_id, channel)
WITH NO DATA
"""

PERFORMANCE_STATS = """
CREATE MATERIALIZED VIEW performance_stats AS
WITH msg AS (
    SELECT m.tenant_id, m.conversation_id, m.created_at, fe.embedded_at
    FROM conversations_message m
    LEFT JOIN LATERAL (
        SELECT min(e.created_at) AS embedded_at
        FROM conversations_messageembedding e
        WHERE e.item_id = m.id
    ) fe ON true
    WHERE m.created_at >= date_trunc('hour', now(), 'UTC') - interval '7 days'
),
batches AS (
    SELECT tenant_id, created_at, count(*) AS size
    FROM msg
    GROUP BY tenant_id, created_at
),
msg_hour AS (
    SELECT date_trunc('hour', created_at, 'UTC') AS hour, tenant_id,
           count(*) AS messages,
           count(DISTINCT conversation_id) AS conversations_with_messages,
           count(embedded_at) AS messages_embedded,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM embedded_at - created_at))
               AS embedding_latency_p50_seconds,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM embedded_at - created_at))
               AS embedding_latency_p95_seconds,
           max(extract(epoch FROM embedded_at - created_at)) AS embedding_latency_max_seconds
    FROM msg
    GROUP BY 1, 2
),
batch_hour AS (
    SELECT date_trunc('hour', created_at, 'UTC') AS hour, tenant_id,
           count(*) AS ingest_batches,
           avg(size) AS batch_size_avg,
           max(size) AS batch_size_max
    FROM batches
    GROUP BY 1, 2
),
conv_hour AS (
    SELECT date_trunc('hour', created_at, 'UTC') AS hour, tenant_id, count(*) AS conversations_created
    FROM conversations_conversation
    WHERE created_at >= date_trunc('hour', now(), 'UTC') - interval '7 days'
    GROUP BY 1, 2
),
keys AS (
    SELECT hour, tenant_id FROM msg_hour
    UNION SELECT hour, tenant_id FROM conv_hour
)
SELECT k.hour, k.tenant_id,
       coalesce(conv_hour.conversations_created, 0)::bigint AS conversations_created,
       coalesce(msg_hour.messages, 0)::bigint AS messages,
       coalesce(msg_hour.conversations_with_messages, 0)::bigint AS conversations_with_messages,
       coalesce(msg_hour.messages_embedded, 0)::bigint AS messages_embedded,
       coalesce(batch_hour.ingest_batches, 0)::bigint AS ingest_batches,
       batch_hour.batch_size_avg::double precision AS batch_size_avg,
       batch_hour.batch_size_max::bigint AS batch_size_max,
       msg_hour.embedding_latency_p50_seconds::double precision AS embedding_latency_p50_seconds,
       msg_hour.embedding_latency_p95_seconds::double precision AS embedding_latency_p95_seconds,
       msg_hour.embedding_latency_max_seconds::double precision AS embedding_latency_max_seconds
FROM keys k
LEFT JOIN msg_hour USING (hour, tenant_id)
LEFT JOIN batch_hour USING (hour, tenant_id)
LEFT JOIN conv_hour USING (hour, tenant_id)
WITH NO DATA
"""


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0006_embeddingspace_config"),
        ("feedback", "0001_initial"),
    ]

    operations = [
        # BRIN builds read the whole table: not to be cut off by DB_STATEMENT_TIMEOUT_MS on a big one.
        migrations.RunSQL("SET LOCAL statement_timeout = 0", migrations.RunSQL.noop),
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS metrics_message_created_brin ON conversations_message USING brin (created_at)",
            "DROP INDEX IF EXISTS metrics_message_created_brin",
        ),
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS metrics_conversation_created_brin "
            "ON conversations_conversation USING brin (created_at)",
            "DROP INDEX IF EXISTS metrics_conversation_created_brin",
        ),
        migrations.RunSQL(CONVERSATION_METRICS, "DROP MATERIALIZED VIEW IF EXISTS conversation_metrics"),
        migrations.RunSQL(
            "CREATE UNIQUE INDEX conversation_metrics_key ON conversation_metrics (day, tenant_id, channel)",
            "DROP INDEX IF EXISTS conversation_metrics_key",
        ),
        migrations.RunSQL(
            "CREATE INDEX conversation_metrics_tenant_day ON conversation_metrics (tenant_id, day)",
            "DROP INDEX IF EXISTS conversation_metrics_tenant_day",
        ),
        migrations.RunSQL(PERFORMANCE_STATS, "DROP MATERIALIZED VIEW IF EXISTS performance_stats"),
        migrations.RunSQL(
            "CREATE UNIQUE INDEX performance_stats_key ON performance_stats (hour, tenant_id)",
            "DROP INDEX IF EXISTS performance_stats_key",
        ),
        migrations.RunSQL(
            "CREATE INDEX performance_stats_tenant_hour ON performance_stats (tenant_id, hour)",
            "DROP INDEX IF EXISTS performance_stats_tenant_hour",
        ),
        migrations.RunSQL(migrations.RunSQL.noop, "SET LOCAL statement_timeout = 0"),
    ]
