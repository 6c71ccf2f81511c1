"""The Ollama and OpenAI backends against a local server speaking each API's wire format:
retries and backoff, typed errors, request splitting, ordering and the concurrency bound."""

from __future__ import annotations

import email.utils
import math
import socket
import threading
import time
from typing import Any

import pytest

from conversations.embeddings.base import EmbeddingInvalid, EmbeddingRejected, EmbeddingUnavailable
from conversations.embeddings.ollama import OllamaEmbedder
from conversations.embeddings.openai import OpenAIEmbedder
from conversations.embeddings.remote import HttpEmbedder
from tests.embeddings.fake_provider import PATHS, FakeProvider, Reply, vector_for

DIMS = 8
KEY = "sk-test-123"
TEXTS = ["how do I top up", "my card was stolen", "reset my password"]


def highest(low: float, high: float) -> float:
    """A 'random' that always picks the top of the jitter range, so waits are predictable."""
    return high


def embedder_for(server: FakeProvider, sleep: Any, **options: Any) -> HttpEmbedder:
    options.setdefault("sleep", sleep)
    options.setdefault("uniform", highest)
    prefix = getattr(server, "url_prefix", "")
    if server.api == "ollama":
        return OllamaEmbedder(model="nomic-embed-text", dimensions=DIMS, url=server.url + prefix, **options)
    return OpenAIEmbedder(model="text-embedding-3-small", dimensions=DIMS, url=server.url + prefix, **options)


@pytest.fixture(params=["ollama", "openai"])
def server(request, start_provider, monkeypatch) -> FakeProvider:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return start_provider(request.param, dimensions=DIMS, api_key=KEY if request.param == "openai" else None)


def expected(texts: list[str]) -> list[list[float]]:
    return [vector_for(text, DIMS) for text in texts]


def test_answers_one_vector_per_text_in_order(server, sleep):
    assert embedder_for(server, sleep).embed(TEXTS) == expected(TEXTS)
    [request] = server.received
    assert request.path == PATHS[server.api]
    assert request.body["input"] == TEXTS
    assert request.headers["content-type"] == "application/json"
    assert sleep.delays == []


def test_no_request_for_no_texts(server, sleep):
    assert embedder_for(server, sleep).embed([]) == []
    assert server.received == []


def test_a_bare_string_is_refused(server, sleep):
    with pytest.raises(TypeError):
        embedder_for(server, sleep).embed("hello")


def _set_nan(answer: dict[str, Any]) -> dict[str, Any]:
    vectors = answer["embeddings"] if "embeddings" in answer else [d["embedding"] for d in answer["data"]]
    vectors[1][3] = math.nan
    return answer


def _drop_last(answer: dict[str, Any]) -> dict[str, Any]:
    key = "embeddings" if "embeddings" in answer else "data"
    answer[key] = answer[key][:-1]
    return answer


def _shorten(answer: dict[str, Any]) -> dict[str, Any]:
    vectors = answer["embeddings"] if "embeddings" in answer else [d["embedding"] for d in answer["data"]]
    vectors[2].pop()
    return answer


def _no_vectors(answer: dict[str, Any]) -> dict[str, Any]:
    return {"model": answer["model"]}


def _strings(answer: dict[str, Any]) -> dict[str, Any]:
    vectors = answer["embeddings"] if "embeddings" in answer else [d["embedding"] for d in answer["data"]]
    vectors[0][0] = "0.5"
    return answer


