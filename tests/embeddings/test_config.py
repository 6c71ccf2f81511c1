"""Settings → embedder: the EMBEDDINGS shape built from the environment, get_embedder's cache,
embedder_from_config's errors, and the shared output check."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

import convo.settings.embeddings as embedding_settings
from conversations.embeddings import (
    LOCAL_BACKEND,
    Embedder,
    EmbeddingInvalid,
    config_for_this_process,
    embedder_from_config,
    get_embedder,
)
from conversations.embeddings.hashing import HashingEmbedder
from conversations.embeddings.ollama import OllamaEmbedder
from conversations.embeddings.validation import validate_vectors

VARIABLES = [
    "EMBEDDINGS_BACKEND",
    "EMBEDDINGS_MODEL",
    "EMBEDDINGS_DIMENSIONS",
    "EMBEDDINGS_URL",
    "EMBEDDINGS_API_KEY_ENV",
    "EMBEDDINGS_TIMEOUT_SECONDS",
    "EMBEDDINGS_MAX_RETRIES",
    "EMBEDDINGS_MAX_CONCURRENCY",
    "EMBEDDINGS_REQUEST_BATCH_SIZE",
    "EMBEDDINGS_DEADLINE_SECONDS",
    "EMBEDDINGS_SEND_DIMENSIONS",
    "EMBEDDINGS_THREADS",
    "EMBEDDINGS_PROCESS",
    "EMBEDDINGS_PROCESS_TIMEOUT_SECONDS",
    "EMBEDDING_BATCH_TIMEOUT_SECONDS",
]


@pytest.fixture
def load_settings(monkeypatch):
    """EMBEDDINGS as convo/settings/embeddings.py builds it from the given environment."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def load(**environment: str) -> dict:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(embedding_settings).EMBEDDINGS

    yield load
    monkeypatch.undo()
    importlib.reload(embedding_settings)


def test_the_default_is_the_bundled_local_model_in_a_process_of_its_own(load_settings):
    assert load_settings() == {
        "BACKEND": "conversations.embeddings.local.SentenceTransformerEmbedder",
        "MODEL": "all-MiniLM-L6-v2",
        "DIMENSIONS": 384,
        "OPTIONS": {"process": True, "timeout_seconds": 30.0},
    }


def test_the_local_model_can_run_in_the_calling_process(load_settings, monkeypatch):
    assert load_settings(EMBEDDINGS_PROCESS="false")["OPTIONS"] == {}
    assert load_settings(EMBEDDINGS_PROCESS="true", EMBEDDINGS_PROCESS_TIMEOUT_SECONDS="20")["OPTIONS"] == {
        "process": True,
        "timeout_seconds": 20.0,
    }
    # Unset, the child's timeout is the worker's batch timeout.
    monkeypatch.delenv("EMBEDDINGS_PROCESS_TIMEOUT_SECONDS")
    assert load_settings(EMBEDDING_BATCH_TIMEOUT_SECONDS="12")["OPTIONS"]["timeout_seconds"] == 12.0


def test_how_a_local_model_runs_is_this_processs_choice_not_the_spaces(settings):
    stored = {"BACKEND": LOCAL_BACKEND, "MODEL": "m", "DIMENSIONS": 384, "OPTIONS": {"batch_size": 8}}
    settings.EMBEDDINGS_LOCAL_PROCESS = {"process": True, "timeout_seconds": 7.0}
    assert config_for_this_process(stored)["OPTIONS"] == {"batch_size": 8, "process": True, "timeout_seconds": 7.0}
    settings.EMBEDDINGS_LOCAL_PROCESS = {}
    made_in_a_child = {**stored, "OPTIONS": {"batch_size": 8, "process": True, "timeout_seconds": 7.0}}
    assert config_for_this_process(made_in_a_child)["OPTIONS"] == {"batch_size": 8}
    # Other backends keep what they stored.
    ollama = {"BACKEND": "conversations.embeddings.ollama.OllamaEmbedder", "OPTIONS": {"timeout_seconds": 3.0}}
    assert config_for_this_process(ollama) == ollama


def test_ollama_from_the_environment(load_settings):
    config = load_settings(EMBEDDINGS_BACKEND="ollama", EMBEDDINGS_DIMENSIONS="768", EMBEDDINGS_MAX_CONCURRENCY="2")
    assert config == {
        "BACKEND": "conversations.embeddings.ollama.OllamaEmbedder",
        "MODEL": "nomic-embed-text",
        "DIMENSIONS": 768,
        "OPTIONS": {
            "url": "http://127.0.0.1:11434",
            "timeout_seconds": 10.0,
            "max_retries": 4,
            "max_concurrency": 2,
            "request_batch_size": 128,
            "deadline_seconds": 30.0,
        },
    }
    embedder = embedder_from_config(config)
    assert isinstance(embedder, OllamaEmbedder) and embedder.model_id == "ollama:nomic-embed-text"


