"""Similar-message clustering, moderation and answer delivery (docs/clustering.md explains the
defaults and the measurements behind them)."""

from __future__ import annotations

from convo.env import env

# --- assignment -------------------------------------------------------------------------------
# A message joins the cluster with the best centred average-link score (clustering/services/
# scoring.py) when the score reaches this; otherwise it starts a cluster. Measured on Banking77
# with all-MiniLM-L6-v2 (docs/clustering.md): 0.38 gives ~2.8 clusters per intent at NMI 0.79;
# raise it for finer clusters (0.45: ~4.4 per intent, NMI 0.80). Per tenant: ClusteringPolicy.
CLUSTER_SIMILARITY_THRESHOLD: float = env.float("CLUSTER_SIMILARITY_THRESHOLD", default=0.38)
# Until a tenant has this many inbound messages in a space, its mean is too young to centre on:
# the plain cosine to a cluster's centroid decides instead, against the warm-up threshold.
CLUSTER_CENTERING_MIN_MESSAGES: int = env.int("CLUSTER_CENTERING_MIN_MESSAGES", default=50)
CLUSTER_WARMUP_SIMILARITY_THRESHOLD: float = env.float("CLUSTER_WARMUP_SIMILARITY_THRESHOLD", default=0.60)
# Messages this short (in characters, normalised) are also compared by wording with the nearest
# clusters' representative texts (rapidfuzz token_set_ratio, 0-100).
CLUSTER_SHORT_MESSAGE_CHARS: int = env.int("CLUSTER_SHORT_MESSAGE_CHARS", default=40)
CLUSTER_TEXT_SIMILARITY_THRESHOLD: float = env.float("CLUSTER_TEXT_SIMILARITY_THRESHOLD", default=90.0)
# Nearest clusters looked at per message.
CLUSTER_CANDIDATES: int = env.int("CLUSTER_CANDIDATES", default=10)
# Candidate search (docs/clustering.md, "Scale"): each worker process keeps a matrix of a
# tenant's joinable clusters per embedding space, caught up from the database by revision under
# the tenant's lock, and scores every cluster with numpy. A tenant with more joinable clusters
# than this (or whose matrix alone would not fit in CLUSTER_MATRIX_CACHE_MB) is searched in SQL.
# 0 turns the matrices off.
CLUSTER_MATRIX_MAX_CLUSTERS: int = env.int("CLUSTER_MATRIX_MAX_CLUSTERS", default=50_000)
# Matrices one process keeps (least recently used dropped first), and the memory they may take
# together: 4 bytes per dimension per cluster (10k clusters at 384 dimensions: ~15 MB).
CLUSTER_MATRIX_CACHE_ENTRIES: int = env.int("CLUSTER_MATRIX_CACHE_ENTRIES", default=64)
CLUSTER_MATRIX_CACHE_MB: int = env.int("CLUSTER_MATRIX_CACHE_MB", default=512)
# The SQL search: an exact scan for a tenant with at most this many joinable clusters; above, the
# space's HNSW index over joinable clusters, if CLUSTER_HNSW_INDEX made one. The index is off by
# default: every join rewrites a cluster's vector, and keeping an HNSW graph in step cost 2-4 ms
# per join (benchmark) for a search only tenants above both caps use. Turning it on builds the
# index of a space when the space's indexes are made (convo_embeddings_switch); turning it off
# leaves existing ones in place, still updated by every join but never used: drop them with
# DROP INDEX CONCURRENTLY cluster_hnsw_space_<id>.
CLUSTER_HNSW_INDEX: bool = env.bool("CLUSTER_HNSW_INDEX", default=False)
CLUSTER_EXACT_SCAN_MAX: int = env.int("CLUSTER_EXACT_SCAN_MAX", default=20_000)
CLUSTER_EF_SEARCH: int = env.int("CLUSTER_EF_SEARCH", default=200)

# --- reading --------------------------------------------------------------------------------------
# Cluster lists are cached this long (seed 002), and dropped at once by any change to the tenant's
# clusters. 0 turns the cache off.
CLUSTER_LIST_CACHE_SECONDS: int = env.int("CLUSTER_LIST_CACHE_SECONDS", default=10)
# Member messages shown with one cluster (detail) and moved by one split.
CLUSTER_DETAIL_MESSAGES: int = env.int("CLUSTER_DETAIL_MESSAGES", default=100)
CLUSTER_MAX_SPLIT_MESSAGES: int = env.int("CLUSTER_MAX_SPLIT_MESSAGES", default=1000)
# Characters in an answer or a label.
CLUSTER_MAX_ANSWER_CHARS: int = env.int("CLUSTER_MAX_ANSWER_CHARS", default=8_000)

# --- delivery -------------------------------------------------------------------------------------
# Webhook: per-request timeout, attempts before a delivery ends failed, first retry delay
# (doubling each time, capped), and deliveries sent per task run.
DELIVERY_TIMEOUT_SECONDS: float = env.float("DELIVERY_TIMEOUT_SECONDS", default=5.0)
DELIVERY_MAX_ATTEMPTS: int = env.int("DELIVERY_MAX_ATTEMPTS", default=8)
DELIVERY_BACKOFF_SECONDS: float = env.float("DELIVERY_BACKOFF_SECONDS", default=5.0)
DELIVERY_BACKOFF_MAX_SECONDS: float = env.float("DELIVERY_BACKOFF_MAX_SECONDS", default=3600.0)
DELIVERY_BATCH_SIZE: int = env.int("DELIVERY_BATCH_SIZE", default=50)
# A claimed delivery whose sender died is retried after this long.
DELIVERY_LEASE_SECONDS: float = env.float("DELIVERY_LEASE_SECONDS", default=60.0)
# One send task keeps claiming batches for at most this long (the every-minute schedule and the
# kicks start the next one); keep it under Q_TIMEOUT_SECONDS.
DELIVERY_DRAIN_SECONDS: float = env.float("DELIVERY_DRAIN_SECONDS", default=50.0)
# Pull mode: delivery ids acknowledged by one POST /api/v1/deliveries/ack.
DELIVERY_MAX_ACK_IDS: int = env.int("DELIVERY_MAX_ACK_IDS", default=500)
# Webhooks go only to public addresses: a URL whose host is, or resolves to, a loopback, private,
# link-local or otherwise non-global address is refused (SSRF: a tenant's URL must not reach the
# services beside convo). Development and tests deliver to local servers and turn it on.
DELIVERY_ALLOW_PRIVATE_ADDRESSES: bool = env.bool("DELIVERY_ALLOW_PRIVATE_ADDRESSES", default=False)

# --- clusters API ---------------------------------------------------------------------------------
# Clusters merged into another by one request.
CLUSTER_MAX_MERGE: int = env.int("CLUSTER_MAX_MERGE", default=50)
# The most recent members shown with each cluster of a list (one query for the whole page).
CLUSTER_LIST_PREVIEW_MESSAGES: int = env.int("CLUSTER_LIST_PREVIEW_MESSAGES", default=3)
