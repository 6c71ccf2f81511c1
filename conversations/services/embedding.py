"""The embedding worker: claim pending rows, embed them in batches, store their vectors.

The pending rows are the queue (ARCHITECTURE.md, decision 1). A batch is claimed in a short
transaction with ``FOR UPDATE SKIP LOCKED`` (so concurrent workers never take the same rows),
which marks the rows ``processing`` with a claim time and counts the attempt. The provider is
called outside any transaction. The vectors and the new states are then written together; the
finishing UPDATE matches the claim time, so a row whose text changed meanwhile (and was put back
to ``pending``) is not marked done with a stale vector. A claim older than the lease is handed
back by ``embedding_reconcile``: a worker killed at any moment loses nothing.

Embedding spaces (docs/embeddings.md): ``embedding_state`` describes the *active* space, whose
embedder the drain follows. While a model switch builds another space, each batch is embedded
for it too, so the switch never falls behind new items; failing there never fails an item (the
switch's backfill fills the gap). The finishing transaction reads the live spaces under a lock
an activation takes exclusively, so a batch never marks an item done against a space that a
switch has just retired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from conversations.embeddings.base import Embedder, EmbeddingUnavailable
from conversations.models import EmbeddingSpace, SpaceState
from conversations.nearest import vector_literal
from conversations.services.embedding_cache import (
    CacheLookup,
    RecentVectors,
    embed_texts_cached,
    embedding_cache_compute,
    embedding_cache_lookup,
    embedding_cache_store,
    text_normalize,
)
from conversations.services.embedding_kinds import EmbeddableKind, EmbeddedItem, embedding_kind, embedding_kinds
from conversations.services.embedding_spaces import (
    embedding_space_active_embedder,
    embedding_space_embedder,
    embedding_space_for,
    embedding_spaces_live,
)
from convo.monitoring.prometheus import metrics_embedded_count

logger = logging.getLogger(__name__)

# Building spaces whose embedder this process could not build (id -> the config that failed).
_unbuildable: dict[int, str] = {}

# A kind's name: "message", "conversation", "knowledge" (conversations/services/embedding_kinds.py).
Kind = str


@dataclass(frozen=True)
class ClaimedItem:
    id: UUID
    tenant_id: int
    text: str
    attempts: int


@dataclass(frozen=True)
class BatchOutcome:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class BackfillPage:
    read: int  # rows looked at (the progress of a pass)
    stored: int  # vectors written (fewer when the worker got there first or a text changed meanwhile)
    blank: int  # nothing to embed
    rejected: list[tuple[UUID, str]]  # refused by the model, with why
    last_id: UUID | None  # the keyset cursor of the next page


FIRST_ID = UUID(int=0)


@dataclass(frozen=True)
class _ClaimedBatch:
    """A batch between its claim and its store: what the model must embed, and for which space."""

    kind: Kind
    space: EmbeddingSpace
    items: list[tuple[ClaimedItem, datetime]]
    texts: dict[UUID, str]  # normalised, by item
    lookup: CacheLookup | None  # None when every text is blank
    # Set once what the model made for this batch is in the durable cache (or nothing will be):
    # the model thread waits for it before it sends the next batch, so a worker killed at any
    # moment has at most one batch's vectors made and not kept, as when it ran one batch at a time.
    cached: threading.Event = field(default_factory=threading.Event)


def embedding_process_batch(*, kind: Kind, embedder: Embedder, space: EmbeddingSpace, limit: int) -> BatchOutcome:
    """Claim, embed and store one batch of ``kind`` in ``space`` (the active space, embedded by
    ``embedder``) and in any space being built for a switch. Returns what happened to its items."""
    batch = _batch_claim(kind=kind, embedder=embedder, space=space, limit=limit)
    if batch is None:
        return BatchOutcome()
    return _batch_store(batch, _batch_compute(batch))


def embedding_drain(*, embedder: Embedder | None = None, seconds: float | None = None) -> int:
    """Process batches of every kind until nothing is pending or ``seconds`` have passed.
    Returns how many items were claimed. Without ``embedder``, each round embeds with the
    active space's embedder (so a drain follows a switch); a given ``embedder`` (tests, tools)
    must be the active space's model.

    The model runs in a thread of its own, one batch ahead: while it embeds batch n + 1, this
    thread stores batch n (vectors, states, clusters). The model thread touches no database, so
    every statement still runs on this thread's connection, in the caller's transaction if any."""
    budget: float = seconds if seconds is not None else settings.EMBEDDING_DRAIN_SECONDS
    deadline = time.monotonic() + budget
    fixed = None
    if embedder is not None:
        fixed = (embedding_space_for(embedder=embedder), embedder)
        if not EmbeddingSpace.objects.filter(pk=fixed[0].pk, state=SpaceState.ACTIVE).exists():
            raise ValueError(f"{embedder.model_id} is not the active embedding space")
    claims = _claims_in_rounds(fixed=fixed, deadline=deadline)
    recent = RecentVectors()  # only ever touched by the model thread
    stop = threading.Event()  # the drain failed: the model thread must not start another batch
    total = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-model") as model:
        in_flight: tuple[_ClaimedBatch, Future[_Computed]] | None = None
        ahead: tuple[_ClaimedBatch, Future[_Computed]] | None = None
        try:
            while True:
                try:
                    batch = next(claims, None)
                except Exception:
                    # The next claim failed (database, cache): keep what the model already made.
                    if in_flight is not None:
                        done, computed = in_flight
                        in_flight = None
                        _batch_store(done, computed.result())
                    raise
                if batch is not None:
                    previous = in_flight[0] if in_flight is not None else None
                    ahead = (batch, model.submit(_batch_compute, batch, recent, previous, stop))
                if in_flight is not None:
                    done, computed = in_flight
                    outcome = _batch_store(done, computed.result())
                    metrics_embedded_count(kind=done.kind, count=outcome.done)
                if ahead is None:  # nothing more was claimed
                    break
                total += len(ahead[0].items)
                in_flight, ahead = ahead, None
        except BaseException:
            stop.set()
            # Should a store fail, the model thread must not wait for it for ever.
            for pair in (in_flight, ahead):
                if pair is not None:
                    pair[0].cached.set()
            if ahead is not None:  # claimed for a store that will not happen
                _batch_abandon(*ahead)
            raise
    return total


def _claims_in_rounds(*, fixed: tuple[EmbeddingSpace, Embedder] | None, deadline: float) -> Iterator[_ClaimedBatch]:
    """Claimed batches, a round at a time over every kind, until a whole round claims nothing or
    the deadline passes. Each round follows the active space (a switch may have changed it)."""
    while time.monotonic() < deadline:
        current = fixed or embedding_space_active_embedder()
        if current is None:
            logger.warning("no embedding space is active: nothing is embedded")
            return
        space, active_embedder = current
        claimed = False
        for each in embedding_kinds():
            batch = _batch_claim(
                kind=each.name, embedder=active_embedder, space=space, limit=settings.EMBEDDING_BATCH_SIZE
            )
            if batch is not None:
                claimed = True
                yield batch
        if not claimed:
            return


# What the model thread hands back: the fresh vectors, or why the provider could not be used.
_Computed = dict[str, list[float]] | EmbeddingUnavailable


def _batch_claim(*, kind: Kind, embedder: Embedder, space: EmbeddingSpace, limit: int) -> _ClaimedBatch | None:
    items = _claim(kind=kind, limit=limit)
    if not items:
        return None
    texts = {item.id: text_normalize(item.text) for item, _ in items}
    wanted = [texts[item.id] for item, _ in items if texts[item.id]]
    lookup = embedding_cache_lookup(embedder=embedder, texts=wanted) if wanted else None
    return _ClaimedBatch(kind=kind, space=space, items=items, texts=texts, lookup=lookup)


def _batch_compute(
    batch: _ClaimedBatch,
    recent: RecentVectors | None = None,
    previous: _ClaimedBatch | None = None,
    stop: threading.Event | None = None,
) -> _Computed:
    """The model's part: no database. Waits until the ``previous`` batch's vectors are cached.
    An unavailable provider is handed back, not raised, so the batch's store releases its items."""
    if previous is not None:
        previous.cached.wait()
    if stop is not None and stop.is_set():
        return EmbeddingUnavailable("the drain stopped before this batch was embedded")
    if batch.lookup is None:
        return {}
    try:
        return embedding_cache_compute(lookup=batch.lookup, recent=recent)
    except EmbeddingUnavailable as exc:
        return exc


