"""A deterministic, dependency-free embedder for tests and demos: no model, no network, ~µs/text.

Features are lowercase word unigrams and character trigrams of each word (padded with ``#`` so
prefixes and suffixes count), each hashed with BLAKE2b (never Python's ``hash()``, which is salted
per process) into one of ``dimensions`` buckets with a sign bit from the same digest, then
L2-normalised. Texts that share words or word pieces therefore score a higher cosine than
unrelated texts, and a vector is identical in every process and on every machine.

Empty (or punctuation-only) text gets the vector of one reserved feature rather than a zero vector,
which cosine distance cannot handle; the worker does not send blank text anyway.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.validation import texts_checked, validate_vectors

_WORD = re.compile(r"\w+")
_PERSON = b"convo-hash-v1"  # part of the hash: changing the scheme must change model_id too
_TRIGRAM_WEIGHT = 0.5  # a shared word counts more than a shared word piece


class HashingEmbedder:
    """``model_id`` is ``"hashing:v1@<dimensions>"``; ``model`` must be ``"v1"`` (the only scheme)."""

    def __init__(self, *, model: str = "v1", dimensions: int = 384) -> None:
        if model != "v1":
            raise ImproperlyConfigured(f"the hashing embedder has one scheme, 'v1', not {model!r}")
        if dimensions < 2:
            raise ImproperlyConfigured(f"hashing dimensions must be at least 2, got {dimensions}")
        self.dimensions = dimensions
        self.model_id = f"hashing:v1@{dimensions}"

    def __repr__(self) -> str:
        return f"<HashingEmbedder {self.model_id}>"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order. Never fails for a list of strings."""
        checked = texts_checked(texts)
        return validate_vectors(
            [self._vector(text) for text in checked], count=len(checked), dimensions=self.dimensions, source="hashing"
        )

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        words = _WORD.findall(text.lower())
        features: list[tuple[str, float]] = [(f"w:{word}", 1.0) for word in words]
        for word in words:
            padded = f"#{word}#"
            features.extend((f"c:{padded[i : i + 3]}", _TRIGRAM_WEIGHT) for i in range(len(padded) - 2))
        if not features:
            features = [("empty:", 1.0)]
        for feature, weight in features:
            digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8, person=_PERSON).digest(), "big")
            sign = -1.0 if digest >> 63 else 1.0
            vector[digest % self.dimensions] += sign * weight
        norm = math.sqrt(sum(value * value for value in vector))
        if norm == 0.0:  # every feature cancelled out (vanishingly rare): fall back to one bucket
            vector = [0.0] * self.dimensions
            vector[0], norm = 1.0, 1.0
        return [value / norm for value in vector]
