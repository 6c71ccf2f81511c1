"""Any OpenAI-compatible ``POST /v1/embeddings`` (OpenAI itself, vLLM, llama.cpp, LM Studio, …).

Request ``{"model", "input": [texts], "encoding_format": "float"}`` plus ``"dimensions"`` when
``send_dimensions`` is on (only models that can shorten their vectors accept it, such as
``text-embedding-3-*``; others answer 400). Answer ``{"object": "list", "data": [{"index": i,
"embedding": [...]}, ...], "model", "usage"}``, where ``data`` is put back in ``index`` order.
Errors are ``{"error": {"message", "type", "code"}}``; 401 (bad key) is ``EmbeddingRejected``.

The API key is read from the environment variable named by ``api_key_env`` when the embedder is
built, never from settings, and is sent only as ``Authorization: Bearer``. A server that needs no
key (a local vLLM) may run without one; ``api.openai.com`` may not.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.base import EmbeddingInvalid
from conversations.embeddings.remote import HttpEmbedder


def openai_error_message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code") or error.get("type")
        if isinstance(message, str) and message:
            return f"{message} [{code}]" if isinstance(code, str) and code else message
    return error if isinstance(error, str) else None


class OpenAIEmbedder(HttpEmbedder):
    """``model_id`` is ``"openai:<model>"``, or ``"openai:<model>@<dims>"`` when ``dimensions`` is
    sent (the same model shortened to another size gives vectors of another space)."""

    provider = "openai"

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        url: str = "https://api.openai.com",
        api_key_env: str = "OPENAI_API_KEY",
        send_dimensions: bool = False,
        **options: Any,
    ) -> None:
        key = os.environ.get(api_key_env, "").strip() if api_key_env else ""
        if not key and urlsplit(url).hostname == "api.openai.com":
            raise ImproperlyConfigured(f"the OpenAI API key is read from ${api_key_env}, which is empty")
        base = url.rstrip("/")
        base = base.removesuffix("/v1")  # accept the SDK-style ".../v1" base URL as well
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        super().__init__(
            model=model, dimensions=dimensions, url=base, headers=headers, error_message=openai_error_message, **options
        )
        self.send_dimensions = send_dimensions
        self.model_id = f"openai:{model}@{dimensions}" if send_dimensions else f"openai:{model}"

    def _request(self, texts: list[str]) -> Any:
        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.send_dimensions:
            payload["dimensions"] = self.dimensions
        return self.client.post_json("/v1/embeddings", payload)

    def _vectors(self, answer: Any, count: int) -> Any:
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise EmbeddingInvalid(f"openai answer has no list of embeddings in 'data': {str(answer)[:200]}")
        if len(data) != count:  # let the shared check report the count
            return [item.get("embedding") for item in data]
        indexes = [item.get("index") for item in data]
        if any(type(index) is not int for index in indexes) or sorted(indexes) != list(range(count)):
            raise EmbeddingInvalid(f"openai answer indexes {indexes[:10]} are not a permutation of 0..{count - 1}")
        return [item.get("embedding") for item in sorted(data, key=lambda item: item["index"])]