def _batch_abandon(batch: _ClaimedBatch, computed: Future[_Computed]) -> None:
    """Keep what the model made for a batch that will not be stored (in the durable cache, so the
    next claim of these items asks the provider for nothing), then hand its items back."""
    try:
        fresh = computed.result()
        if batch.lookup is not None and isinstance(fresh, dict) and fresh:
            embedding_cache_store(lookup=batch.lookup, fresh=fresh)
    except Exception:
        logger.exception("the vectors of %d abandoned %ss were not cached", len(batch.items), batch.kind)
    _batch_release(batch)


def _batch_release(batch: _ClaimedBatch) -> None:
    """Hand a claimed batch that will not be stored back to the queue, with its attempt given
    back (nothing was tried). Best effort: when the database is what failed, the lease
    reconciler hands it back later instead."""
    rows = [(item.id, claimed) for item, claimed in batch.items]
    try:
        with transaction.atomic():
            _finish_ids(batch.kind, rows, "pending", attempt_back=True)
    except Exception:
        logger.exception("could not hand back %d claimed %ss: the reconciler will", len(batch.items), batch.kind)


def _batch_store(batch: _ClaimedBatch, computed: _Computed) -> BatchOutcome:
    kind, space, items, texts = batch.kind, batch.space, batch.items, batch.texts
    blank = [(item, claimed) for item, claimed in items if not texts[item.id]]
    todo = [(item, claimed) for item, claimed in items if texts[item.id]]
    try:
        outcome = (
            embedding_cache_store(lookup=batch.lookup, fresh=computed)
            if batch.lookup is not None and not isinstance(computed, EmbeddingUnavailable)
            else None
        )
    finally:
        batch.cached.set()
    if isinstance(computed, EmbeddingUnavailable):
        logger.warning("embedding provider unavailable for %d %ss: %s", len(todo), kind, computed)
        with transaction.atomic():
            _forget_unembedded(kind, [item for item, _ in todo], {}, embedding_spaces_live())
            failed = _finish_failed(kind, todo, f"provider unavailable: {computed}")
            skipped = _finish_blank(kind, blank)
        return BatchOutcome(claimed=len(items), failed=failed, released=len(todo) - failed, skipped=skipped)

    done: list[tuple[ClaimedItem, datetime, list[float]]] = []
    rejected: list[tuple[ClaimedItem, datetime, str]] = []
    for item, claimed in todo:
        text = texts[item.id]
        if outcome is not None and text in outcome.vectors:
            vector = outcome.vectors[text]
            if len(vector) != space.dimensions:  # a provider answering another size than its space
                rejected.append((item, claimed, f"vector has {len(vector)} dimensions, expected {space.dimensions}"))
            else:
                done.append((item, claimed, vector))
        else:
            rejected.append((item, claimed, outcome.failures.get(text, "not embedded") if outcome else "not embedded"))
    vectors = {space.pk: {item.id: vector for item, _, vector in done}}
    vectors.update(_embed_for_building(exclude=space, items=[item for item, _ in todo], texts=texts))

    with transaction.atomic():
        live = embedding_spaces_live()
        for space_id, by_item in vectors.items():
            if space_id in live:
                _upsert_vectors(kind, space_id, [(item, by_item[item.id]) for item, _ in todo if item.id in by_item])
        _forget_unembedded(kind, [item for item, _ in todo], vectors, live)
        skipped = _finish_blank(kind, blank)
        active_id = next((space_id for space_id, state in live.items() if state == SpaceState.ACTIVE), None)
        if active_id == space.pk:
            finished_ids = _finish_ids(kind, [(item.id, claimed) for item, claimed, _ in done], "done")
            finished = len(finished_ids)
            # Only what this claim finished: a re-claimed item is another worker's.
            _on_done(kind, space, [(item, vector) for item, _, vector in done if item.id in finished_ids])
            # A rejected text fails for good: the same text will be rejected again.
            failed = _finish_rejected(kind, rejected)
            return BatchOutcome(claimed=len(items), done=finished, failed=failed, skipped=skipped)
        # A switch activated another space while this batch was embedded: what has a vector there
        # is done; the rest goes back to the queue, for the new active space's embedder.
        made = vectors.get(active_id or 0, {})
        finished_ids = _finish_ids(kind, [(item.id, claimed) for item, claimed in todo if item.id in made], "done")
        finished = len(finished_ids)
        if active_id is not None:
            active = EmbeddingSpace.objects.get(pk=active_id)
            _on_done(kind, active, [(item, made[item.id]) for item, _ in todo if item.id in finished_ids])
        again = [(item.id, claimed) for item, claimed in todo if item.id not in made]
        released = _finish(kind, again, "pending", ["the active embedding space changed"] * len(again))
    return BatchOutcome(claimed=len(items), done=finished, released=released, skipped=skipped)


