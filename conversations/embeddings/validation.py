"""The one output check every backend runs before a vector leaves this package.

A vector that is short, long, or holds NaN/inf would either break the pgvector column or,
worse, be stored and silently poison similarity search. Every backend therefore passes what its
provider returned through ``validate_vectors``, which raises ``EmbeddingInvalid`` (the provider
answered, but not with one finite vector of the right size per text) and returns plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from conversations.embeddings.base import EmbeddingInvalid


def validate_vectors(vectors: Any, *, count: int, dimensions: int, source: str = "provider") -> list[list[float]]:
    """``vectors`` as a list of ``count`` lists of ``dimensions`` finite floats, or
    ``EmbeddingInvalid`` naming the first problem. ``source`` names the provider in messages."""
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2 and vectors.dtype.kind == "f":
        # A local model's output: checked whole (a float loop over 3,840 values per batch of 10
        # cost ~3 ms, a twentieth of a batch's work besides the model).
        if vectors.shape != (count, dimensions):
            raise EmbeddingInvalid(f"{source} returned an array of shape {vectors.shape} for {count} texts")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            raise EmbeddingInvalid(f"{source} vector {int(np.argmin(finite))} holds a non-finite value")
        return vectors.astype(np.float64).tolist()
    if not isinstance(vectors, Sequence) or isinstance(vectors, str | bytes):
        raise EmbeddingInvalid(f"{source} returned {type(vectors).__name__}, not a list of vectors")
    if len(vectors) != count:
        raise EmbeddingInvalid(f"{source} returned {len(vectors)} vectors for {count} texts")
    checked: list[list[float]] = []
    for position, vector in enumerate(vectors):
        if not isinstance(vector, Sequence) or isinstance(vector, str | bytes):
            raise EmbeddingInvalid(f"{source} vector {position} is {type(vector).__name__}, not a list of numbers")
        if len(vector) != dimensions:
            raise EmbeddingInvalid(f"{source} vector {position} has {len(vector)} dimensions, expected {dimensions}")
        floats: list[float] = []
        for value in vector:
            # bool is an int subclass; a JSON true in a vector is a malformed answer, not 1.0.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EmbeddingInvalid(f"{source} vector {position} holds {type(value).__name__} {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise EmbeddingInvalid(f"{source} vector {position} holds a non-finite value ({number})")
            floats.append(number)
        checked.append(floats)
    return checked


def texts_checked(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing a bare string: ``embed("hello")`` would otherwise embed five
    one-letter texts. These are programming errors, hence ``TypeError``, not an ``EmbeddingError``."""
    if isinstance(texts, str | bytes):
        raise TypeError("embed() takes a sequence of texts, not a single string")
    checked = list(texts)
    for position, text in enumerate(checked):
        if not isinstance(text, str):
            raise TypeError(f"text {position} is {type(text).__name__}, not str")
    return checked
