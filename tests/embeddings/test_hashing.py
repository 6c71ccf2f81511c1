"""The hashing embedder: deterministic across processes, unit length, similar texts closer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.hashing import HashingEmbedder
from convo.env import BASE_DIR


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_unit_length_and_sized():
    embedder = HashingEmbedder(dimensions=384)
    vectors = embedder.embed(["How do I reset my password?", "", "!!!", "a"])
    assert embedder.model_id == "hashing:v1@384"
    assert [len(v) for v in vectors] == [384] * 4
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0)
    assert vectors[1] == vectors[2]  # no words: the one reserved bucket, not a zero vector


def test_same_vector_in_another_process_with_another_hash_seed():
    texts = ["How do I reset my password?", "Ünïcode wörds, too"]
    here = HashingEmbedder(dimensions=64).embed(texts)
    code = (
        "import json, sys; from conversations.embeddings.hashing import HashingEmbedder; "
        "print(json.dumps(HashingEmbedder(dimensions=64).embed(json.loads(sys.argv[1]))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(texts)],
        cwd=BASE_DIR,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == here


def test_texts_sharing_words_score_higher_than_unrelated_ones():
    embedder = HashingEmbedder(dimensions=384)
    query, related, unrelated = embedder.embed(
        ["How do I reset my password?", "I forgot my password, please reset it", "The weather is sunny today"]
    )
    assert cosine(query, related) > cosine(query, unrelated) + 0.2


def test_case_and_punctuation_do_not_matter():
    embedder = HashingEmbedder(dimensions=128)
    first, second = embedder.embed(["Reset my PASSWORD!", "reset my password"])
    assert first == pytest.approx(second)


def test_other_schemes_and_tiny_sizes_are_refused():
    with pytest.raises(ImproperlyConfigured):
        HashingEmbedder(model="v2")
    with pytest.raises(ImproperlyConfigured):
        HashingEmbedder(dimensions=1)
