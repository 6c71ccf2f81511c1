"""The delivery API: per-message status, pull mode (list + ack), retry, the webhook endpoint, its
limits, and tenant isolation, against the real database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from clustering.models import AnswerDelivery, ClusterMembership, DeliveryEndpoint, DeliveryStatus
from clustering.services.webhooks import deliveries_send_due, webhook_signature_verify
from conversations.models import Tenant
from conversations.services.conversations import conversation_soft_delete
from tests.clustering.test_deliveries import Receiver, Reply, answered_cluster, running_receiver
from tests.conftest import client_for
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def field_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    return response.json()["error"]["fields"]


def ids(response: Any) -> list[str]:
    return [item["id"] for item in response.json()["results"]]


# --- list and detail ---------------------------------------------------------------------------------


def test_list_shows_each_messages_delivery_oldest_first(api: APIClient, tenant: Tenant) -> None:
    cluster, messages = answered_cluster(tenant, members=3, answer="Yes.")
    response = api.get("/api/v1/deliveries")
    assert response.status_code == 200
    results = response.json()["results"]
    expected = AnswerDelivery.objects.order_by("created_at", "id")
    assert [r["id"] for r in results] == [str(d.pk) for d in expected]
    by_message = {r["message_id"]: r for r in results}
    assert set(by_message) == {str(m.pk) for m in messages}
    item = by_message[str(messages[0].pk)]
    assert item["kind"] == "answer" and item["status"] == "pending" and item["answer"] == "Yes."
    assert item["cluster_id"] == str(cluster.pk) and item["answer_version"] == 1
    assert item["conversation_id"] == str(messages[0].conversation_id)
    assert item["user_id"] == messages[0].conversation.external_user_id and item["channel"] == "web"
    assert item["attempts"] == 0 and item["delivered_at"] is None and item["last_error"] == ""


def test_list_filters_and_pages(api: APIClient, tenant: Tenant) -> None:
    first, first_messages = answered_cluster(tenant, members=3)
    second, _ = answered_cluster(tenant, members=2)
    AnswerDelivery.objects.filter(message=first_messages[0]).update(status=DeliveryStatus.DELIVERED)

    assert len(ids(api.get(f"/api/v1/deliveries?cluster_id={second.pk}"))) == 2
    assert len(ids(api.get("/api/v1/deliveries?status=pending"))) == 4
    assert len(ids(api.get(f"/api/v1/deliveries?status=pending&cluster_id={first.pk}"))) == 2
    assert len(ids(api.get("/api/v1/deliveries?status=delivered&kind=answer"))) == 1
    assert ids(api.get("/api/v1/deliveries?kind=suggestion")) == []
    only = api.get(f"/api/v1/deliveries?message_id={first_messages[1].pk}").json()["results"]
    assert [r["message_id"] for r in only] == [str(first_messages[1].pk)]

    seen: list[str] = []
    url: str | None = "/api/v1/deliveries?page_size=2"
    while url:
        page = api.get(url).json()
        assert len(page["results"]) <= 2
        seen += [r["id"] for r in page["results"]]
        url = page["next"]
    assert seen == [str(pk) for pk in AnswerDelivery.objects.order_by("created_at", "id").values_list("pk", flat=True)]


def walk(
    api: APIClient, url: str | None, *, direction: str = "next", limit: int = 50
) -> tuple[list[list[str]], dict[str, Any]]:
    """The ids of each page from ``url`` on, following ``direction`` links, and the body of the
    last page; fails past ``limit`` pages (a walk that never ends)."""
    pages: list[list[str]] = []
    body: dict[str, Any] = {}
    while url:
        assert len(pages) < limit, "the pages never end"
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([item["id"] for item in body["results"]])
        url = body[direction]
    return pages, body


def test_pages_of_one_fan_out_visit_each_delivery_once_both_ways(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=30)  # one transaction: 30 deliveries with one created_at
    assert AnswerDelivery.objects.values("created_at").distinct().count() == 1
    expected = [str(pk) for pk in AnswerDelivery.objects.order_by("created_at", "id").values_list("pk", flat=True)]

    pages, last = walk(api, "/api/v1/deliveries?status=pending&page_size=4")

    assert [len(page) for page in pages] == [4] * 7 + [2]
    assert [pk for page in pages for pk in page] == expected
    assert "page_size=4" in last["previous"] and "status=pending" in last["previous"]
    back, _ = walk(api, last["previous"], direction="previous")
    assert back[::-1] == pages[:-1]


def test_pages_end_however_many_deliveries_share_a_created_at(api: APIClient, tenant: Tenant) -> None:
    """More ties than DRF's cursor offset cap (1000): every delivery once, and the walk ends."""
    answered_cluster(tenant, members=1)
    first = AnswerDelivery.objects.get()
    with connection.cursor() as cursor:  # 1200 more answers of the same message, made at the same instant
        cursor.execute(
            """
            INSERT INTO clustering_answerdelivery
                (id, tenant_id, cluster_id, message_id, answer_version, kind, answer, status, attempts,
                 next_attempt_at, last_error, created_at)
            SELECT gen_random_uuid(), d.tenant_id, d.cluster_id, d.message_id, v, d.kind, d.answer, d.status, 0,
                   d.next_attempt_at, '', d.created_at
              FROM clustering_answerdelivery AS d, generate_series(2, 1201) AS v WHERE d.id = %s
            """,
            [first.pk],
        )
    assert AnswerDelivery.objects.filter(created_at=first.created_at).count() == 1201

    pages, _ = walk(api, "/api/v1/deliveries?page_size=200")

    seen = [pk for page in pages for pk in page]
    assert len(pages) == 7 and len(seen) == len(set(seen)) == 1201


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=sent", "status"), ("kind=reply", "kind"), ("cluster_id=nope", "cluster_id"),
     ("message_id=1", "message_id"), ("page_size=0", "page_size"), ("page_size=201", "page_size"),
     ("cursor=not-a-cursor", "cursor"), ("cursor=e30", "cursor")],
)  # fmt: skip
def test_bad_list_filters_name_the_field(api: APIClient, tenant: Tenant, query: str, field: str) -> None:
    answered_cluster(tenant, members=1)
    assert field in field_errors(api.get(f"/api/v1/deliveries?{query}"))


