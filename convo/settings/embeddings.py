"""Which embedder turns text into vectors (conversations/embeddings). One backend per process,
chosen by EMBEDDINGS_BACKEND; every vector is stored with its model id, so switching backend or
model starts a new embedding space rather than mixing vectors.

Backends: ``local`` (default; the bundled all-MiniLM-L6-v2, offline, 384 dims), ``ollama``
(POST {url}/api/embed), ``openai`` (any OpenAI-compatible POST {url}/v1/embeddings) and
``hashing`` (deterministic, for tests and demos). The API key of ``openai`` is read from the
variable named by EMBEDDINGS_API_KEY_ENV when the embedder is built, never kept in settings.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from convo.env import env

__all__ = ["EMBEDDINGS", "EMBEDDINGS_DEFAULT_THREADS", "EMBEDDINGS_LOCAL_PROCESS"]

_BACKENDS = {
    "local": "conversations.embeddings.local.SentenceTransformerEmbedder",
    "ollama": "conversations.embeddings.ollama.OllamaEmbedder",
    "openai": "conversations.embeddings.openai.OpenAIEmbedder",
    "hashing": "conversations.embeddings.hashing.HashingEmbedder",
}
_DEFAULT_MODELS = {
    "local": "all-MiniLM-L6-v2",
    "ollama": "nomic-embed-text",
    "openai": "text-embedding-3-small",
    "hashing": "v1",
}
_DEFAULT_URLS = {"ollama": "http://127.0.0.1:11434", "openai": "https://api.openai.com"}

_backend: str = env.str("EMBEDDINGS_BACKEND", default="local").strip().lower()
if _backend not in _BACKENDS:
    raise ImproperlyConfigured(f"EMBEDDINGS_BACKEND must be one of {', '.join(_BACKENDS)}, not {_backend!r}")

_options: dict[str, Any] = {}
if _backend in _DEFAULT_URLS:
    _options = {
        "url": env.str("EMBEDDINGS_URL", default=_DEFAULT_URLS[_backend]),
        # Per socket operation of one request; a slower answer is retried.
        "timeout_seconds": env.float("EMBEDDINGS_TIMEOUT_SECONDS", default=10.0),
        # Retries after the first attempt, with exponential backoff (honouring Retry-After).
        "max_retries": env.int("EMBEDDINGS_MAX_RETRIES", default=4),
        # Requests in flight to the provider at once, per process.
        "max_concurrency": env.int("EMBEDDINGS_MAX_CONCURRENCY", default=4),
        # Texts per HTTP request; a bigger embed() call is split and sent concurrently.
        "request_batch_size": env.int("EMBEDDINGS_REQUEST_BATCH_SIZE", default=128),
        # No request (with its retries) outlasts this; defaults to the worker's batch timeout.
        "deadline_seconds": env.float(
            "EMBEDDINGS_DEADLINE_SECONDS", default=env.float("EMBEDDING_BATCH_TIMEOUT_SECONDS", default=30.0)
        ),
    }
if _backend == "openai":
    _options["api_key_env"] = env.str("EMBEDDINGS_API_KEY_ENV", default="OPENAI_API_KEY")
    # Ask the model for DIMENSIONS-long vectors (text-embedding-3-* only); off: the model's own size.
    _options["send_dimensions"] = env.bool("EMBEDDINGS_SEND_DIMENSIONS", default=False)
# How this process runs a local model, whichever space it belongs to: layered over a space's
# stored config when its embedder is built (conversations.embeddings.config_for_this_process).
# The model runs in a child process of each process that embeds, so the worker's storing thread
# and the model never wait for each other's interpreter lock (embeddings/model_process.py); the
# timeout is the longest wait for one embed() call's vectors before the child is taken for hung.
EMBEDDINGS_LOCAL_PROCESS: dict[str, Any] = (
    {
        "process": True,
        "timeout_seconds": env.float(
            "EMBEDDINGS_PROCESS_TIMEOUT_SECONDS", default=env.float("EMBEDDING_BATCH_TIMEOUT_SECONDS", default=30.0)
        ),
    }
    if env.bool("EMBEDDINGS_PROCESS", default=True)
    else {}
)
if _backend == "local":
    _options.update(EMBEDDINGS_LOCAL_PROCESS)
if _backend == "local" and env.int("EMBEDDINGS_THREADS", default=0) > 0:
    # Torch's intra-op threads (process-wide); unset: EMBEDDINGS_DEFAULT_THREADS below.
    _options["threads"] = env.int("EMBEDDINGS_THREADS")

# Torch threads of the local model when EMBEDDINGS_THREADS is unset: this machine's cores divided
# among the Q_WORKERS worker processes (at least 1). Every worker process runs its own model, and
# torch's own default (a thread per core in each process) oversubscribes the cores: on 2 cores with
# 2 workers, acknowledgement-to-searchable p95 at 50 msg/s was 14.5 s with it and 0.38 s with one
# thread per process (docs/benchmarks.md, issue 3).
EMBEDDINGS_DEFAULT_THREADS: int = max(1, len(os.sched_getaffinity(0)) // max(1, env.int("Q_WORKERS", default=2)))

EMBEDDINGS: dict[str, Any] = {
    "BACKEND": _BACKENDS[_backend],
    "MODEL": env.str("EMBEDDINGS_MODEL", default=_DEFAULT_MODELS[_backend]),
    "DIMENSIONS": env.int("EMBEDDINGS_DIMENSIONS", default=384),
    "OPTIONS": _options,
}
