"""Long maintenance statements (HNSW index builds) run without the connection's statement timeout."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from conversations.models import EmbeddingSpace, SpaceState
from conversations.services.embedding_spaces import embedding_space_index
from convo.db import no_statement_timeout

pytestmark = pytest.mark.django_db


def _timeout() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        return str(cursor.fetchone()[0])


def test_the_timeout_is_lifted_inside_and_restored_after_even_when_nested():
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = '1234ms'")
    with no_statement_timeout():
        assert _timeout() == "0"
        with no_statement_timeout():
            assert _timeout() == "0"
        assert _timeout() == "0"  # the inner block gives back what it found, not the default
    assert _timeout() == "1234ms"


def test_an_index_build_runs_without_the_timeout_and_gives_it_back():
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = '4321ms'")
    seen: dict[str, str] = {}

    def record(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if sql.startswith("CREATE INDEX"):
            context["cursor"].execute("SHOW statement_timeout")
            index = re.search(r"\w+_hnsw_space_\d+", sql)
            seen[index.group() if index else sql] = context["cursor"].fetchone()[0]
        return execute(sql, params, many, context)

    space = EmbeddingSpace.objects.create(model_id="test:timeout", dimensions=8, state=SpaceState.BUILDING)
    with connection.execute_wrapper(record):
        embedding_space_index(space=space)

    assert seen and set(seen.values()) == {"0"}
    assert any(name.startswith("msg_hnsw_space_") for name in seen)
    assert _timeout() == "4321ms"


def test_a_failure_inside_the_block_is_the_error_raised():
    """The restore is skipped in a failed transaction (its rollback undoes the change), so the
    caller sees what failed, not "current transaction is aborted"."""
    with (
        pytest.raises(DatabaseError, match="division by zero"),
        transaction.atomic(),
        no_statement_timeout(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT 1 / 0")
    assert _timeout() != "0"


def test_a_space_already_indexed_is_left_alone():
    """Every process calls this when it first meets a space: with the indexes built, it neither
    waits for a lock on the vector tables nor touches the connection's settings."""
    from django.test.utils import CaptureQueriesContext

    space = EmbeddingSpace.objects.create(model_id="test:indexed", dimensions=8, state=SpaceState.BUILDING)
    embedding_space_index(space=space)

    with CaptureQueriesContext(connection) as queries:
        embedding_space_index(space=space)

    written = [q["sql"] for q in queries if "CREATE INDEX" in q["sql"] or "statement_timeout" in q["sql"]]
    assert written == []