def test_list_queries_do_not_grow_with_the_page(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    api.get("/api/v1/deliveries")  # warm the API key cache
    with CaptureQueriesContext(connection) as one:
        api.get("/api/v1/deliveries")
    answered_cluster(tenant, members=20)
    with CaptureQueriesContext(connection) as many:
        assert len(ids(api.get("/api/v1/deliveries"))) == 21
    assert len(many) == len(one)


def test_detail_shows_status_and_last_error(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    delivery = AnswerDelivery.objects.get()
    AnswerDelivery.objects.filter(pk=delivery.pk).update(
        status="failed", attempts=8, last_error="attempt 8: the endpoint answered 500 (gave up after 8 attempts)"
    )
    body = api.get(f"/api/v1/deliveries/{delivery.pk}").json()
    assert (body["id"], body["status"], body["attempts"]) == (str(delivery.pk), "failed", 8)
    assert body["last_error"].endswith("(gave up after 8 attempts)")
    assert api.get("/api/v1/deliveries/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/v1/deliveries/not-a-uuid").status_code == 404


def test_another_tenant_sees_none_of_it(api: APIClient, other_api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=2)
    delivery = AnswerDelivery.objects.first()
    AnswerDelivery.objects.filter(pk=delivery.pk).update(status="failed")

    assert ids(other_api.get("/api/v1/deliveries")) == []
    assert other_api.get(f"/api/v1/deliveries/{delivery.pk}").status_code == 404
    retry = other_api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
    assert retry.status_code == 404 and retry.json()["error"]["code"] == "not_found"
    assert other_api.post("/api/v1/deliveries/ack", {"ids": [str(delivery.pk)]}, format="json").json() == {
        "acknowledged": 0
    }  # another tenant's ids are ignored, like unknown ones
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert other_api.get("/api/v1/delivery-endpoint").status_code == 404
    assert api.get("/api/v1/deliveries").status_code == 200


def test_the_api_needs_a_key(client: Any) -> None:
    assert client.get("/api/v1/deliveries").status_code == 401
    assert client.get("/api/v1/delivery-endpoint").status_code == 401


# --- pull mode ---------------------------------------------------------------------------------------


def test_pull_mode_list_pending_then_acknowledge(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=3)
    pending = ids(api.get("/api/v1/deliveries?status=pending"))
    assert len(pending) == 3

    response = api.post("/api/v1/deliveries/ack", {"ids": pending[:2]}, format="json")
    assert response.status_code == 200 and response.json() == {"acknowledged": 2}
    assert ids(api.get("/api/v1/deliveries?status=pending")) == pending[2:]
    delivered = AnswerDelivery.objects.filter(status="delivered")
    assert {str(d.pk) for d in delivered} == set(pending[:2])
    assert all(d.delivered_at is not None for d in delivered)

    again = api.post("/api/v1/deliveries/ack", {"ids": pending}, format="json")  # a repeat is harmless
    assert again.json() == {"acknowledged": 1}
    assert api.post("/api/v1/deliveries/ack", {"ids": pending}, format="json").json() == {"acknowledged": 0}
    assert set(AnswerDelivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_acknowledged_deliveries_are_never_pushed(api: APIClient, tenant: Tenant, receiver: Receiver) -> None:
    answered_cluster(tenant, members=2)
    acked = ids(api.get("/api/v1/deliveries"))[0]
    api.post("/api/v1/deliveries/ack", {"ids": [acked]}, format="json")
    DeliveryEndpoint.objects.create(tenant=tenant, url=receiver.url, secret="s")

    assert deliveries_send_due() == 1
    assert acked not in receiver.delivery_ids()


def test_ack_limit_is_enforced_at_the_limit_and_one_past(api: APIClient, tenant: Tenant, settings: Any) -> None:
    settings.DELIVERY_MAX_ACK_IDS = 3
    answered_cluster(tenant, members=4)
    all_ids = ids(api.get("/api/v1/deliveries"))

    at_limit = api.post("/api/v1/deliveries/ack", {"ids": all_ids[:3]}, format="json")
    assert at_limit.status_code == 200 and at_limit.json() == {"acknowledged": 3}

    past = api.post("/api/v1/deliveries/ack", {"ids": all_ids}, format="json")
    assert past.status_code == 400
    assert past.json()["error"]["code"] == "batch_too_large"
    assert "at most 3" in past.json()["error"]["fields"]["ids"][0]
    assert AnswerDelivery.objects.filter(status="pending").count() == 1  # nothing of the refused request


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "ids"), ({"ids": "x"}, "ids"), ({"ids": []}, "ids"),
     ({"ids": ["00000000-0000-0000-0000-000000000000", "nope"]}, "ids.1"), ({"ids": [7]}, "ids.0"),
     ({"ids": ["00000000-0000-0000-0000-000000000000"], "extra": 1}, "extra")],
)  # fmt: skip
def test_bad_acks_name_the_field(api: APIClient, body: dict[str, Any], field: str) -> None:
    assert field in field_errors(api.post("/api/v1/deliveries/ack", body, format="json"))