# (case, script, error raised or None for success, requests the server saw, waits in seconds,
#  text the error message must contain)
FAILURE_MODES = [
    (
        "429 with Retry-After then success",
        [Reply(429, "Rate limit reached", {"Retry-After": "2"}), Reply()],
        None,
        2,
        [2.0],
        None,
    ),
    (
        "429 with retry-after-ms then success",
        [Reply(429, "slow down", {"retry-after-ms": "1500"}), Reply()],
        None,
        2,
        [1.5],
        None,
    ),
    (
        "503 twice then success",
        [Reply(503, "overloaded"), Reply(503, "overloaded"), Reply()],
        None,
        3,
        [0.5, 1.0],
        None,
    ),
    (
        "502 with Retry-After: 0 then success",
        [Reply(502, "bad gateway", {"Retry-After": "0"}), Reply()],
        None,
        2,
        [0.0],
        None,
    ),
    (
        "500 until retries are exhausted",
        [Reply(500, "model runner crashed")] * 5,
        EmbeddingUnavailable,
        5,
        [0.5, 1.0, 2.0, 4.0],
        "model runner crashed",
    ),
    (
        "400 with the provider's error",
        [Reply(400, "input is too long for requested model")],
        EmbeddingRejected,
        1,
        [],
        "input is too long for requested model",
    ),
    (
        "401 with the provider's error",
        [Reply(401, "Incorrect API key provided")],
        EmbeddingRejected,
        1,
        [],
        "Incorrect API key provided",
    ),
    (
        "404 unknown model",
        [Reply(404, 'model "nomic-embed-text" not found, try pulling it first')],
        EmbeddingRejected,
        1,
        [],
        "not found, try pulling it first",
    ),
    ("malformed JSON", [Reply(raw=b'{"embeddings": [[0.1, 0.2')], EmbeddingInvalid, 1, [], "malformed JSON"),
    ("an HTML error page with 200", [Reply(raw=b"<html>gateway</html>")], EmbeddingInvalid, 1, [], "malformed JSON"),
    ("one vector too few", [Reply(edit=_drop_last)], EmbeddingInvalid, 1, [], "2 vectors for 3 texts"),
    ("a vector of the wrong dimension", [Reply(edit=_shorten)], EmbeddingInvalid, 1, [], "vector 2 has 7 dimensions"),
    ("NaN in a vector", [Reply(edit=_set_nan)], EmbeddingInvalid, 1, [], "non-finite"),
    ("a number sent as a string", [Reply(edit=_strings)], EmbeddingInvalid, 1, [], "str '0.5'"),
    ("no vectors in the answer", [Reply(edit=_no_vectors)], EmbeddingInvalid, 1, [], ""),
]


@pytest.mark.parametrize(
    ("script", "error", "requests", "waits", "message"),
    [case[1:] for case in FAILURE_MODES],
    ids=[case[0] for case in FAILURE_MODES],
)
def test_failure_modes(server, sleep, script, error, requests, waits, message):
    server.script.extend(script)
    embedder = embedder_for(server, sleep, max_retries=4)
    if error is None:
        assert embedder.embed(TEXTS) == expected(TEXTS)
    else:
        with pytest.raises(error) as raised:
            embedder.embed(TEXTS)
        assert message in str(raised.value)
        assert KEY not in str(raised.value)
    assert len(server.received) == requests
    assert sleep.delays == pytest.approx(waits)


def test_retry_after_as_an_http_date(server, sleep):
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    server.script.extend([Reply(503, "maintenance", {"Retry-After": when}), Reply()])
    assert embedder_for(server, sleep).embed(TEXTS) == expected(TEXTS)
    [delay] = sleep.delays
    assert 3.5 <= delay <= 5.0


def test_retry_after_is_capped(server, sleep):
    server.script.extend([Reply(429, "come back in an hour", {"Retry-After": "3600"}), Reply()])
    embedder_for(server, sleep, retry_max_delay=7.0, deadline_seconds=None).embed(TEXTS)
    assert sleep.delays == [7.0]


def test_a_wait_past_the_deadline_is_not_taken(server, sleep):
    server.script.extend([Reply(429, "busy", {"Retry-After": "20"}), Reply()])
    with pytest.raises(EmbeddingUnavailable, match="deadline"):
        embedder_for(server, sleep, deadline_seconds=5.0).embed(TEXTS)
    assert len(server.received) == 1
    assert sleep.delays == []


