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
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from conversations.embeddings.base import Embedder, EmbeddingInvalid, EmbeddingRejected
from conversations.models import EmbeddingCacheEntry, EmbeddingCacheStats
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


def embed_texts_cached(*, embedder: Embedder, texts: Sequence[str], count: bool = True) -> CacheOutcome:
    """Vectors for the distinct normalised ``texts``. Texts the provider rejects or answers badly
    are isolated (the batch is split until the bad text stands alone) and reported in
    ``failures``; ``EmbeddingUnavailable`` propagates: the whole batch should be retried later."""
    outcome = CacheOutcome()
    keys = {text: cache_key(embedder.model_id, text) for text in dict.fromkeys(texts)}
    with timed("cache_lookup"):
        _lookup(keys, outcome)

    missing = [text for text in keys if text not in outcome.vectors]
    outcome.misses = len(missing)
    if missing:
        with timed("embedding_call"):
            fresh = _embed_isolating_failures(embedder, missing, outcome.failures)
        if fresh:
            with transaction.atomic():
                EmbeddingCacheEntry.objects.bulk_create(
                    [
                        EmbeddingCacheEntry(key=keys[t], model_id=embedder.model_id, embedding=v)
                        for t, v in fresh.items()
                    ],
                    ignore_conflicts=True,
                )
            _hot_set({keys[text]: vector for text, vector in fresh.items()})
            outcome.vectors.update(fresh)
    if count:
        _count(embedder.model_id, outcome)
    return outcome


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
    stats, _ = EmbeddingCacheStats.objects.get_or_create(model_id=model_id, day=timezone.now().date())
    EmbeddingCacheStats.objects.filter(pk=stats.pk).update(
        hot_hits=F("hot_hits") + outcome.hot_hits,
        durable_hits=F("durable_hits") + outcome.durable_hits,
        misses=F("misses") + outcome.misses,
    )