def embedding_backfill_page(
    *, kind: Kind, space: EmbeddingSpace, embedder: Embedder, after: UUID, limit: int
) -> BackfillPage:
    """Embed the next ``limit`` items of ``kind`` after id ``after`` that have no vector in
    ``space``, for a model switch. Keyset paging (``id > after ORDER BY id``) costs the same on
    the last page as on the first, and picking only rows without a vector makes a pass
    resumable from anywhere. Vectors go in through the shared cache and are only inserted
    (never replacing the worker's) and only if the item's text is still the one embedded.
    ``EmbeddingUnavailable`` propagates: stop, and run the pass again later."""
    source = embedding_kind(kind)
    items, vectors, text_sql = source.items._meta.db_table, source.vectors._meta.db_table, source.text_sql
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT t.id, {text_sql}, md5({text_sql}) FROM {items} AS t
             WHERE t.id > %s
               AND NOT EXISTS (SELECT 1 FROM {vectors} AS e WHERE e.item_id = t.id AND e.space_id = %s)
             ORDER BY t.id LIMIT %s
            """,
            [after, space.pk, limit],
        )
        rows = [(row[0], text_normalize(row[1] or ""), row[2]) for row in cursor.fetchall()]
    if not rows:
        return BackfillPage(read=0, stored=0, blank=0, rejected=[], last_id=None)
    wanted = [(item_id, text, digest) for item_id, text, digest in rows if text]
    outcome = embed_texts_cached(embedder=embedder, texts=[text for _, text, _ in wanted]) if wanted else None
    good: list[tuple[UUID, str, list[float]]] = []
    rejected: list[tuple[UUID, str]] = []
    for item_id, text, digest in wanted:
        vector = outcome.vectors.get(text) if outcome else None
        if vector is not None and len(vector) == space.dimensions:
            good.append((item_id, digest, vector))
        else:
            error = outcome.failures.get(text, "not embedded") if outcome else "not embedded"
            rejected.append((item_id, error if vector is None else f"vector has {len(vector)} dimensions"))
    stored = 0
    if good:
        good.sort()
        copied, copied_from_items = _copied_columns_sql(source)
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {vectors} (item_id, tenant_id, space_id, embedding{copied})
                SELECT t.id, t.tenant_id, %s, f.embedding::vector{copied_from_items}
                  FROM unnest(%s::uuid[], %s::text[], %s::text[]) AS f(id, digest, embedding)
                  JOIN {items} AS t ON t.id = f.id AND md5({text_sql}) = f.digest
                 ORDER BY t.id
                ON CONFLICT (item_id, space_id) DO NOTHING
                """,
                [space.pk, [g[0] for g in good], [g[1] for g in good], [vector_literal(g[2]) for g in good]],
            )
            stored = cursor.rowcount
    return BackfillPage(
        read=len(rows), stored=stored, blank=len(rows) - len(wanted), rejected=rejected, last_id=rows[-1][0]
    )