def test_backoff_is_exponential_capped_and_jittered(server, sleep):
    server.default = lambda body: Reply(500, "down")
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    with pytest.raises(EmbeddingUnavailable):
        embedder_for(server, sleep, uniform=uniform, max_retries=5, retry_base_delay=0.5, retry_max_delay=3.0).embed(
            TEXTS
        )
    assert bounds == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]
    assert sleep.delays == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_real_jitter_stays_within_the_exponential_bound(server, sleep):
    server.default = lambda body: Reply(503, "down")
    import random

    with pytest.raises(EmbeddingUnavailable):
        embedder_for(server, sleep, uniform=random.uniform, max_retries=4).embed(TEXTS)
    assert len(sleep.delays) == 4
    for attempt, delay in enumerate(sleep.delays):
        assert 0.0 <= delay <= 0.5 * 2**attempt


def test_a_slow_answer_times_out_is_retried_then_unavailable(server, sleep):
    server.default = lambda body: Reply(delay=0.6)
    started = time.monotonic()
    with pytest.raises(EmbeddingUnavailable, match="timed out"):
        embedder_for(server, sleep, timeout_seconds=0.15, max_retries=1).embed(TEXTS)
    assert time.monotonic() - started < 0.6 * 2  # gave up on each attempt before the answer came
    assert len(server.received) == 2
    assert len(sleep.delays) == 1


def test_a_slow_answer_then_a_fast_one_succeeds(server, sleep):
    server.script.extend([Reply(delay=0.6), Reply()])
    assert embedder_for(server, sleep, timeout_seconds=0.15).embed(TEXTS) == expected(TEXTS)
    assert len(server.received) == 2


def test_connection_refused_is_retried_then_unavailable(sleep):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OllamaEmbedder(
        model="m", dimensions=DIMS, url=f"http://127.0.0.1:{port}", sleep=sleep, uniform=highest, max_retries=2
    )
    with pytest.raises(EmbeddingUnavailable, match="unreachable"):
        embedder.embed(TEXTS)
    assert sleep.delays == [0.5, 1.0]


def test_a_wrong_path_is_rejected_not_retried(server, sleep):
    server.url_prefix = "/nope"
    embedder = embedder_for(server, sleep)
    with pytest.raises(EmbeddingRejected, match="404"):
        embedder.embed(TEXTS)
    assert len(server.received) == 1


def test_a_redirect_is_rejected_not_followed(start_provider, sleep, monkeypatch):
    server = start_provider("ollama", dimensions=DIMS)
    server.script.append(Reply(307, "moved", {"Location": "http://evil.example/api/embed"}))
    with pytest.raises(EmbeddingRejected, match="redirect"):
        embedder_for(server, sleep).embed(TEXTS)
    assert len(server.received) == 1


# --- request splitting and order -------------------------------------------------------------


def test_300_texts_in_batches_of_128_are_3_requests_reassembled_in_order(server, sleep):
    texts = [f"text {i}" for i in range(300)]
    # The first batch answers last, so completion order differs from input order.
    server.default = lambda body: Reply(delay=0.3 if "text 0" in body["input"] else 0.0)
    server.shuffle_data = True  # and OpenAI's `data` comes back in reverse index order
    vectors = embedder_for(server, sleep, request_batch_size=128, max_concurrency=3).embed(texts)
    assert vectors == expected(texts)
    assert sorted(len(r.body["input"]) for r in server.received) == [44, 128, 128]
    assert server.answered[-1]["input"][0] == "text 0"  # really answered out of order


def test_a_failing_batch_fails_the_whole_call_with_unavailable_first(server, sleep):
    texts = [f"text {i}" for i in range(6)]

    def reply(body: Any) -> Reply:
        if "text 0" in body["input"]:
            return Reply(400, "bad input")
        if "text 2" in body["input"]:
            return Reply(500, "down")
        return Reply()

    server.default = reply
    with pytest.raises(EmbeddingUnavailable):
        embedder_for(server, sleep, request_batch_size=2, max_concurrency=3, max_retries=1).embed(texts)


