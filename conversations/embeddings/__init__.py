"""Text → vectors, through the backend chosen by ``settings.EMBEDDINGS``.

``EMBEDDINGS = {"BACKEND": "<dotted path>", "MODEL": str, "DIMENSIONS": int, "OPTIONS": {...}}``
(built from the environment in ``convo/settings/embeddings.py``). ``get_embedder()`` is the
process's configured embedder, built once (the local model loads once per process);
``embedder_from_config`` builds any other, e.g. the target of a model switch, side by side.
Failures surface only as the ``EmbeddingError`` subclasses of ``base``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from conversations.embeddings.base import (
    Embedder,
    EmbeddingError,
    EmbeddingInvalid,
    EmbeddingRejected,
    EmbeddingUnavailable,
)

__all__ = [
    "Embedder",
    "EmbeddingError",
    "EmbeddingInvalid",
    "EmbeddingRejected",
    "EmbeddingUnavailable",
    "config_for_this_process",
    "embedder_from_config",
    "get_embedder",
]


def embedder_from_config(config: Mapping[str, Any]) -> Embedder:
    """A new embedder from an ``EMBEDDINGS``-shaped mapping. ``ImproperlyConfigured`` if the
    backend cannot be imported, does not accept the options, or does not produce ``DIMENSIONS``."""
    try:
        backend, model, dimensions = config["BACKEND"], config["MODEL"], int(config["DIMENSIONS"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"EMBEDDINGS needs BACKEND, MODEL and an integer DIMENSIONS: {exc!r}") from exc
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(f"EMBEDDINGS BACKEND {backend!r} cannot be imported: {exc}") from exc
    kwargs = {"model": model, "dimensions": dimensions, **dict(config.get("OPTIONS") or {})}
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a builtin without a signature: let the call itself complain
        signature = None
    try:
        if signature is not None:
            signature.bind(**kwargs)
        embedder = cls(**kwargs)
    except TypeError as exc:
        raise ImproperlyConfigured(f"EMBEDDINGS OPTIONS do not fit {backend}: {exc}") from exc
    if not isinstance(embedder, Embedder):
        raise ImproperlyConfigured(f"{backend} does not implement the Embedder protocol")
    if embedder.dimensions != dimensions:
        raise ImproperlyConfigured(f"{backend} reports {embedder.dimensions} dimensions, configured {dimensions}")
    return embedder


LOCAL_BACKEND = "conversations.embeddings.local.SentenceTransformerEmbedder"
# Options of the local backend that say how this process runs the model, not which model it is.
_LOCAL_PROCESS_OPTIONS = ("process", "timeout_seconds")


def config_for_this_process(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a space's stored config, say) with the local backend's process options taken
    from this process's settings (``EMBEDDINGS_LOCAL_PROCESS``), not from whatever was stored
    when the space was made: how to run a model is this deployment's choice."""
    adjusted = dict(config)
    if adjusted.get("BACKEND") == LOCAL_BACKEND:
        options = {k: v for k, v in dict(adjusted.get("OPTIONS") or {}).items() if k not in _LOCAL_PROCESS_OPTIONS}
        adjusted["OPTIONS"] = {**options, **getattr(settings, "EMBEDDINGS_LOCAL_PROCESS", {})}
    return adjusted


@functools.lru_cache(maxsize=1)
def get_embedder() -> Embedder:
    """The configured embedder, built on first use and then shared by the whole process."""
    return embedder_from_config(settings.EMBEDDINGS)


def _forget_embedder(*, setting: str, **kwargs: Any) -> None:
    """Tests that override ``EMBEDDINGS`` get an embedder built from the override."""
    if setting == "EMBEDDINGS":
        get_embedder.cache_clear()


setting_changed.connect(_forget_embedder, dispatch_uid="conversations.embeddings.forget_embedder")
