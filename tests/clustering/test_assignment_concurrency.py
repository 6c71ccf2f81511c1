"""Concurrent workers, each on its own database connection, finishing batches of the same question at
the same moment, make one cluster: assignment runs under the tenant's clustering lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from django.db import connection, transaction

from clustering.models import Cluster, ClusterMembership
from conversations.embeddings import get_embedder
from conversations.embeddings.base import Embedder
from conversations.models import Message
from conversations.services.embedding import embedding_drain, embedding_process_batch
from conversations.services.embedding_spaces import embedding_space_for
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 6
WORDINGS = [
    "how much does the premium plan cost per month",
    "how much does the premium plan cost each month",
    "how much does the premium plan cost a month",
    "what does the premium plan cost per month",
    "how much is the premium plan per month",
    "how much does premium plan cost per month",
]


class GatheringEmbedder:
    """The configured embedder, except that each worker waits (up to a few seconds) until every
    worker holds its claimed batch before its vectors come back: the workers then race to assign
    the same question. Records the most workers that were inside at once."""

    def __init__(self, inner: Embedder, workers: int) -> None:
        self.inner, self.workers = inner, workers
        self.model_id, self.dimensions = inner.model_id, inner.dimensions
        self.inside = 0
        self.most_inside = 0
        self.all_in = threading.Event()
        self.lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.inside == self.workers:
                self.all_in.set()
        self.all_in.wait(timeout=5)
        return self.inner.embed(texts)


def test_concurrent_workers_never_start_two_clusters_for_one_question(tenant) -> None:
    inner = get_embedder()
    space = embedding_space_for(embedder=inner)
    for text in WORDINGS:
        MessageFactory(conversation=ConversationFactory(tenant=tenant), tenant=tenant, text=text)
    embedder = GatheringEmbedder(inner, WORKERS)
    claimed: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            outcome = embedding_process_batch(kind="message", embedder=embedder, space=space, limit=1)
            claimed.append(outcome.done)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    assert embedder.most_inside >= 2, claimed  # workers really did finish their batches at the same time
    embedding_drain(seconds=30)  # whatever a worker did not get to
    assert Message.objects.filter(embedding_state="done").count() == WORKERS
    assert Cluster.objects.filter(tenant=tenant).count() == 1
    cluster = Cluster.objects.get(tenant=tenant)
    assert cluster.size == WORKERS == ClusterMembership.objects.filter(cluster=cluster).count()


def test_a_conversation_deleted_while_its_message_is_embedded_is_not_clustered(tenant) -> None:
    """The worker reads which messages to cluster under the tenant's lock, so a soft delete that
    commits while the worker waits for the lock is seen."""
    from conversations.services.conversations import conversation_soft_delete

    inner = get_embedder()
    space = embedding_space_for(embedder=inner)
    message = MessageFactory(conversation=ConversationFactory(tenant=tenant), tenant=tenant, text=WORDINGS[0])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            embedding_process_batch(kind="message", embedder=inner, space=space, limit=1)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    with transaction.atomic():
        conversation_soft_delete(conversation=message.conversation)  # holds the tenant's lock until commit
        worker = threading.Thread(target=work)
        worker.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_an_advisory_lock():
            assert time.monotonic() < deadline, "the worker never waited for the tenant's lock"
            time.sleep(0.05)
    worker.join()

    assert not errors, errors
    assert Message.objects.get(pk=message.pk).embedding_state == "done"
    assert not ClusterMembership.objects.filter(message=message).exists()
    assert not Cluster.objects.filter(tenant=tenant).exists()


def _waiting_on_an_advisory_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return cursor.fetchone()[0] > 0
