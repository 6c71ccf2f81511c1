"""Concurrent identical requests, with real threads on real connections, make exactly one row."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection
from rest_framework.test import APIClient

from conversations.models import Conversation, Message
from tests.conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 50


def run_concurrently(make_request: Callable[[APIClient], object], api: APIClient) -> list[object]:
    barrier = threading.Barrier(THREADS)
    results: list[object] = [None] * THREADS

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = make_request(api)
        finally:
            connection.close()  # each thread has its own connection; return it to the pool

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture
def api_client(tenant):
    # 50 threads share the pool of 20 connections: requests queue for a connection (bounded wait).
    return client_for(tenant)


def test_fifty_concurrent_posts_with_one_idempotency_key_make_one_conversation(api_client):
    body = {"user_id": "u", "session_id": "s", "messages": [{"text": "hello"}]}

    def post(api: APIClient) -> object:
        return api.post("/api/v1/conversations", body, format="json", HTTP_IDEMPOTENCY_KEY="once")

    responses = run_concurrently(post, api_client)

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert Conversation.objects.count() == 1
    assert Message.objects.count() == 1


def test_fifty_concurrent_posts_with_one_external_id_make_one_conversation(api_client):
    body = {"user_id": "u", "external_id": "ext", "messages": [{"text": "hello"}]}
    responses = run_concurrently(lambda api: api.post("/api/v1/conversations", body, format="json"), api_client)

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(not r.json()["replayed"] for r in responses) == 1
    assert Conversation.objects.count() == 1


def test_fifty_concurrent_first_messages_of_a_session_share_one_conversation(api_client):
    responses = run_concurrently(
        lambda api: api.post("/api/v1/messages", {"user_id": "u", "session_id": "s", "text": "hi"}, format="json"),
        api_client,
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["conversation_id"] for r in responses}) == 1
    assert Conversation.objects.count() == 1
    assert Message.objects.count() == THREADS
