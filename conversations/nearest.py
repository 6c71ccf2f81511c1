"""Nearest vectors under a filter, correct whatever the filter keeps: the one mechanism behind
message search (conversations/search.py) and knowledge search (feedback/retrieval.py).

pgvector 0.6 applies WHERE after the HNSW scan, so a filtered HNSW query can silently return too
few or the wrong neighbours. So one statement first reads the distances of the matching rows, up
to ``SEARCH_EXACT_SCAN_MAX_ROWS`` + 1: when they are no more than that, they are all of them and
their nearest are the exact answer, found in the same pass; when they are more, HNSW runs with
``ef_search`` raised in proportion to how selective the filter is, and an exact scan takes over if
HNSW still returns fewer than ``limit`` rows. When the ``ef_search`` needed passes
``SEARCH_EF_SEARCH_MAX`` (a filter keeping a small share of a big space), the matching rows are
scanned instead: HNSW could not find them. That first pass is skipped when the planner expects
more rows than the cap (``SEARCH_COUNT_SKIP_FACTOR``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import orjson
from django.conf import settings
from django.db import connections, transaction


def vector_literal(vector: Sequence[float]) -> str:
    """``vector`` as pgvector's text form, exact to the last bit of each float. orjson writes the
    shortest exact form of each float, as ``repr`` does, twenty times faster (10 µs for 384)."""
    try:
        text = orjson.dumps(vector if isinstance(vector, list) else list(vector), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        text = ("[" + ",".join(repr(float(x)) for x in vector) + "]").encode()
    if b"null" in text or b"nan" in text or b"inf" in text:  # orjson writes NaN and infinities as null
        raise ValueError("a vector must hold finite numbers only")
    return text.decode()


def filtered_neighbours(
    *,
    alias: str,
    vectors_table: str,
    from_sql: str,
    where: str,
    params: list[Any],
    dims: int,
    vector: Sequence[float],
    limit: int,
) -> tuple[list[tuple[UUID, float]], str, int]:
    """The ``limit`` rows of ``from_sql`` matching ``where`` nearest to ``vector`` (item id, cosine
    similarity), nearest first; the strategy used (``exact``, ``hnsw`` or ``hnsw+exact``); and
    the rows the filter matches, counted up to the cap (cap + 1 meaning "more"). ``from_sql``
    names the vector table ``e`` (with ``item_id`` and ``embedding``), and ``vectors_table`` is
    that table, whose size scales ``ef_search``."""
    cap = int(settings.SEARCH_EXACT_SCAN_MAX_ROWS)
    literal = vector_literal(vector)
    distance = f"(e.embedding::vector({int(dims)}) <=> %s::vector({int(dims)}))"
    select = f"SELECT e.item_id, 1 - {distance} FROM {from_sql} WHERE {where}"
    # "+ 0" keeps the planner off the HNSW index: this is the exact scan of the matching rows.
    exact = f"{select} ORDER BY {distance} + 0 LIMIT %s"
    knn = [literal, *params, literal, limit]
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {from_sql} WHERE {where}", params)
        plan = cursor.fetchone()[0]
        estimated = float((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])
        skip_factor = float(settings.SEARCH_COUNT_SKIP_FACTOR)
        if skip_factor > 0 and estimated > cap * skip_factor:
            # More rows than an exact scan takes, by the planner's estimate: reading up to the cap
            # would be wasted work, costing more than the HNSW query itself, so it is skipped.
            # Should the estimate be wrong, a short HNSW answer still falls back to the exact scan
            # below, so the result is never short.
            matching = cap + 1
        else:
            # The count and the exact scan in one pass: the distances of up to cap + 1 matching
            # rows, counted by the window. At most the cap means they are all of them, and their
            # nearest ``limit`` are the exact answer; past the cap, HNSW takes over.
            cursor.execute(
                f"""
                WITH matching AS MATERIALIZED (
                    SELECT e.item_id, {distance} AS distance FROM {from_sql} WHERE {where} LIMIT %s
                )
                SELECT item_id, 1 - distance, count(*) OVER () FROM matching ORDER BY distance LIMIT %s
                """,
                [literal, *params, cap + 1, limit],
            )
            rows = cursor.fetchall()
            matching = int(rows[0][2]) if rows else 0
            if matching <= cap:
                return [(row[0], float(row[1])) for row in rows], "exact", matching
        cursor.execute(_ef_search_sql(vectors_table), [limit, estimated])
        needed = int(cursor.fetchone()[0])
        if needed > int(settings.SEARCH_EF_SEARCH_MAX):
            # The filter keeps too small a share of the space for any ef_search allowed to find
            # ``limit`` of its rows (1 % of a million rows needs 2,000 candidates): HNSW would
            # come back short or wrong, so the matching rows are scanned, however many.
            cursor.execute(exact, knn)
            return [(row[0], float(row[1])) for row in cursor.fetchall()], "exact", matching
        cursor.execute(f"{select} ORDER BY {distance} LIMIT %s", knn)
        found = [(row[0], float(row[1])) for row in cursor.fetchall()]
        if len(found) >= limit:
            return found, "hnsw", matching
        cursor.execute(exact, knn)
        return [(row[0], float(row[1])) for row in cursor.fetchall()], "hnsw+exact", matching


def _ef_search_sql(vectors_table: str) -> str:
    """A statement taking (limit, estimated matching rows) that sets ``hnsw.ef_search`` for
    the transaction to enough candidates that ``limit`` of them survive the filter, within
    ``SEARCH_EF_SEARCH_MIN``..``MAX``, and returns how many it would take uncapped. The HNSW scan
    walks the whole space, so a filter keeping a fraction f of it needs about limit / f
    candidates; f comes from the planner's estimate (cheap), and is at least what the capped
    count already proved. One round trip: the table's size is read in the same statement."""
    proven = float(settings.SEARCH_EXACT_SCAN_MAX_ROWS)
    margin = float(settings.SEARCH_EF_SEARCH_MARGIN)
    low, high = int(settings.SEARCH_EF_SEARCH_MIN), int(settings.SEARCH_EF_SEARCH_MAX)
    fraction = f"least(1.0, greatest(%s::float8, {proven}) / greatest(reltuples::float8, 1.0))"
    wanted = f"ceil(%s::float8 / {fraction} * {margin})"
    # enable_seqscan off: on a small table the planner would rather sort every row by distance
    # than walk the graph (6 ms instead of 1.5 at 10k rows); this path is only taken when the
    # rows are too many for that.
    return (
        "SELECT wanted, "
        f"set_config('hnsw.ef_search', least(greatest(wanted, {low}), {high})::int::text, true), "
        "set_config('enable_seqscan', 'off', true) "
        f"FROM (SELECT {wanted} AS wanted FROM pg_class WHERE oid = '{vectors_table}'::regclass) AS ef"
    )