def embedding_backfill_missing(*, kind: Kind, space: EmbeddingSpace) -> int:
    """How many items of ``kind`` have no vector in ``space`` (blank ones included): the total of
    a backfill pass's progress. One anti-join over the table."""
    source = embedding_kind(kind)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*) FROM {source.items._meta.db_table} AS t
             WHERE NOT EXISTS (SELECT 1 FROM {source.vectors._meta.db_table} AS e
                                WHERE e.item_id = t.id AND e.space_id = %s)
            """,
            [space.pk],
        )
        return int(cursor.fetchone()[0])


def embedding_reconcile() -> int:
    """Hand back claims older than the lease (their worker died or hung). An item that has used
    all its attempts ends ``failed``. Returns how many rows were handed back or failed."""
    lease: float = settings.EMBEDDING_LEASE_SECONDS
    max_attempts: int = settings.EMBEDDING_MAX_ATTEMPTS
    total = 0
    for kind in embedding_kinds():
        table = kind.items._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table}
                   SET embedding_state = CASE WHEN embedding_attempts >= %s THEN 'failed' ELSE 'pending' END,
                       embedding_error = CASE WHEN embedding_attempts >= %s
                           THEN 'lease expired on the last attempt' ELSE embedding_error END,
                       embedding_claimed_at = NULL
                 WHERE embedding_state = 'processing' AND embedding_claimed_at < now() - make_interval(secs => %s)
                """,
                [max_attempts, max_attempts, lease],
            )
            total += cursor.rowcount
    if total:
        logger.info("embedding reconciler handed back %d expired claims", total)
    return total