def test_ack_with_a_trailing_slash(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    pending = ids(api.get("/api/v1/deliveries/"))
    assert api.post("/api/v1/deliveries/ack/", {"ids": pending}, format="json").json() == {"acknowledged": 1}


# --- retry -------------------------------------------------------------------------------------------


def test_retry_endpoint(api: APIClient, tenant: Tenant) -> None:
    answered_cluster(tenant, members=1)
    delivery = AnswerDelivery.objects.get()

    pending = api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "conflict"

    AnswerDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=8, last_error="gave up")
    response = api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["attempts"], body["last_error"]) == ("pending", 0, "")

    AnswerDelivery.objects.filter(pk=delivery.pk).update(status="delivered")
    assert api.post(f"/api/v1/deliveries/{delivery.pk}/retry").status_code == 409
    assert api.post("/api/v1/deliveries/00000000-0000-0000-0000-000000000000/retry").status_code == 404


def test_retry_refuses_a_deleted_conversation_and_a_message_that_left_the_cluster(
    api: APIClient, tenant: Tenant
) -> None:
    cluster, messages = answered_cluster(tenant, members=3)
    other, _ = answered_cluster(tenant, members=1, answer="Elsewhere.")
    AnswerDelivery.objects.filter(cluster=cluster).update(status="failed", attempts=8, last_error="gave up")
    deleted, moved, kept = (AnswerDelivery.objects.get(message=m, cluster=cluster) for m in messages)
    conversation_soft_delete(conversation=messages[0].conversation)
    ClusterMembership.objects.filter(message=messages[1]).update(cluster=other)  # moved by a moderator

    for delivery, reason in ((deleted, "conversation has been deleted"), (moved, "no longer in this delivery's")):
        response = api.post(f"/api/v1/deliveries/{delivery.pk}/retry")
        assert response.status_code == 409, response.content
        assert response.json()["error"]["code"] == "conflict" and reason in response.json()["error"]["message"]
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("failed", 8)

    assert api.post(f"/api/v1/deliveries/{kept.pk}/retry").json()["status"] == "pending"


# --- the webhook endpoint ----------------------------------------------------------------------------


def test_endpoint_lifecycle_shows_the_secret_only_when_made(api: APIClient, tenant: Tenant) -> None:
    assert api.get("/api/v1/delivery-endpoint").status_code == 404

    created = api.put("/api/v1/delivery-endpoint", {"url": "https://chat.example.com/hooks/convo"}, format="json")
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert created.json()["url"] == "https://chat.example.com/hooks/convo" and created.json()["is_active"] is True

    shown = api.get("/api/v1/delivery-endpoint").json()
    assert "secret" not in shown and shown["url"] == "https://chat.example.com/hooks/convo"

    moved = api.put("/api/v1/delivery-endpoint", {"url": "http://chat:8080/hook", "is_active": False}, format="json")
    assert moved.status_code == 200 and "secret" not in moved.json() and moved.json()["is_active"] is False
    assert DeliveryEndpoint.objects.get(tenant=tenant).secret == secret

    rotated = api.put(
        "/api/v1/delivery-endpoint", {"url": "http://chat:8080/hook", "rotate_secret": True}, format="json"
    )
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != secret
    assert DeliveryEndpoint.objects.get(tenant=tenant).secret == rotated.json()["secret"]

    assert api.delete("/api/v1/delivery-endpoint").status_code == 204
    assert api.get("/api/v1/delivery-endpoint").status_code == 404
    assert api.delete("/api/v1/delivery-endpoint").status_code == 204  # idempotent


