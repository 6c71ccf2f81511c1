"""Read replica routing: chosen read paths go to the ``replica`` alias, everything else to ``default``.

Django's routers only see ``db_for_read(model)``: they cannot tell a search from the read a service
does before it writes. Routing every read to a replica would break read-your-writes everywhere
(an ingest acknowledged, then a 404 on the next request; a moderator's answer that is not there
yet), so the primary stays the default and only views that opt in read from the replica:

    @replica_reads()
    def post(self, request): ...

Inside that scope (a contextvar, so per thread and per asyncio task) a read goes to the replica
unless

* the router is not installed (``DATABASE_REPLICA_URL`` unset, so no ``replica`` alias either):
  then nothing changes;
* a transaction is open on ``default``: it must see its own writes and hold its own locks;
* the same model was written earlier in the scope (read-your-writes, per model: writing the
  embedding cache does not pin the messages a search reads afterwards).

Writes always go to ``default`` (also for an instance loaded from the replica, which Django would
otherwise save back to where it came from), and so do migrations: a replica is a physical copy of
the primary, never migrated itself. Raw SQL picks its connection with ``read_alias_for``.
Docs: docs/scaling.md ("Read replica").
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Model

REPLICA_DB_ALIAS = "replica"


@dataclass
class _ReplicaScope:
    """What one ``replica_reads`` scope has written so far (labels of models)."""

    written: set[str] = field(default_factory=set)


_scope: contextvars.ContextVar[_ReplicaScope | None] = contextvars.ContextVar("convo_replica_scope", default=None)


@contextlib.contextmanager
def replica_reads() -> Iterator[None]:
    """Let the reads in this block go to the replica (a context manager and a decorator). Use it
    on read-heavy paths that tolerate replication lag: search, lists, dashboards."""
    token = _scope.set(_ReplicaScope())
    try:
        yield
    finally:
        _scope.reset(token)


def replica_configured() -> bool:
    """Whether this router is installed: the settings install it exactly when they add the
    ``replica`` alias (DATABASE_REPLICA_URL), so it is the one switch raw SQL and the ORM share."""
    return any(isinstance(installed, ReplicaRouter) for installed in router.routers)


def read_alias_for(*, models: Iterable[type[Model]]) -> str:
    """The alias a read of ``models`` uses here: the replica inside ``replica_reads`` when none
    of them was written in the scope and no transaction is open on ``default``; otherwise
    ``default``. Raw SQL (``connections[alias].cursor()``) calls this; the ORM goes through the
    router, which applies the same rule."""
    scope = _scope.get()
    if scope is None or not replica_configured() or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return DEFAULT_DB_ALIAS
    if any(model._meta.label in scope.written for model in models):
        return DEFAULT_DB_ALIAS
    return REPLICA_DB_ALIAS


class ReplicaRouter:
    """Installed by DATABASE_ROUTERS when DATABASE_REPLICA_URL is set (convo/settings/operations.py)."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        if _scope.get() is None:
            return None  # Django's default: the instance's own database, else default
        return read_alias_for(models=[model])

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        scope = _scope.get()
        if scope is not None:
            scope.written.add(model._meta.label)
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # The replica holds the same rows as the primary: objects from either may be related.
        aliases = {DEFAULT_DB_ALIAS, REPLICA_DB_ALIAS}
        if obj1._state.db in aliases and obj2._state.db in aliases:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if db == REPLICA_DB_ALIAS:
            return False  # the replica receives the schema by replication
        return None
