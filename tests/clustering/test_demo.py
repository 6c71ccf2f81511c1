"""The demo inbox (``convo_demo_load``) against the real database with the test settings' hashing
embedder, and the launcher's CONVO_DEMO switch (without starting any server)."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.management import CommandError, call_command
from django.core.validators import URLValidator

from clustering.demo import DEMO_EXTERNAL_ID_PREFIX, banking77_test, demo_plan
from clustering.management.commands.convo_demo_load import default_avatar_base_url
from clustering.models import Cluster, ClusterMembership
from conversations.models import Conversation, Message, Role, Tenant
from conversations.services.embedding import embedding_drain
from convo.launcher import startup_steps
from tests.factories import TenantFactory


@pytest.fixture
def demo(db: Any) -> Tenant:
    return TenantFactory(slug="demo", name="Demo")


def _load(*args: str) -> str:
    out = StringIO()
    call_command("convo_demo_load", *args, stdout=out)
    return out.getvalue()


def _demo_messages(tenant: Tenant) -> Any:
    return Message.objects.filter(tenant=tenant, external_id__startswith=DEMO_EXTERNAL_ID_PREFIX)


def test_demo_messages_are_stored_once_and_clustered(demo: Tenant) -> None:
    output = _load("--count", "30", "--avatar-base-url", "http://127.0.0.1:8000")
    assert "30 added, 0 already there" in output

    messages = list(_demo_messages(demo).select_related("conversation"))
    assert len(messages) == 30
    texts = {row.text for row in banking77_test()}
    assert all(m.role == Role.USER and m.text in texts for m in messages)  # inbound Banking77 questions
    assert len({m.conversation.external_user_id for m in messages}) >= 20  # from many people
    assert len({m.conversation.channel for m in messages}) >= 3  # over several channels
    assert all(m.sender_name for m in messages)
    validate = URLValidator(schemes=["http", "https"])
    for message in messages:
        validate(message.sender_avatar_url)
        path = message.sender_avatar_url.removeprefix("http://127.0.0.1:8000/static/")
        assert path.startswith("clustering/demo/avatar-")
        assert finders.find(path), f"{path} is not a static file of the app"  # served locally, never fetched

    embedding_drain(seconds=30)
    clustered = ClusterMembership.objects.filter(message__in=messages)
    assert clustered.count() == 30  # every demo message is in exactly one cluster
    assert 1 <= Cluster.objects.filter(tenant=demo).count() <= 30

    conversations = Conversation.objects.filter(tenant=demo).count()
    again = _load("--count", "30")
    assert "0 added, 30 already there" in again
    assert _demo_messages(demo).count() == 30
    assert Conversation.objects.filter(tenant=demo).count() == conversations
    assert ClusterMembership.objects.filter(tenant=demo).count() == 30


def test_a_larger_count_adds_only_the_questions_not_sent_yet(demo: Tenant) -> None:
    _load("--count", "10", "--avatar-base-url", "")
    first = set(_demo_messages(demo).values_list("external_id", flat=True))

    output = _load("--count", "25", "--avatar-base-url", "")

    assert "15 added, 10 already there" in output
    now = set(_demo_messages(demo).values_list("external_id", flat=True))
    assert first < now and len(now) == 25
    assert now == {f"{DEMO_EXTERNAL_ID_PREFIX}{row.index}" for row, _ in demo_plan(25)}
    assert not _demo_messages(demo).exclude(sender_avatar_url="").exists()  # "" turns avatars off


def test_the_demo_needs_its_tenant(db: Any) -> None:
    with pytest.raises(CommandError, match="convo_bootstrap_demo"):
        _load("--count", "5")


@pytest.mark.parametrize("count", ["0", "3081"])
def test_count_is_bounded_by_the_shipped_data(demo: Tenant, count: str) -> None:
    with pytest.raises(CommandError, match="--count"):
        _load("--count", count)


def test_the_plan_is_stable_and_grows_by_appending() -> None:
    small, large = demo_plan(50), demo_plan(200)
    assert large[:50] == small
    assert len({row.index for row, _ in large}) == 200
    assert len({row.category for row, _ in large}) > 40  # shuffled: not one intent after another


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, "http://127.0.0.1:8000"),
        ("0.0.0.0", "9000", "http://127.0.0.1:9000"),  # listening everywhere: reach it locally
        ("localhost", "8080", "http://localhost:8080"),
        ("::1", "8000", "http://[::1]:8000"),
    ],
)
def test_avatar_base_url_follows_where_make_run_serves(
    monkeypatch: pytest.MonkeyPatch, host: str | None, port: str | None, expected: str
) -> None:
    for name, value in (("CONVO_HOST", host), ("CONVO_PORT", port)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert default_avatar_base_url() == expected


def _commands() -> list[str]:
    return [step.args[0] for step in startup_steps()]


def test_make_run_loads_the_demo_after_bootstrapping_its_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVO_DEMO", raising=False)
    commands = _commands()
    assert commands.index("convo_demo_load") == commands.index("convo_bootstrap_demo") + 1
    demo_step = next(step for step in startup_steps() if step.args[0] == "convo_demo_load")
    assert not demo_step.required  # a failed demo load must not keep convo from starting


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off"])
def test_convo_demo_false_skips_the_demo(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CONVO_DEMO", value)
    commands = _commands()
    assert "convo_demo_load" not in commands
    assert "convo_bootstrap_demo" in commands  # the tenant, key and staff user are still made


def test_convo_demo_true_keeps_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVO_DEMO", "true")
    assert "convo_demo_load" in _commands()