def test_openai_keeps_the_name_of_the_key_variable_not_the_key(load_settings, monkeypatch):
    monkeypatch.setenv("VENDOR_KEY", "sk-secret")
    config = load_settings(
        EMBEDDINGS_BACKEND="openai",
        EMBEDDINGS_API_KEY_ENV="VENDOR_KEY",
        EMBEDDINGS_URL="http://127.0.0.1:9/",
        EMBEDDINGS_SEND_DIMENSIONS="true",
        EMBEDDINGS_DIMENSIONS="256",
        EMBEDDING_BATCH_TIMEOUT_SECONDS="12",
    )
    assert config["MODEL"] == "text-embedding-3-small"
    assert config["OPTIONS"]["api_key_env"] == "VENDOR_KEY"
    assert config["OPTIONS"]["deadline_seconds"] == 12.0
    assert "sk-secret" not in repr(config)
    embedder = embedder_from_config(config)
    assert embedder.model_id == "openai:text-embedding-3-small@256"


def test_hashing_and_an_unknown_backend(load_settings):
    assert embedder_from_config(load_settings(EMBEDDINGS_BACKEND="hashing")).model_id == "hashing:v1@384"
    with pytest.raises(ImproperlyConfigured, match="EMBEDDINGS_BACKEND"):
        load_settings(EMBEDDINGS_BACKEND="word2vec")


def test_get_embedder_builds_from_settings_once_and_follows_overrides(settings):
    first = get_embedder()
    assert isinstance(first, HashingEmbedder) and first.dimensions == 384  # the test settings
    assert get_embedder() is first
    settings.EMBEDDINGS = {**settings.EMBEDDINGS, "DIMENSIONS": 32}
    assert get_embedder().model_id == "hashing:v1@32"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"BACKEND": "conversations.embeddings.hashing.HashingEmbedder"}, "DIMENSIONS"),
        ({"BACKEND": "conversations.embeddings.nope.Nope", "MODEL": "v1", "DIMENSIONS": 8}, "cannot be imported"),
        (
            {
                "BACKEND": "conversations.embeddings.hashing.HashingEmbedder",
                "MODEL": "v1",
                "DIMENSIONS": 8,
                "OPTIONS": {"url": "http://x"},
            },
            "OPTIONS",
        ),
        ({"BACKEND": "builtins.dict", "MODEL": "v1", "DIMENSIONS": 8}, "Embedder protocol"),
    ],
)
def test_embedder_from_config_explains_bad_configuration(config, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        embedder_from_config(config)


def test_every_backend_satisfies_the_protocol():
    assert isinstance(HashingEmbedder(dimensions=8), Embedder)
    assert isinstance(OllamaEmbedder(model="m", dimensions=8), Embedder)


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        ([[0.0, 1.0]], "1 vectors for 2 texts"),
        ([[0.0, 1.0], [1.0]], "vector 1 has 1 dimensions"),
        ([[0.0, 1.0], [math.inf, 0.0]], "non-finite"),
        ([[0.0, 1.0], [True, 0.0]], "bool"),
        ([[0.0, 1.0], None], "NoneType"),
        ({"a": 1}, "not a list"),
    ],
)
def test_validate_vectors_refuses(vectors, message):
    with pytest.raises(EmbeddingInvalid, match=message):
        validate_vectors(vectors, count=2, dimensions=2)


def test_validate_vectors_returns_plain_floats():
    assert validate_vectors([[0, 1.5]], count=1, dimensions=2) == [[0.0, 1.5]]


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.zeros((1, 2), dtype=np.float32), r"shape \(1, 2\) for 2 texts"),
        (np.zeros((2, 3), dtype=np.float32), r"shape \(2, 3\)"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]], dtype=np.float32), "vector 1 holds a non-finite value"),
        (np.array([[np.inf, 1.0], [0.0, 0.0]]), "vector 0 holds a non-finite value"),
    ],
)
def test_validate_vectors_refuses_a_bad_model_array(vectors, message):
    with pytest.raises(EmbeddingInvalid, match=message):
        validate_vectors(vectors, count=2, dimensions=2)


def test_validate_vectors_turns_a_model_array_into_plain_floats():
    checked = validate_vectors(np.array([[0.25, 1.5], [-1.0, 0.0]], dtype=np.float32), count=2, dimensions=2)
    assert checked == [[0.25, 1.5], [-1.0, 0.0]] and type(checked[0][0]) is float
