"""A model switch moves clusters into the new embedding space: centroids rebuilt from the members'
new vectors, so look-alike messages keep joining the clusters moderators already know."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection

from clustering.models import Cluster
from conversations.models import EmbeddingSpace
from conversations.services.embedding_spaces import embedding_spaces_forget
from tests.clustering.conftest import Inbound, cluster_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh() -> None:
    cache.clear()
    embedding_spaces_forget()


def test_clusters_move_to_the_new_space_and_keep_taking_members(tenant, inbound: Inbound) -> None:
    first, second, other = inbound(
        tenant,
        "how much does the premium plan cost per month",
        "how much does the premium plan cost each month",
        "my parcel never arrived at the delivery address",
    )
    shared = cluster_of(first)
    assert shared == cluster_of(second) and shared.space.dimensions == 384

    call_command(
        "convo_embeddings_switch", "--backend=hashing", "--dimensions=128", stdout=StringIO(), stderr=StringIO()
    )

    new = EmbeddingSpace.objects.get(state="active")
    assert new.dimensions == 128
    assert set(Cluster.objects.filter(tenant=tenant).values_list("space_id", flat=True)) == {new.pk}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT vector_dims(c.vector_sum), c.vector_sum <-> (
                   SELECT sum(e.embedding) FROM clustering_clustermembership m
                     JOIN conversations_messageembedding e ON e.item_id = m.message_id AND e.space_id = %s
                    WHERE m.cluster_id = c.id)
              FROM clustering_cluster c WHERE c.id = %s
            """,
            [new.pk, shared.pk],
        )
        dims, gap = cursor.fetchone()
    assert dims == 128 and gap < 1e-4

    (later,) = inbound(tenant, "how much does the premium plan cost every month")
    assert cluster_of(later) == shared
    assert cluster_of(other) != shared
    shared.refresh_from_db()
    assert shared.size == 3


def test_a_message_the_old_model_failed_is_clustered_after_the_switch(tenant, inbound: Inbound) -> None:
    from conversations.models import Message

    (clustered,) = inbound(tenant, "how much does the premium plan cost per month")
    (failed,) = inbound(tenant, "how much does the premium plan cost each month", drain=False)
    Message.objects.filter(pk=failed.pk).update(embedding_state="failed", embedding_error="old model refused it")

    call_command(
        "convo_embeddings_switch", "--backend=hashing", "--dimensions=128", stdout=StringIO(), stderr=StringIO()
    )
    # The switch hands it to the worker (run at once here: tasks are synchronous in tests), which
    # finishes it from the cache and clusters it, rather than marking it done unclustered.
    failed.refresh_from_db()
    assert failed.embedding_state == "done"
    assert cluster_of(failed) == cluster_of(clustered)


def test_a_cluster_left_behind_follows_once_its_members_have_vectors(tenant, inbound: Inbound) -> None:
    from clustering.services.spaces import clusters_follow_space
    from conversations.models import MessageEmbedding

    first, second = inbound(
        tenant, "how much does the premium plan cost per month", "how much does the premium plan cost each month"
    )
    call_command(
        "convo_embeddings_switch", "--backend=hashing", "--dimensions=128", stdout=StringIO(), stderr=StringIO()
    )
    new = EmbeddingSpace.objects.get(state="active")
    old = EmbeddingSpace.objects.get(state="retired")
    cluster = cluster_of(first)
    # As if the members had no vector in the new space at activation (refused, or dropped by a
    # batch in flight): the cluster stayed in the old space.
    kept = list(
        MessageEmbedding.objects.filter(space=new, item__in=[first, second]).values(
            "item_id", "conversation_id", "embedding"
        )
    )
    MessageEmbedding.objects.filter(space=new, item__in=[first, second]).delete()
    old_sum = [
        sum(values)
        for values in zip(
            *MessageEmbedding.objects.filter(space=old, item__in=[first, second]).values_list("embedding", flat=True),
            strict=True,
        )
    ]
    Cluster.objects.filter(pk=cluster.pk).update(space=old, vector_sum=old_sum)
    MessageEmbedding.objects.bulk_create(
        [
            MessageEmbedding(
                item_id=k["item_id"],
                conversation_id=k["conversation_id"],
                tenant=tenant,
                space=new,
                embedding=k["embedding"],
            )
            for k in kept
        ]
    )

    assert clusters_follow_space(space=new) == 1
    cluster.refresh_from_db()
    assert cluster.space_id == new.pk and cluster.size == 2


@pytest.mark.django_db(transaction=True)
def test_activation_waits_for_a_moderator_action_in_progress(tenant, inbound: Inbound) -> None:
    """Moving clusters to the new space takes the tenants' clustering locks: an action holding
    one (a merge, a split) finishes before its clusters' sums are rebuilt, never interleaved."""
    import threading
    import time

    from django.db import transaction

    from clustering.services.locking import tenants_clustering_lock
    from conversations.services.embedding_spaces import embedding_space_activate

    first, _ = inbound(
        tenant, "how much does the premium plan cost per month", "how much does the premium plan cost each month"
    )
    call_command(
        "convo_embeddings_switch",
        "--backend=hashing",
        "--dimensions=128",
        "--no-activate",
        stdout=StringIO(),
        stderr=StringIO(),
    )
    building = EmbeddingSpace.objects.get(state="building")
    errors: list[BaseException] = []

    def activate() -> None:
        try:
            embedding_space_activate(space=building)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    with transaction.atomic():
        tenants_clustering_lock(tenant_ids=[tenant.pk])  # a moderator action in progress
        thread = threading.Thread(target=activate)
        thread.start()
        deadline = time.monotonic() + 30
        while True:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if cursor.fetchone()[0]:
                    break
            assert time.monotonic() < deadline, "the activation never waited for the tenant's lock"
            time.sleep(0.05)
        assert EmbeddingSpace.objects.get(pk=building.pk).state == "building"
    thread.join()
    assert not errors, errors
    assert cluster_of(first).space_id == building.pk
