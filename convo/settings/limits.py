"""Input limits and backpressure. Each is enforced with a 4xx JSON error naming what was too big;
tests exercise every one at the limit and one past it."""

from __future__ import annotations

from convo.env import env

# Request bodies larger than this answer 413 before any parsing.
CONVO_MAX_BODY_BYTES: int = env.int("CONVO_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Items in one batch request (conversations or messages).
CONVO_MAX_BATCH_ITEMS: int = env.int("CONVO_MAX_BATCH_ITEMS", default=1000)
# Messages carried inside one conversation payload.
CONVO_MAX_MESSAGES_PER_CONVERSATION: int = env.int("CONVO_MAX_MESSAGES_PER_CONVERSATION", default=500)
# Characters in one message text, summary or sender name / session / user id field.
CONVO_MAX_TEXT_CHARS: int = env.int("CONVO_MAX_TEXT_CHARS", default=16_000)
# Characters in a full conversation transcript.
CONVO_MAX_TRANSCRIPT_CHARS: int = env.int("CONVO_MAX_TRANSCRIPT_CHARS", default=200_000)
# Serialized size of one metadata or raw_payload object.
CONVO_MAX_JSON_FIELD_BYTES: int = env.int("CONVO_MAX_JSON_FIELD_BYTES", default=64 * 1024)
# List pagination.
CONVO_DEFAULT_PAGE_SIZE: int = env.int("CONVO_DEFAULT_PAGE_SIZE", default=50)
CONVO_MAX_PAGE_SIZE: int = env.int("CONVO_MAX_PAGE_SIZE", default=200)
# Backpressure: when this many items wait for embedding, ingest answers 503 + Retry-After.
CONVO_MAX_PENDING_ITEMS: int = env.int("CONVO_MAX_PENDING_ITEMS", default=50_000)
CONVO_BACKPRESSURE_RETRY_AFTER_SECONDS: int = env.int("CONVO_BACKPRESSURE_RETRY_AFTER_SECONDS", default=5)
# How long one process trusts its last count of pending work before counting again.
CONVO_PENDING_COUNT_TTL_SECONDS: float = env.float("CONVO_PENDING_COUNT_TTL_SECONDS", default=1.0)
# How long a process trusts a verified API key before checking it again (revocation delay).
CONVO_API_KEY_CACHE_SECONDS: float = env.float("CONVO_API_KEY_CACHE_SECONDS", default=30.0)
