"""The bundled all-MiniLM-L6-v2, for real: offline, 384 unit-length dimensions, loaded once."""

from __future__ import annotations

import math
import os
import socket

import pytest
from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings import embedder_from_config, get_embedder
from conversations.embeddings.local import SentenceTransformerEmbedder

LOCAL = {
    "BACKEND": "conversations.embeddings.local.SentenceTransformerEmbedder",
    "MODEL": "all-MiniLM-L6-v2",
    "DIMENSIONS": 384,
    "OPTIONS": {},
}


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(model="all-MiniLM-L6-v2", dimensions=384)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_384_unit_length_dimensions_offline(embedder):
    vectors = embedder.embed(["How do I top up my card?", "hello"])
    assert embedder.model_id == "local:all-MiniLM-L6-v2"
    assert [len(v) for v in vectors] == [384, 384]
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_paraphrases_are_closer_than_different_meanings(embedder):
    query, paraphrase, other = embedder.embed(
        ["How do I top up my card?", "How can I add money to my card?", "My card was stolen"]
    )
    assert cosine(query, paraphrase) > cosine(query, other) + 0.1


def test_batching_does_not_change_vectors(embedder):
    texts = [f"message number {i} about my card" for i in range(5)]
    small = SentenceTransformerEmbedder(model="all-MiniLM-L6-v2", dimensions=384, batch_size=2)
    batched = embedder.embed(texts)
    for got, want in zip(small.embed(texts), batched, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert small.embed(texts[:1])[0] == pytest.approx(batched[0], abs=1e-5)


def test_the_model_is_loaded_once_per_process(embedder, settings):
    settings.EMBEDDINGS = LOCAL
    first = get_embedder()
    assert get_embedder() is first
    second = embedder_from_config(LOCAL)
    assert second is not first
    assert isinstance(first, SentenceTransformerEmbedder) and isinstance(second, SentenceTransformerEmbedder)
    assert first.sentence_transformer is second.sentence_transformer is embedder.sentence_transformer


def test_a_wrong_dimensions_setting_fails_at_build_time(embedder):
    with pytest.raises(ImproperlyConfigured, match="384"):
        SentenceTransformerEmbedder(model="all-MiniLM-L6-v2", dimensions=768)


def test_a_model_that_is_not_on_disk_is_not_downloaded(monkeypatch):
    attempts: list[object] = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("the network is off limits to this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    with pytest.raises(ImproperlyConfigured, match="offline"):
        SentenceTransformerEmbedder(model="convo-tests/no-such-model", dimensions=384)
    assert attempts == []


def test_torch_threads_follow_the_setting_unless_given(embedder, settings):
    import torch

    from conversations.embeddings.local import load_model, model_path

    before = torch.get_num_threads()
    try:
        settings.EMBEDDINGS_DEFAULT_THREADS = 1
        load_model(model_path("all-MiniLM-L6-v2"))
        assert torch.get_num_threads() == 1
        load_model(model_path("all-MiniLM-L6-v2"), threads=2)  # an explicit EMBEDDINGS_THREADS wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
