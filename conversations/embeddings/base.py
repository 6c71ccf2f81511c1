"""The contract between convo and whatever turns text into vectors.

An ``Embedder`` takes a batch of texts and returns one vector per text, in order, each of
``dimensions`` finite floats. It owns its own timeouts, retries and concurrency limits, and it
reports failure only through the exceptions below, so the worker can tell a failure worth
retrying (the provider is down or busy) from one that is not (the provider refused this input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class EmbeddingError(Exception):
    """Base class of every embedding failure."""


class EmbeddingUnavailable(EmbeddingError):
    """The provider could not be reached or stayed busy/failing after retries: try again later."""


class EmbeddingRejected(EmbeddingError):
    """The provider refused the request (bad input, bad credentials, unknown model): retrying the
    same request will not help."""


class EmbeddingInvalid(EmbeddingError):
    """The provider answered, but not with one finite vector of the right size per text."""


@runtime_checkable
class Embedder(Protocol):
    #: A stable identity of the model, such as ``"local:all-MiniLM-L6-v2"``; stored with every
    #: vector and part of every cache key, so vectors of different models are never mixed.
    model_id: str
    #: The length of every vector this embedder returns.
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order. Raises an ``EmbeddingError`` subclass on failure."""
        ...