# --- internals ---------------------------------------------------------------------------------


def _claim(*, kind: Kind, limit: int) -> list[tuple[ClaimedItem, datetime]]:
    source = embedding_kind(kind)
    table, text_sql = source.items._meta.db_table, source.text_sql
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH picked AS (
                SELECT id FROM {table} WHERE embedding_state = 'pending'
                ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED
            )
            UPDATE {table} AS t
               SET embedding_state = 'processing', embedding_claimed_at = clock_timestamp(),
                   embedding_attempts = t.embedding_attempts + 1
              FROM picked WHERE t.id = picked.id
            RETURNING t.id, t.tenant_id, {text_sql}, t.embedding_attempts, t.embedding_claimed_at
            """,
            [limit],
        )
        rows = cursor.fetchall()
    return [(ClaimedItem(id=r[0], tenant_id=r[1], text=r[2] or "", attempts=r[3]), r[4]) for r in rows]


def _store_vectors(kind: Kind, space: EmbeddingSpace, done: list[tuple[ClaimedItem, datetime, list[float]]]) -> None:
    _upsert_vectors(kind, space.pk, [(item, vector) for item, _, vector in done])


def _upsert_vectors(kind: Kind, space_id: int, rows: list[tuple[ClaimedItem, list[float]]]) -> None:
    if not rows:
        return
    source = embedding_kind(kind)
    copied, copied_from_items = _copied_columns_sql(source)
    # Sorted by item: the switch's backfill writes the same keys in id order, so the two can
    # never deadlock on the unique index. An item deleted since its claim has nothing to join.
    ordered = sorted(rows, key=lambda row: row[0].id)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {source.vectors._meta.db_table} (item_id, tenant_id, space_id, embedding{copied})
            SELECT t.id, t.tenant_id, %s, f.embedding::vector{copied_from_items}
              FROM unnest(%s::uuid[], %s::text[]) AS f(id, embedding)
              JOIN {source.items._meta.db_table} AS t ON t.id = f.id
             ORDER BY t.id
            ON CONFLICT (item_id, space_id) DO UPDATE SET embedding = EXCLUDED.embedding
            """,
            # A conversation whose text changed is embedded again: its vector in the space is replaced.
            [space_id, [item.id for item, _ in ordered], [vector_literal(vector) for _, vector in ordered]],
        )


def _copied_columns_sql(source: EmbeddableKind) -> tuple[str, str]:
    """The kind's copied columns as the tail of an INSERT's column list, and of its SELECT list
    over the item table ``t``."""
    return (
        "".join(f", {column}" for column in source.copied_columns),
        "".join(f", t.{column}" for column in source.copied_columns),
    )


def _embed_for_building(
    *, exclude: EmbeddingSpace, items: list[ClaimedItem], texts: dict[UUID, str]
) -> dict[int, dict[UUID, list[float]]]:
    """Vectors of ``items`` in every space being built (by space id). Best effort: whatever fails
    here is logged and left to the switch's backfill; it never fails an item."""
    made: dict[int, dict[UUID, list[float]]] = {}
    if not items:
        return made
    for space in EmbeddingSpace.objects.filter(state=SpaceState.BUILDING).exclude(pk=exclude.pk):
        config = repr(space.config)
        if _unbuildable.get(space.pk) == config:
            continue
        try:
            embedder = embedding_space_embedder(space=space)
        except Exception:
            logger.exception("cannot build the embedder of %s: the switch's backfill will embed its items", space)
            _unbuildable[space.pk] = config
            continue
        try:
            outcome = embed_texts_cached(embedder=embedder, texts=[texts[item.id] for item in items])
        except Exception as exc:
            logger.warning("embedding for %s failed, left to the switch's backfill: %s", space, exc)
            continue
        made[space.pk] = {
            item.id: vector
            for item in items
            if (vector := outcome.vectors.get(texts[item.id])) is not None and len(vector) == space.dimensions
        }
    return made


