"""The private PostgreSQL 16 + pgvector that convo runs on when ``DATABASE_URL`` is unset.

The server comes from the ``pgserver`` wheel, keeps its files under ``<data dir>/postgres`` and
listens only on a Unix socket inside that folder, so it never collides with a system PostgreSQL.
Starting is idempotent: a second caller finds the running postmaster and reuses it. Nothing here
stops the server implicitly; whoever started it (the launcher, the test session) stops it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# True once this process has started the server (rather than found it running), so the process
# that started it, such as a test session, knows to stop it.
STARTED_BY_THIS_PROCESS = False

# Server settings written once into postgresql.auto.conf. Durability settings stay at PostgreSQL's
# safe defaults (fsync, synchronous_commit, full_page_writes): an acknowledged row must survive a
# crash. The rest sizes the server for a single machine running web, worker and database.
_SERVER_SETTINGS: dict[str, str] = {
    "max_connections": "200",
    "shared_buffers": "512MB",
    "maintenance_work_mem": "512MB",
    "work_mem": "16MB",
    "effective_cache_size": "4GB",
    "wal_compression": "on",
    "max_wal_size": "2GB",
}


@dataclass(frozen=True)
class EmbeddedServer:
    pgdata: Path
    socket_dir: str
    port: int
    started_here: bool

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"


def embedded_server_start(*, data_dir: Path, database: str) -> EmbeddedServer:
    """Start (or find) the embedded server under ``data_dir`` and make sure ``database`` exists."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: only the embedded default needs it
    from pgserver.utils import PostmasterInfo

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    before = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    was_running = before is not None and before.is_running()
    fresh = not (pgdata / "PG_VERSION").exists()

    if not was_running:
        # pgserver keeps one handle per folder for the life of the process; after a stop that
        # handle is stale and would be returned without starting anything.
        pgserver.PostgresServer._instances.pop(pgdata, None)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if fresh:
        _configure(server)
    info = server.get_postmaster_info()
    embedded = EmbeddedServer(
        pgdata=pgdata,
        socket_dir=str(info.socket_dir),
        port=int(info.port or 5432),
        started_here=not was_running,
    )
    _ensure_database(embedded, database)
    if not was_running:
        global STARTED_BY_THIS_PROCESS
        STARTED_BY_THIS_PROCESS = True
        logger.info("embedded PostgreSQL started under %s", pgdata)
    return embedded


def embedded_server_stop(*, data_dir: Path) -> bool:
    """Stop the embedded server under ``data_dir`` (fast shutdown: clients are disconnected, data
    is flushed). Returns False when no server was running."""
    from pgserver import _commands
    from pgserver.utils import PostmasterInfo

    pgdata = (data_dir / "postgres").resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    user = "pgserver" if _running_as_root() else None
    _commands.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60
    )
    return True


def _configure(server: object) -> None:
    statements = "".join(f"ALTER SYSTEM SET {name} = '{value}';\n" for name, value in _SERVER_SETTINGS.items())
    server.psql(statements)  # type: ignore[attr-defined]
    from pgserver import _commands

    user = "pgserver" if _running_as_root() else None
    pgdata = server.pgdata  # type: ignore[attr-defined]
    _commands.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "-m", "fast", "restart"], pgdata=pgdata, user=user, timeout=60
    )
    # pgserver caches the postmaster info of the first start; refresh it after the restart.
    from pgserver.utils import PostmasterInfo

    server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)  # type: ignore[attr-defined]


def _ensure_database(server: EmbeddedServer, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
