"""DATABASES: ``DATABASE_URL`` when set, otherwise the embedded PostgreSQL under the data dir.

Seed 001's pool settings, on Django's own psycopg pool: a bounded pool per process, a bounded
wait for a connection, a connect timeout, a statement timeout so a runaway query cannot hold a
connection forever, an idle-in-transaction timeout, and an application name that shows up in
``pg_stat_activity``. With ``DATABASE_REPLICA_URL``, a ``replica`` alias with the same settings,
read by the paths that opt in (convo/db_router.py, docs/scaling.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from convo.env import env


def database_settings(*, data_dir: Path) -> dict[str, dict[str, Any]]:
    if env.str("DATABASE_URL", default=""):
        default = env.db_url("DATABASE_URL")
    else:
        from convo.embedded_db import embedded_server_start

        server = embedded_server_start(data_dir=data_dir, database=env.str("CONVO_DB_NAME", default="convo"))
        default = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": env.str("CONVO_DB_NAME", default="convo"),
            "USER": "postgres",
            "HOST": server.socket_dir,
            "PORT": str(server.port),
        }
    default["ENGINE"] = "django.db.backends.postgresql"
    # Parallel test runs against one server each need their own test database.
    default["TEST"] = {"NAME": env.str("CONVO_TEST_DB_NAME", default=f"test_{default['NAME']}")}
    databases = {"default": _connection_configure(default)}
    if env.str("DATABASE_REPLICA_URL", default=""):
        # A streaming replica of the primary for the read paths that opt in (convo/db_router.py).
        # Tests mirror it to default: the suite never creates a test database on a replica.
        replica = env.db_url("DATABASE_REPLICA_URL")
        replica["ENGINE"] = "django.db.backends.postgresql"
        replica["TEST"] = {"MIRROR": "default"}
        databases["replica"] = _connection_configure(replica)
    return databases


def _connection_configure(db: dict[str, Any]) -> dict[str, Any]:
    """The timeouts, the application name and the pool (or persistent connections), the same
    for every alias."""
    statement_timeout_ms = env.int("DB_STATEMENT_TIMEOUT_MS", default=10_000)
    idle_in_tx_timeout_ms = env.int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=60_000)
    db["OPTIONS"] = {
        # libpq waits this long for a connection (its minimum is 2 s; psycopg's default is 130 s).
        "connect_timeout": env.int("DB_CONNECT_TIMEOUT_SECONDS", default=5),
        **db.get("OPTIONS", {}),
        "application_name": env.str("DB_APPLICATION_NAME", default="convo"),
        "options": f"-c statement_timeout={statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={idle_in_tx_timeout_ms}",
    }
    # Behind PgBouncer in transaction pooling, a server-side cursor (QuerySet.iterator()) would
    # outlive the transaction's server connection: docs/scaling.md.
    db["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DB_DISABLE_SERVER_SIDE_CURSORS", default=False)
    if not _pool_allowed():
        # Plain connections, which django-q2 closes around its forks, reused for a minute.
        db["CONN_MAX_AGE"] = 60
        db["CONN_HEALTH_CHECKS"] = True
        return db
    db["CONN_MAX_AGE"] = 0  # the pool owns connection lifetime
    db["CONN_HEALTH_CHECKS"] = False
    db["OPTIONS"] = {
        **db["OPTIONS"],
        "pool": {
            "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
            "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
            "timeout": env.float("DB_POOL_TIMEOUT_SECONDS", default=2.0),
            "max_idle": env.float("DB_POOL_MAX_IDLE_SECONDS", default=30.0),
            "max_lifetime": env.float("DB_POOL_MAX_LIFETIME_SECONDS", default=3600.0),
        },
    }
    return db


def _pool_allowed() -> bool:
    """The django-q2 cluster forks its workers from a process that has already touched the
    database: a pool made before the fork would hand the same sockets to several processes (their
    replies get crossed). So the cluster runs without a pool; so does anything with DB_POOL=false."""
    return env.bool("DB_POOL", default=True) and "qcluster" not in sys.argv[1:2]