def _on_done(kind: Kind, space: EmbeddingSpace, rows: list[tuple[ClaimedItem, list[float]]]) -> None:
    """The kind's own work on items just marked done, in the same transaction (messages join
    clusters there: a message is clustered exactly once, whenever the worker dies)."""
    hook = embedding_kind(kind).on_done
    if hook is not None and rows:
        hook(space, [EmbeddedItem(id=item.id, tenant_id=item.tenant_id, vector=vector) for item, vector in rows])


def _forget_unembedded(
    kind: Kind, items: list[ClaimedItem], made: dict[int, dict[UUID, list[float]]], live: dict[int, str]
) -> None:
    """Drop the vectors these items have in a space being built that this batch could not embed
    them for: they may have been made from an older text, and a missing vector is what the
    switch's backfill looks for."""
    for space_id, state in live.items():
        if state != SpaceState.BUILDING:
            continue
        stale = [item.id for item in items if item.id not in made.get(space_id, {})]
        if stale:
            embedding_kind(kind).vectors.objects.filter(space_id=space_id, item_id__in=stale).delete()


def _finish(kind: Kind, rows: list[tuple[UUID, datetime]], state: str, errors: list[str] | None = None) -> int:
    return len(_finish_ids(kind, rows, state, errors))


def _finish_ids(
    kind: Kind,
    rows: list[tuple[UUID, datetime]],
    state: str,
    errors: list[str] | None = None,
    *,
    attempt_back: bool = False,
) -> set[UUID]:
    """Move the rows whose claim is still the one given to ``state``; returns their ids (a row
    re-claimed after its lease expired belongs to another worker and is left alone).
    ``attempt_back``: nothing was tried, so the claim's attempt is given back and the last error
    (of an earlier attempt) is kept."""
    if not rows:
        return set()
    table = embedding_kind(kind).items._meta.db_table
    ids = [row_id for row_id, _ in rows]
    claims = [claimed for _, claimed in rows]
    messages = errors or [""] * len(rows)
    outcome = (
        "embedding_attempts = greatest(t.embedding_attempts - 1, 0)" if attempt_back else "embedding_error = f.error"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} AS t
               SET embedding_state = %s, embedding_claimed_at = NULL, {outcome}
              FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[]) AS f(id, claimed_at, error)
             WHERE t.id = f.id AND t.embedding_state = 'processing' AND t.embedding_claimed_at = f.claimed_at
            RETURNING t.id
            """,
            [state, ids, claims, messages],
        )
        return {row[0] for row in cursor.fetchall()}


def _finish_done(kind: Kind, done: list[tuple[ClaimedItem, datetime, list[float]]]) -> int:
    return _finish(kind, [(item.id, claimed) for item, claimed, _ in done], "done")


def _finish_rejected(kind: Kind, rejected: list[tuple[ClaimedItem, datetime, str]]) -> int:
    return _finish(
        kind, [(item.id, claimed) for item, claimed, _ in rejected], "failed", [error for _, _, error in rejected]
    )


def _finish_blank(kind: Kind, blank: list[tuple[ClaimedItem, datetime]]) -> int:
    rows = [(item.id, claimed) for item, claimed in blank]
    if embedding_kind(kind).blank_state == "skipped":
        return _finish(kind, rows, "skipped")
    return _finish(kind, rows, "failed", ["the text is empty"] * len(rows))


def _finish_failed(kind: Kind, items: list[tuple[ClaimedItem, datetime]], error: str) -> int:
    """After a provider outage: back to pending, or failed for items out of attempts.
    Returns how many ended failed."""
    max_attempts: int = settings.EMBEDDING_MAX_ATTEMPTS
    spent = [(item.id, claimed) for item, claimed in items if item.attempts >= max_attempts]
    again = [(item.id, claimed) for item, claimed in items if item.attempts < max_attempts]
    _finish(kind, again, "pending", [error[:1000]] * len(again))
    return _finish(kind, spent, "failed", [error[:1000]] * len(spent))
