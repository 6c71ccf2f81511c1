"""Ollama's batch endpoint, ``POST /api/embed`` (Ollama >= 0.3.4; not the older ``/api/embeddings``).

Request ``{"model": ..., "input": [texts]}``; answer ``{"model": ..., "embeddings": [[...], ...]}``
in input order; errors are ``{"error": "message"}`` with a 4xx/5xx status (404 for a model that
was never pulled, which is ``EmbeddingRejected``: pulling is an operator's job, not a retry's).
"""

from __future__ import annotations

from typing import Any

from conversations.embeddings.base import EmbeddingInvalid
from conversations.embeddings.remote import HttpEmbedder


def ollama_error_message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


class OllamaEmbedder(HttpEmbedder):
    """Embeds through a local or remote Ollama. ``model_id`` is ``"ollama:<model>"``."""

    provider = "ollama"

    def __init__(self, *, model: str, dimensions: int, url: str = "http://127.0.0.1:11434", **options: Any) -> None:
        super().__init__(model=model, dimensions=dimensions, url=url, error_message=ollama_error_message, **options)
        self.model_id = f"ollama:{model}"

    def _request(self, texts: list[str]) -> Any:
        return self.client.post_json("/api/embed", {"model": self.model, "input": texts})

    def _vectors(self, answer: Any, count: int) -> Any:
        if not isinstance(answer, dict) or "embeddings" not in answer:
            raise EmbeddingInvalid(f"ollama answer has no 'embeddings': {str(answer)[:200]}")
        return answer["embeddings"]
