"""Idempotent requests: the ``Idempotency-Key`` header.

The key is claimed by inserting its record first in the request's transaction. A concurrent
request with the same key blocks on the unique index until the first commits, then reads the stored
answer; if the first rolls back, the second proceeds as if it were first. So 50 concurrent
identical requests make exactly one set of rows and get one answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import connection, transaction

from conversations.models import IdempotencyRecord, Tenant
from convo.db import retry_on_deadlock
from convo.errors import Conflict

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: Any
    replayed: bool


def request_fingerprint(*, scope: str, data: Any) -> str:
    canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(scope.encode() + b"\0" + canonical).hexdigest()


@retry_on_deadlock()
@transaction.atomic
def idempotent_call(
    *, tenant: Tenant, scope: str, key: str, fingerprint: str, action: Callable[[], tuple[int, Any]]
) -> StoredResponse:
    """Run ``action`` once per (tenant, scope, key) and store its (status, JSON body).

    ``action`` runs inside this transaction, so the stored answer commits with the rows it
    describes. Raises ``Conflict`` when the key was used with a different request body.
    """
    table = IdempotencyRecord._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tenant_id, scope, key, fingerprint) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant_id, scope, key) DO NOTHING RETURNING id",
            [tenant.pk, scope, key, fingerprint],
        )
        claimed = cursor.fetchone()
        if claimed is None:
            cursor.execute(
                f"SELECT fingerprint, response_status, response_body FROM {table} "
                "WHERE tenant_id = %s AND scope = %s AND key = %s",
                [tenant.pk, scope, key],
            )
            stored_fingerprint, status, body = cursor.fetchone()
            if stored_fingerprint != fingerprint:
                raise Conflict(
                    "This Idempotency-Key was already used with a different request body.",
                    fields={"Idempotency-Key": ["Already used with a different request body."]},
                )
            return StoredResponse(
                status=status, body=orjson.loads(body) if isinstance(body, str) else body, replayed=True
            )

        status, body = action()
        cursor.execute(
            f"UPDATE {table} SET response_status = %s, response_body = %s WHERE id = %s",
            [status, orjson.dumps(body).decode(), claimed[0]],
        )
    return StoredResponse(status=status, body=body, replayed=False)
