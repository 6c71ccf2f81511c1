"""Text → vector through two cache layers, so an identical text is embedded once per model.

Text is normalised (Unicode NFKC, whitespace collapsed) and hashed together with the model id.
A hot layer in the Django cache (Redis when configured) sits in front of the durable table
``EmbeddingCacheEntry``; only what both miss is sent to the provider, and what the provider
returns is written to the durable table at once, in its own transaction, before anything else
happens, so a crash right after the call loses as little as possible.
"""

from __future__ import annotations

import hashlib
import unicodedata
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from conversations.embeddings.base import Embedder, EmbeddingInvalid, EmbeddingRejected
from conversations.models import EmbeddingCacheEntry, EmbeddingCacheStats
from conversations.nearest import vector_literal
from convo.monitoring.prometheus import metrics_cache_count
from convo.monitoring.timings import timed

HOT_TTL_SECONDS = 24 * 60 * 60


def text_normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def cache_key(model_id: str, normalized: str) -> str:
    return hashlib.sha256(f"{model_id}\0{normalized}".encode()).hexdigest()


@dataclass
class CacheOutcome:
    vectors: dict[str, list[float]] = field(default_factory=dict)  # by normalised text
    failures: dict[str, str] = field(default_factory=dict)  # normalised text -> why it failed alone
    hot_hits: int = 0
    durable_hits: int = 0
    misses: int = 0


@dataclass
class CacheLookup:
    """Texts after the cache layers looked at them: what they found, and what the model must
    still embed. The three phases (``embedding_cache_lookup``, ``embedding_cache_compute``,
    ``embedding_cache_store``) let the worker run the model, which touches no database, in a
    thread of its own while it stores the previous batch."""

    embedder: Embedder
    keys: dict[str, str]  # normalised text -> cache key
    outcome: CacheOutcome
    missing: list[str]


def embed_texts_cached(*, embedder: Embedder, texts: Sequence[str], count: bool = True) -> CacheOutcome:
    """Vectors for the distinct normalised ``texts``. Texts the provider rejects or answers badly
    are isolated (the batch is split until the bad text stands alone) and reported in
    ``failures``; ``EmbeddingUnavailable`` propagates: the whole batch should be retried later."""
    lookup = embedding_cache_lookup(embedder=embedder, texts=texts)
    return embedding_cache_store(lookup=lookup, fresh=embedding_cache_compute(lookup=lookup), count=count)


def embedding_cache_lookup(*, embedder: Embedder, texts: Sequence[str]) -> CacheLookup:
    """What the hot layer and the durable table already hold of ``texts``."""
    outcome = CacheOutcome()
    keys = {text: cache_key(embedder.model_id, text) for text in dict.fromkeys(texts)}
    with timed("cache_lookup"):
        _lookup(keys, outcome)
    missing = [text for text in keys if text not in outcome.vectors]
    outcome.misses = len(missing)
    return CacheLookup(embedder=embedder, keys=keys, outcome=outcome, missing=missing)


class RecentVectors:
    """What the model made for the last batch, by cache key. A worker looks the next batch up
    while the model still embeds the current one, so texts the two share miss the cache; the next
    batch's compute takes them from here instead of asking the model for them twice."""

    def __init__(self) -> None:
        self._vectors: dict[str, list[float]] = {}

    def take(self, lookup: CacheLookup) -> None:
        """Move the texts of ``lookup`` found here from its misses to its (hot) hits."""
        found = {
            text: self._vectors[lookup.keys[text]] for text in lookup.missing if lookup.keys[text] in self._vectors
        }
        if found:
            lookup.outcome.vectors.update(found)
            lookup.outcome.hot_hits += len(found)
            lookup.outcome.misses -= len(found)
            lookup.missing = [text for text in lookup.missing if text not in found]

    def remember(self, lookup: CacheLookup, fresh: dict[str, list[float]]) -> None:
        self._vectors = {lookup.keys[text]: vector for text, vector in fresh.items()}


def embedding_cache_compute(*, lookup: CacheLookup, recent: RecentVectors | None = None) -> dict[str, list[float]]:
    """The model's vectors for the texts the cache (and ``recent``) missed; failures go to the
    outcome. Touches no database, so it may run in another thread than the lookup and the store."""
    if recent is not None:
        recent.take(lookup)
    if not lookup.missing:
        return {}
    with timed("embedding_call"):
        fresh = _embed_isolating_failures(lookup.embedder, lookup.missing, lookup.outcome.failures)
    if recent is not None:
        recent.remember(lookup, fresh)
    return fresh


