"""The embedding worker. Batch size, batch timeout and concurrent batches default to seed 000's
BATCH_SIZE, BATCH_TIMEOUT_MS and MAX_CONCURRENT_BATCHES."""

from __future__ import annotations

from convo.env import env

# Items claimed and sent to the provider together.
EMBEDDING_BATCH_SIZE: int = env.int("EMBEDDING_BATCH_SIZE", default=10)
# How long one batch may take; a claim older than twice this is handed back (the lease).
EMBEDDING_BATCH_TIMEOUT_SECONDS: float = env.float("EMBEDDING_BATCH_TIMEOUT_SECONDS", default=30.0)
EMBEDDING_LEASE_SECONDS: float = env.float("EMBEDDING_LEASE_SECONDS", default=2 * EMBEDDING_BATCH_TIMEOUT_SECONDS)
# Drain tasks started per kick; each claims its own batches (SKIP LOCKED), up to Q_WORKERS at once.
EMBEDDING_CONCURRENT_BATCHES: int = env.int("EMBEDDING_CONCURRENT_BATCHES", default=3)
# Claims before an item that keeps failing ends `failed` with its last error.
EMBEDDING_MAX_ATTEMPTS: int = env.int("EMBEDDING_MAX_ATTEMPTS", default=5)
# How long one drain task works before handing over to a fresh one (keeps tasks under Q timeout).
EMBEDDING_DRAIN_SECONDS: float = env.float("EMBEDDING_DRAIN_SECONDS", default=60.0)
# At most one kick (enqueueing drain tasks) per this many seconds per cache.
EMBEDDING_KICK_INTERVAL_SECONDS: float = env.float("EMBEDDING_KICK_INTERVAL_SECONDS", default=1.0)
# HNSW build parameters (seed 002: m=16, ef_construction=64 up to ~100k rows per space).
EMBEDDING_HNSW_M: int = env.int("EMBEDDING_HNSW_M", default=16)
EMBEDDING_HNSW_EF_CONSTRUCTION: int = env.int("EMBEDDING_HNSW_EF_CONSTRUCTION", default=64)

# --- search ---------------------------------------------------------------------------------------
# Filters matching at most this many rows are answered by an exact scan of those rows (correct by
# construction; about a microsecond a row, so at most ~6 ms); larger ones by HNSW with a raised
# ef_search.
SEARCH_EXACT_SCAN_MAX_ROWS: int = env.int("SEARCH_EXACT_SCAN_MAX_ROWS", default=5_000)
SEARCH_EF_SEARCH_MIN: int = env.int("SEARCH_EF_SEARCH_MIN", default=100)
# pgvector accepts at most 1000. A filter that would need more is answered by an exact scan.
SEARCH_EF_SEARCH_MAX: int = min(env.int("SEARCH_EF_SEARCH_MAX", default=1000), 1000)
SEARCH_EF_SEARCH_MARGIN: float = env.float("SEARCH_EF_SEARCH_MARGIN", default=2.0)
# When the planner expects more than this many times SEARCH_EXACT_SCAN_MAX_ROWS matching rows, the
# capped pass that counts the matching rows (and answers exactly when they are few) is skipped and
# HNSW is taken: past the cap that pass is wasted work (~6 ms at the cap), the HNSW query ~1.5 ms.
# 0 never skips it.
SEARCH_COUNT_SKIP_FACTOR: float = env.float("SEARCH_COUNT_SKIP_FACTOR", default=1.0)
# Nearest candidates fetched per requested result, to re-rank by the blended score.
SEARCH_CANDIDATE_FACTOR: int = env.int("SEARCH_CANDIDATE_FACTOR", default=3)
SEARCH_ADAPTIVE_STEP: float = env.float("SEARCH_ADAPTIVE_STEP", default=0.1)
SEARCH_ADAPTIVE_FLOOR: float = env.float("SEARCH_ADAPTIVE_FLOOR", default=0.3)
SEARCH_MAX_K: int = env.int("SEARCH_MAX_K", default=100)
# Search results are cached this long (and dropped at once when the searched data changes).
SEARCH_CACHE_SECONDS: int = env.int("SEARCH_CACHE_SECONDS", default=300)
# Without REDIS_URL the cache is per process, and a change seen by one process would not drop the
# results cached by another: the result cache is then off unless this says otherwise (one process).
SEARCH_CACHE_LOCAL: bool = env.bool("SEARCH_CACHE_LOCAL", default=False)
# Context for a prompt: default token budget, and the most recent messages always included.
CONTEXT_DEFAULT_TOKEN_BUDGET: int = env.int("CONTEXT_DEFAULT_TOKEN_BUDGET", default=1500)
CONTEXT_MAX_TOKEN_BUDGET: int = env.int("CONTEXT_MAX_TOKEN_BUDGET", default=32_000)
