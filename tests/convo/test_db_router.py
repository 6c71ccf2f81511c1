"""The read-replica router against a second real database.

The replica is a second database on the same embedded server, made by ``CREATE DATABASE …
TEMPLATE`` from the test database: a copy of the primary at that moment that then never catches up
(a replica with unbounded lag). Rows changed only in the replica show which database a read used:
the opted-in read paths (search, the clusters list, the knowledge search) answer from the replica,
every other read and every write stays on ``default``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.utils import load_backend
from rest_framework.test import APIClient

from clustering.models import Cluster
from conversations.models import Message, Tenant
from conversations.services.embedding import embedding_drain
from convo.db_router import REPLICA_DB_ALIAS, ReplicaRouter, read_alias_for, replica_reads
from feedback.models import KnowledgeEntry
from tests.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db(transaction=True)

ROUTERS = ["convo.db_router.ReplicaRouter"]


def _admin_connect() -> psycopg.Connection[Any]:
    db = connections[DEFAULT_DB_ALIAS].settings_dict
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True)


@pytest.fixture
def replica_make(settings: Any) -> Iterator[Callable[[], str]]:
    """``replica_make()`` copies the test database into a new one, registers it as the
    ``replica`` alias and installs the router; the alias and the database go at the end."""
    primary = connections[DEFAULT_DB_ALIAS]
    name = f"{primary.settings_dict['NAME']}_replica"
    made = False

    def make() -> str:
        nonlocal made
        # The template must have no other session: close this process's connections and pool.
        primary.close()
        primary.close_pool()
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{primary.settings_dict["NAME"]}"')
        made = True
        # An alias made at run time (not in DATABASES): the test case lets it connect.
        backend = load_backend(primary.settings_dict["ENGINE"])
        replica_settings = {**copy.deepcopy(primary.settings_dict), "NAME": name}
        connections[REPLICA_DB_ALIAS] = backend.DatabaseWrapper(replica_settings, REPLICA_DB_ALIAS)
        settings.DATABASE_ROUTERS = ROUTERS
        return name

    yield make
    if made:
        replica = connections[REPLICA_DB_ALIAS]
        replica.close()
        replica.close_pool()
        del connections[REPLICA_DB_ALIAS]
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_search_lists_and_knowledge_search_read_the_replica_and_writes_land_on_the_primary(
    tenant: Tenant, api: APIClient, replica_make: Callable[[], str]
) -> None:
    conversation = ConversationFactory(tenant=tenant, external_user_id="alice")
    parcel = MessageFactory(conversation=conversation, tenant=tenant, text="where is my parcel today")
    embedding_drain(seconds=30)  # embeds it and makes its cluster
    created = api.post("/api/v1/knowledge", {"question": "When do you open?", "answer": "At nine."}, format="json")
    assert created.status_code == 201, created.content
    replica_make()
    # The replica diverges: only a read from it can return these.
    Message.objects.using(REPLICA_DB_ALIAS).filter(pk=parcel.pk).update(text="where is my parcel (replica)")
    Cluster.objects.using(REPLICA_DB_ALIAS).filter(tenant=tenant).update(label="replica label")
    KnowledgeEntry.objects.using(REPLICA_DB_ALIAS).filter(tenant=tenant).update(answer="At nine (replica).")
    cache.clear()

    # Vector search: neighbours by raw SQL, then the ORM hydration, both on the replica.
    found = api.post("/api/v1/search", {"query": "where is my parcel", "k": 3, "min_similarity": -1}, format="json")
    assert found.status_code == 200, found.content
    assert [hit["text"] for hit in found.json()["results"]] == ["where is my parcel (replica)"]
    # Words search: the replica's text matches, the primary's never did.
    words = api.post("/api/v1/search", {"query": "replica", "mode": "text", "k": 3}, format="json")
    assert [hit["message_id"] for hit in words.json()["results"]] == [str(parcel.pk)]

    clusters = api.get("/api/v1/clusters").json()["results"]
    assert [c["label"] for c in clusters] == ["replica label"]
    assert [m["text"] for m in clusters[0]["recent_messages"]] == ["where is my parcel (replica)"]

    knowledge = api.post("/api/v1/knowledge/search", {"query": "open", "mode": "text"}, format="json")
    assert [hit["entry"]["answer"] for hit in knowledge.json()["results"]] == ["At nine (replica)."]

    # A path that did not opt in reads the primary.
    detail = api.get(f"/api/v1/conversations/{conversation.pk}/messages")
    assert detail.status_code == 200, detail.content
    assert "where is my parcel today" in detail.content.decode()

    # A write acknowledged now lands on the primary; the lagging replica does not see it.
    ingested = api.post(
        "/api/v1/messages",
        {"user_id": "bob", "session_id": "s-bob", "channel": "web", "text": "a new question"},
        format="json",
    )
    assert ingested.status_code == 202, ingested.content
    new_id = ingested.json()["id"]
    assert Message.objects.using(DEFAULT_DB_ALIAS).filter(pk=new_id).exists()
    assert not Message.objects.using(REPLICA_DB_ALIAS).filter(pk=new_id).exists()
    unseen = api.post("/api/v1/search", {"query": "new question", "mode": "text", "k": 3}, format="json")
    assert unseen.json()["results"] == []


def test_inside_a_scope_writes_transactions_and_written_models_stay_on_the_primary(
    tenant: Tenant, replica_make: Callable[[], str]
) -> None:
    replica_make()
    assert router.db_for_read(Message) == DEFAULT_DB_ALIAS  # outside any scope
    with replica_reads():
        assert router.db_for_read(Message) == REPLICA_DB_ALIAS
        assert read_alias_for(models=[Message, Cluster]) == REPLICA_DB_ALIAS
        with transaction.atomic():
            assert router.db_for_read(Message) == DEFAULT_DB_ALIAS
        conversation = ConversationFactory(tenant=tenant)  # a write: pins Conversation only
        assert conversation._state.db == DEFAULT_DB_ALIAS
        assert router.db_for_read(type(conversation)) == DEFAULT_DB_ALIAS
        assert router.db_for_read(Message) == REPLICA_DB_ALIAS
        assert read_alias_for(models=[Message, type(conversation)]) == DEFAULT_DB_ALIAS
        # An instance read from the replica is saved to the primary, never back to the replica.
        copy_on_replica = Tenant.objects.get(pk=tenant.pk)
        assert copy_on_replica._state.db == REPLICA_DB_ALIAS
        assert router.db_for_write(Tenant, instance=copy_on_replica) == DEFAULT_DB_ALIAS
    assert router.db_for_read(Cluster) == DEFAULT_DB_ALIAS  # the scope is gone


def test_without_the_router_the_scope_changes_nothing() -> None:
    assert REPLICA_DB_ALIAS not in connections.settings  # the test settings: no DATABASE_REPLICA_URL
    with replica_reads():
        assert router.db_for_read(Message) == DEFAULT_DB_ALIAS
        assert read_alias_for(models=[Message]) == DEFAULT_DB_ALIAS


def test_migrations_run_on_the_primary_only() -> None:
    routing = ReplicaRouter()
    assert routing.allow_migrate(REPLICA_DB_ALIAS, "conversations") is False
    assert routing.allow_migrate(DEFAULT_DB_ALIAS, "conversations") is None  # Django's default: yes
    assert routing.db_for_write(Message) == DEFAULT_DB_ALIAS