def embedding_cache_store(*, lookup: CacheLookup, fresh: dict[str, list[float]], count: bool = True) -> CacheOutcome:
    """Write what the model just made to both layers (the durable table at once, in its own
    commit) and count the hits and misses; returns the complete outcome."""
    outcome, keys, model_id = lookup.outcome, lookup.keys, lookup.embedder.model_id
    if fresh:
        outermost = not connection.in_atomic_block
        with transaction.atomic():
            if outermost:
                # Without waiting for the WAL flush: the worker's model thread waits for this
                # commit. An entry can always be made again, and only a crash of the database
                # server itself in the next fraction of a second could lose it (never of a worker);
                # the vectors themselves are committed durably afterwards. Never inside a
                # caller's transaction, whose own commit this would weaken.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit = off")
            _entries_insert(model_id, [(keys[text], vector) for text, vector in fresh.items()])
            if count:  # in the same commit as the new entries
                _count(model_id, outcome)
        _hot_set({keys[text]: vector for text, vector in fresh.items()})
        outcome.vectors.update(fresh)
    elif count:
        _count(model_id, outcome)
    return outcome


def _entries_insert(model_id: str, entries: list[tuple[str, list[float]]]) -> None:
    """One statement; the vectors as text made by ``vector_literal`` (the ORM's conversion cost
    0.3 ms a vector, on the path the worker's model thread waits for)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {EmbeddingCacheEntry._meta.db_table} (key, model_id, embedding, created_at)
            SELECT f.key, %s, f.embedding::vector, now() FROM unnest(%s::text[], %s::text[]) AS f(key, embedding)
            ON CONFLICT (key) DO NOTHING
            """,
            [model_id, [key for key, _ in entries], [vector_literal(vector) for _, vector in entries]],
        )


def _lookup(keys: dict[str, str], outcome: CacheOutcome) -> None:
    """Fill ``outcome`` from the hot layer, then from the durable table (timed together as the
    ``cache_lookup`` operation)."""
    hot = cache.get_many([f"emb:{key}" for key in keys.values()])
    for text, key in keys.items():
        packed = hot.get(f"emb:{key}")
        if packed is not None:
            outcome.vectors[text] = array("f", packed).tolist()
    outcome.hot_hits = len(outcome.vectors)

    wanted = {key: text for text, key in keys.items() if text not in outcome.vectors}
    if wanted:
        stored = EmbeddingCacheEntry.objects.filter(key__in=list(wanted)).values_list("key", "embedding")
        found = {wanted[key]: [float(x) for x in vector] for key, vector in stored}
        outcome.durable_hits = len(found)
        outcome.vectors.update(found)
        _hot_set({keys[text]: vector for text, vector in found.items()})


def _embed_isolating_failures(embedder: Embedder, texts: list[str], failures: dict[str, str]) -> dict[str, list[float]]:
    """Embed ``texts``; when the provider rejects the batch or answers it badly, split it in
    halves until each bad text fails alone, so one poison text never spoils its neighbours."""
    try:
        return dict(zip(texts, embedder.embed(texts), strict=True))
    except (EmbeddingRejected, EmbeddingInvalid) as exc:
        if len(texts) == 1:
            failures[texts[0]] = f"{type(exc).__name__}: {exc}"[:1000]
            return {}
    middle = len(texts) // 2
    return {
        **_embed_isolating_failures(embedder, texts[:middle], failures),
        **_embed_isolating_failures(embedder, texts[middle:], failures),
    }


def _hot_set(vectors: dict[str, list[float]]) -> None:
    if vectors:
        cache.set_many({f"emb:{key}": array("f", v).tobytes() for key, v in vectors.items()}, HOT_TTL_SECONDS)


def _count(model_id: str, outcome: CacheOutcome) -> None:
    if not (outcome.hot_hits or outcome.durable_hits or outcome.misses):
        return
    metrics_cache_count(hot_hits=outcome.hot_hits, durable_hits=outcome.durable_hits, misses=outcome.misses)
    # One statement: the day's row is created by its first batch and added to by the rest.
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {EmbeddingCacheStats._meta.db_table} AS s (model_id, day, hot_hits, durable_hits, misses)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (model_id, day) DO UPDATE SET hot_hits = s.hot_hits + EXCLUDED.hot_hits,
                durable_hits = s.durable_hits + EXCLUDED.durable_hits, misses = s.misses + EXCLUDED.misses
            """,
            [model_id, timezone.now().date(), outcome.hot_hits, outcome.durable_hits, outcome.misses],
        )
