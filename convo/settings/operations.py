"""Operations: liveness and readiness probes, and the slow-query log (docs/operations.md)."""

from __future__ import annotations

from convo.env import env

# --- /readyz ----------------------------------------------------------------------------------------
# The hard bound on each readiness check: a dependency that hangs is reported as timed out after
# this long, and /readyz answers within about this long whatever hangs (the checks run concurrently).
READYZ_CHECK_TIMEOUT_SECONDS: float = env.float("READYZ_CHECK_TIMEOUT_SECONDS", default=1.0)
# The database connection and the cache the checks use.
READYZ_DATABASE_ALIAS: str = env.str("READYZ_DATABASE_ALIAS", default="default")
READYZ_CACHE_ALIAS: str = env.str("READYZ_CACHE_ALIAS", default="default")
# false where no django-q2 cluster runs (web-only test rigs, synchronous tasks): the worker check is
# then reported as skipped.
READYZ_EXPECT_WORKER: bool = env.bool("READYZ_EXPECT_WORKER", default=True)
# Without a shared stats store (no Redis), a cluster is alive when no repeating schedule is overdue
# by more than this: the cluster's scheduler advances every due schedule about every 30 seconds.
READYZ_WORKER_STALE_SECONDS: float = env.float("READYZ_WORKER_STALE_SECONDS", default=120.0)
# The oldest pending conversation or message may wait this long for its embedding. 0: not checked.
READYZ_MAX_QUEUE_LAG_SECONDS: float = env.float("READYZ_MAX_QUEUE_LAG_SECONDS", default=300.0)
# Checks reported but not required for a 200 (database, cache, worker, queue_lag).
READYZ_OPTIONAL_CHECKS: list[str] = env.list("READYZ_OPTIONAL_CHECKS", default=[])

# --- slow queries -----------------------------------------------------------------------------------
# A query taking at least this many milliseconds is logged (logger convo.slow_queries, WARNING)
# with its fingerprint, duration and caller. 0 turns the log off.
SLOW_QUERY_MS: float = env.float("SLOW_QUERY_MS", default=200.0)
