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

# --- read replica (docs/scaling.md) -------------------------------------------------------------------
# postgres://… of a streaming replica of DATABASE_URL. Set: convo/settings/database.py adds a
# `replica` alias and the router below sends the reads of search, the clusters list and the
# knowledge search there (convo/db_router.py); everything else stays on the primary. Unset: no router.
# (Read here but not kept as a setting: the URL may hold a password.)
DATABASE_ROUTERS: list[str] = ["convo.db_router.ReplicaRouter"] if env.str("DATABASE_REPLICA_URL", default="") else []

# --- metric views (metrics/, docs/operations.md "Metric views") -----------------------------------------
# How often the django-q2 schedules (manage.py convo_schedules) refresh each materialized view:
# conversation_metrics (daily rows, all time) hourly, performance_stats (hourly rows, 7 days) every 5 min.
METRICS_CONVERSATION_REFRESH_MINUTES: int = env.int("METRICS_CONVERSATION_REFRESH_MINUTES", default=60)
METRICS_PERFORMANCE_REFRESH_MINUTES: int = env.int("METRICS_PERFORMANCE_REFRESH_MINUTES", default=5)
# statement_timeout of one refresh (it reads whole tables, so DB_STATEMENT_TIMEOUT_MS would cut it).
# Keep it under Q_TIMEOUT_SECONDS, or the worker is killed before the database gives up. 0: none.
METRICS_REFRESH_TIMEOUT_SECONDS: float = env.float("METRICS_REFRESH_TIMEOUT_SECONDS", default=100.0)
# The dashboard's default window in days (?days= overrides it, 1 to 366).
METRICS_DASHBOARD_DAYS: int = env.int("METRICS_DASHBOARD_DAYS", default=30)

# --- timings, stats API, Prometheus, alerts (docs/operations.md) ----------------------------------
# Where every process's timings meet: "auto" (Redis with REDIS_URL, else the database), "redis",
# or "database".
TIMINGS_STORE: str = env.str("TIMINGS_STORE", default="auto")
# How often each process adds its timings to the store (sooner when they pile up). The stats lag
# by at most this. 0: no flusher thread (the test settings; counts wait for timings_flush()).
TIMINGS_FLUSH_SECONDS: float = env.float("TIMINGS_FLUSH_SECONDS", default=10.0)
# The sliding windows (minutes, the current one included) the percentiles are given for; the
# longest is how long timings are kept.
TIMINGS_WINDOWS_MINUTES: list[int] = [int(w) for w in env.list("TIMINGS_WINDOWS_MINUTES", default=["5", "60"])]
# Key prefix of the per-minute hashes in Redis.
TIMINGS_REDIS_PREFIX: str = env.str("TIMINGS_REDIS_PREFIX", default="convo:timings")
# A bearer token that opens /api/v1/ops/stats and /api/v1/ops/alerts to tools (staff sessions
# always may). Empty: staff only.
OPS_TOKEN: str = env.str("OPS_TOKEN", default="")
# /metrics: off (404) unless enabled; then open to `Authorization: Bearer <METRICS_TOKEN>` and to
# the client addresses or networks in METRICS_ALLOWED_IPS (REMOTE_ADDR: behind a proxy, use the token).
METRICS_ENABLED: bool = env.bool("METRICS_ENABLED", default=False)
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS: list[str] = env.list("METRICS_ALLOWED_IPS", default=[])
# Alert rules (seed 000's thresholds); each threshold 0 turns its rule off. The latency rules read
# the p95 of the last ALERT_WINDOW_MINUTES and stay quiet below ALERT_MIN_SAMPLES timings.
ALERT_WINDOW_MINUTES: int = env.int("ALERT_WINDOW_MINUTES", default=5)
ALERT_MIN_SAMPLES: int = env.int("ALERT_MIN_SAMPLES", default=20)
ALERT_INGEST_ACK_P95_MS: float = env.float("ALERT_INGEST_ACK_P95_MS", default=20.0)
ALERT_EMBEDDING_P95_MS: float = env.float("ALERT_EMBEDDING_P95_MS", default=500.0)
ALERT_BATCH_INSERT_P95_MS: float = env.float("ALERT_BATCH_INSERT_P95_MS", default=100.0)
# Today's (UTC) worker cache hit rate below this fires, once there were ALERT_CACHE_MIN_LOOKUPS lookups.
ALERT_CACHE_HIT_RATE_MIN: float = env.float("ALERT_CACHE_HIT_RATE_MIN", default=0.20)
ALERT_CACHE_MIN_LOOKUPS: int = env.int("ALERT_CACHE_MIN_LOOKUPS", default=100)
# Pending items (all kinds) above this fire.
ALERT_QUEUE_SIZE_MAX: int = env.int("ALERT_QUEUE_SIZE_MAX", default=500)
# The oldest pending item waiting longer than this fires (embedding lag).
ALERT_EMBEDDING_LAG_SECONDS: float = env.float("ALERT_EMBEDDING_LAG_SECONDS", default=300.0)
# Raised and resolved alerts are POSTed here as JSON when set; a failure is logged, never retried.
ALERT_WEBHOOK_URL: str = env.str("ALERT_WEBHOOK_URL", default="")
ALERT_WEBHOOK_TIMEOUT_SECONDS: float = env.float("ALERT_WEBHOOK_TIMEOUT_SECONDS", default=3.0)
