"""What the HTTP backends (Ollama, OpenAI-compatible) share: options, batching, validation.

A subclass says how one request batch is sent (``_request``) and how vectors are read out of the
answer (``_vectors``); this class splits the input into ``request_batch_size`` slices, sends them
through one ``JsonHttpClient`` (timeouts, retries, process-wide concurrency bound), validates every
answer with ``validate_vectors`` and reassembles the vectors in input order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.batching import embed_in_batches
from conversations.embeddings.http import ErrorMessage, JsonHttpClient, RetryPolicy, Sleep, Uniform
from conversations.embeddings.validation import texts_checked, validate_vectors


class HttpEmbedder:
    """Base of the HTTP embedders. Not used directly: see ``OllamaEmbedder``, ``OpenAIEmbedder``."""

    model_id: str
    dimensions: int
    provider: str = "provider"

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        url: str,
        error_message: ErrorMessage,
        headers: dict[str, str] | None = None,
        timeout_seconds: float = 10.0,
        deadline_seconds: float | None = 30.0,
        max_retries: int = 4,
        max_concurrency: int = 4,
        request_batch_size: int = 128,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 20.0,
        sleep: Sleep = time.sleep,
        uniform: Uniform = random.uniform,
    ) -> None:
        if not model:
            raise ImproperlyConfigured(f"{self.provider} needs a model name")
        if dimensions < 1:
            raise ImproperlyConfigured(f"{self.provider} dimensions must be at least 1, got {dimensions}")
        if request_batch_size < 1:
            raise ImproperlyConfigured(f"request_batch_size must be at least 1, got {request_batch_size}")
        self.model = model
        self.dimensions = dimensions
        self.request_batch_size = request_batch_size
        self.max_concurrency = max_concurrency
        self.client = JsonHttpClient(
            base_url=url,
            provider=self.provider,
            error_message=error_message,
            headers=headers,
            timeout_seconds=timeout_seconds,
            deadline_seconds=deadline_seconds,
            max_concurrency=max_concurrency,
            retry=RetryPolicy(max_retries=max_retries, base_delay=retry_base_delay, max_delay=retry_max_delay),
            sleep=sleep,
            uniform=uniform,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id} at {self.client.origin}>"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; see ``JsonHttpClient`` for the errors and the budget."""
        return embed_in_batches(
            texts_checked(texts),
            batch_size=self.request_batch_size,
            max_workers=self.max_concurrency,
            embed_batch=self._embed_batch,
        )

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        answer = self._request(texts)
        return validate_vectors(
            self._vectors(answer, len(texts)), count=len(texts), dimensions=self.dimensions, source=self.provider
        )

    def _request(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def _vectors(self, answer: Any, count: int) -> Any:
        """The list of vectors in ``answer``, in input order; ``EmbeddingInvalid`` if absent."""
        raise NotImplementedError