def test_concurrency_never_exceeds_the_bound_even_across_threads_and_instances(server, sleep):
    server.default = lambda body: Reply(delay=0.05)
    texts = [f"text {i}" for i in range(12)]
    embedders = [embedder_for(server, sleep, request_batch_size=1, max_concurrency=3) for _ in range(2)]
    errors: list[BaseException] = []

    def run(embedder: HttpEmbedder) -> None:
        try:
            assert embedder.embed(texts) == expected(texts)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(embedders[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(server.received) == 48
    assert server.max_in_flight == 3  # reached (requests overlap) and never exceeded


# --- wire details of each API ----------------------------------------------------------------


def test_ollama_request_body(start_provider, sleep):
    server = start_provider("ollama", dimensions=DIMS)
    embedder = OllamaEmbedder(model="nomic-embed-text", dimensions=DIMS, url=server.url + "/", sleep=sleep)
    assert embedder.model_id == "ollama:nomic-embed-text"
    embedder.embed(["a"])
    [request] = server.received
    assert request.body == {"model": "nomic-embed-text", "input": ["a"]}
    assert "authorization" not in request.headers


def test_openai_sends_the_key_from_the_environment_and_dimensions_only_when_asked(start_provider, sleep, monkeypatch):
    monkeypatch.setenv("MY_EMBEDDINGS_KEY", "sk-from-env")
    server = start_provider("openai", dimensions=DIMS, api_key="sk-from-env")
    plain = OpenAIEmbedder(
        model="text-embedding-3-small", dimensions=DIMS, url=server.url, api_key_env="MY_EMBEDDINGS_KEY"
    )
    short = OpenAIEmbedder(
        model="text-embedding-3-small",
        dimensions=DIMS,
        url=server.url + "/v1",
        api_key_env="MY_EMBEDDINGS_KEY",
        send_dimensions=True,
    )
    assert plain.model_id == "openai:text-embedding-3-small"
    assert short.model_id == f"openai:text-embedding-3-small@{DIMS}"
    assert "sk-from-env" not in repr(plain) + repr(plain.client)
    plain.embed(["a"])
    short.embed(["b"])
    first, second = server.received
    assert first.headers["authorization"] == "Bearer sk-from-env"
    assert first.body == {"model": "text-embedding-3-small", "input": ["a"], "encoding_format": "float"}
    assert second.path == "/v1/embeddings"
    assert second.body == {
        "model": "text-embedding-3-small",
        "input": ["b"],
        "encoding_format": "float",
        "dimensions": DIMS,
    }


def test_openai_with_a_wrong_key_is_rejected_with_openais_message(start_provider, sleep, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    server = start_provider("openai", dimensions=DIMS, api_key="sk-right")
    embedder = OpenAIEmbedder(model="text-embedding-3-small", dimensions=DIMS, url=server.url, sleep=sleep)
    with pytest.raises(EmbeddingRejected, match=r"401.*Incorrect API key provided.*invalid_api_key"):
        embedder.embed(["a"])
    assert len(server.received) == 1 and sleep.delays == []


def test_openai_answer_with_duplicate_indexes_is_invalid(start_provider, sleep, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = start_provider("openai", dimensions=DIMS)

    def duplicate(answer: dict[str, Any]) -> dict[str, Any]:
        answer["data"][1]["index"] = 0
        return answer

    server.script.append(Reply(edit=duplicate))
    with pytest.raises(EmbeddingInvalid, match="indexes"):
        embedder_for(server, sleep).embed(TEXTS)


def test_openai_needs_a_key_for_api_openai_com(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ImproperlyConfigured, match="OPENAI_API_KEY"):
        OpenAIEmbedder(model="text-embedding-3-small", dimensions=1536)


def test_an_openai_error_body_that_is_not_json_is_quoted(start_provider, sleep, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = start_provider("openai", dimensions=DIMS)
    server.script.append(Reply(status=413, raw=b"<html>413 Request Entity Too Large</html>"))
    with pytest.raises(EmbeddingRejected, match="413 Request Entity Too Large"):
        embedder_for(server, sleep).embed(TEXTS)


@pytest.mark.parametrize("url", ["ftp://host", "http://", "http://host:notaport", "127.0.0.1:11434"])
def test_a_bad_url_is_a_configuration_error(url):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="URL"):
        OllamaEmbedder(model="m", dimensions=DIMS, url=url)