def test_a_private_endpoint_url_is_a_400_naming_url(api: APIClient, tenant: Tenant, settings: Any) -> None:
    settings.DELIVERY_ALLOW_PRIVATE_ADDRESSES = False
    response = api.put("/api/v1/delivery-endpoint", {"url": "http://10.0.0.5:8080/hook"}, format="json")
    assert response.status_code == 400
    assert "public address" in field_errors(response)["url"][0]
    assert not DeliveryEndpoint.objects.filter(tenant=tenant).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "url"), ({"url": "ftp://example.com/x"}, "url"), ({"url": "example.com/hook"}, "url"),
     ({"url": "http://"}, "url"), ({"url": "http://host:99999/"}, "url"), ({"url": "http://a b/"}, "url"),
     ({"url": "https://x.example/" + "a" * 2048}, "url"), ({"url": 7}, "url"),
     ({"url": "https://x.example/", "is_active": "yes"}, "is_active"),
     ({"url": "https://x.example/", "rotate_secret": 1}, "rotate_secret"),
     ({"url": "https://x.example/", "secret": "mine"}, "secret")],
)  # fmt: skip
def test_bad_endpoints_name_the_field(api: APIClient, tenant: Tenant, body: dict[str, Any], field: str) -> None:
    assert field in field_errors(api.put("/api/v1/delivery-endpoint", body, format="json"))
    assert not DeliveryEndpoint.objects.filter(tenant=tenant).exists()


def test_the_returned_secret_verifies_what_is_sent(api: APIClient, tenant: Tenant, receiver: Receiver) -> None:
    secret = api.put("/api/v1/delivery-endpoint", {"url": receiver.url}, format="json").json()["secret"]
    answered_cluster(tenant, members=1)
    receiver.script.append(Reply(200))

    deliveries_send_due()

    [got] = receiver.received
    assert webhook_signature_verify(secret=secret, header=got.headers["convo-signature"], body=got.body)
    body = api.get(f"/api/v1/deliveries/{got.json['delivery_id']}").json()
    assert body["status"] == "delivered" and body["attempts"] == 1 and body["delivered_at"] is not None


def _wait_for_lock_waiters(count: int, *, timeout: float = 10.0) -> None:
    """Until ``count`` other sessions of this database wait for a lock."""
    ends = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # a transaction would see one snapshot
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            (waiting,) = cursor.fetchone()
            if waiting >= count:
                return
            assert time.monotonic() < ends, f"{waiting} of {count} sessions wait for a lock"
            time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_two_first_puts_at_once_both_succeed_and_make_one_endpoint() -> None:
    tenant = TenantFactory()
    clients = [client_for(tenant), client_for(tenant)]
    for client in clients:  # authenticated once before the race (the key lookups are cached)
        assert client.get("/api/v1/delivery-endpoint").status_code == 404
    answers: dict[int, Any] = {}

    def put(index: int) -> None:
        try:
            answers[index] = clients[index].put(
                "/api/v1/delivery-endpoint", {"url": f"https://chat.example.com/hook/{index}"}, format="json"
            )
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            answers[index] = exc
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=put, args=(index,)) for index in range(2)]
    # Holding the tenant's row makes the two requests overlap: each has looked for an endpoint
    # (and found none) or waits to, when the row is let go.
    with transaction.atomic():
        Tenant.objects.select_for_update().get(pk=tenant.pk)
        for thread in threads:
            thread.start()
        _wait_for_lock_waiters(2)
    for thread in threads:
        thread.join(30)

    statuses = sorted(getattr(answer, "status_code", repr(answer)) for answer in answers.values())
    assert statuses == [200, 201]
    endpoint = DeliveryEndpoint.objects.get(tenant=tenant)
    second = next(answer for answer in answers.values() if answer.status_code == 200)
    assert endpoint.url == second.json()["url"]  # the later PUT changed the endpoint the first one made


def test_the_schema_documents_the_list_as_one_page(client: Any) -> None:
    import yaml

    schema = yaml.safe_load(client.get("/api/schema/").content)
    ok = schema["paths"]["/api/v1/deliveries"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PaginatedDeliveryList"}  # a page, not a list of pages
    page = schema["components"]["schemas"]["PaginatedDeliveryList"]
    assert set(page["properties"]) == {"next", "previous", "results"}
