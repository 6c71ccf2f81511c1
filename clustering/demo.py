"""The shipped Banking77 questions, and the demo that sends some of them to the demo tenant.

The data lives in ``clustering/demo_data/`` (CC BY 4.0, PolyAI; see the README there), so the demo
and ``convo_benchmark_clustering`` work on a machine that has only this repository: nothing is
downloaded.

The demo is an inbox a minute after ``make run``: a few hundred questions arriving as inbound
messages from a few hundred people over several channels, through the same ingest service as
the API, then clustered by the worker. It is idempotent: message ``i`` of the file always has the
external id ``demo-b77-<i>`` and always comes from the same person, so a second run adds nothing,
and a run with a larger ``count`` adds only the questions the first one did not send.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.templatetags.static import static
from django.utils import timezone

from conversations.models import Channel, EmbeddingState, Message, Tenant
from conversations.payloads import InboundMessageIn
from conversations.services.embedding_kick import embedding_kick
from conversations.services.ingest import message_ingest_batch
from conversations.services.results import Accepted

DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo_data"
BANKING77_TEST_CSV = DEMO_DATA_DIR / "banking77_test.csv"

DEMO_TENANT_SLUG = "demo"
DEMO_EXTERNAL_ID_PREFIX = "demo-b77-"
DEMO_DEFAULT_COUNT = 600
# The order questions are sent in, and who sends each, are fixed by this seed: the file is sorted
# by intent, an inbox is not.
_SEED = 77
# People in the demo inbox; with 600 questions most ask one or two, a few ask more.
_PEOPLE = 400
_CHANNELS = (
    Channel.TELEGRAM,
    Channel.WHATSAPP,
    Channel.WEB,
    Channel.INSTAGRAM,
    Channel.MESSENGER,
    Channel.EMAIL,
)
_FIRST_NAMES = (
    "Amara", "Ben", "Chiara", "Dmitri", "Elif", "Farah", "Gabriel", "Hana", "Ines", "Jonas",
    "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tomoko",
    "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoe", "Aiko", "Bruno", "Carmen", "Diego",
    "Emeka", "Freya", "Goran", "Hugo", "Ilse", "Jamal", "Keiko", "Luca", "Maya", "Noor",
)  # fmt: skip
_LAST_INITIALS = "ABCDEFGHJKLMNOPRSTVWZ"
_AVATARS = 8  # clustering/static/clustering/demo/avatar-<n>.svg
# The demo's messages are dated over this window before the run, oldest first.
_SPREAD = timedelta(hours=2)


@dataclass(frozen=True)
class LabelledText:
    index: int  # the row of the file (0-based): a stable id for the question
    text: str
    category: str  # the Banking77 intent


@dataclass(frozen=True)
class Person:
    number: int
    user_id: str
    name: str
    channel: Channel


@dataclass(frozen=True)
class DemoLoad:
    """What a demo load did: ``added`` new messages, ``present`` sent by an earlier run."""

    wanted: int
    added: int
    present: int
    rejected: int  # e.g. a demo external id taken by a message with another text
    people: int
    channels: int
    pending: int
    kicked: bool


@lru_cache(maxsize=1)
def banking77_test() -> tuple[LabelledText, ...]:
    """The 3,080 labelled questions of Banking77's test split, in file order (sorted by intent)."""
    with open(BANKING77_TEST_CSV, newline="", encoding="utf-8") as handle:
        return tuple(
            LabelledText(index=index, text=row["text"], category=row["category"])
            for index, row in enumerate(csv.DictReader(handle))
        )


def demo_person(number: int) -> Person:
    """Demo person ``number``: the same name, channel and user id on every machine."""
    channel = _CHANNELS[number % len(_CHANNELS)]
    first = _FIRST_NAMES[number % len(_FIRST_NAMES)]
    last = _LAST_INITIALS[(number * 7 + number // len(_FIRST_NAMES)) % len(_LAST_INITIALS)]
    return Person(number=number, user_id=f"demo-{channel.value}-{number:03d}", name=f"{first} {last}.", channel=channel)


def demo_plan(count: int) -> list[tuple[LabelledText, Person]]:
    """The first ``count`` questions the demo sends, in arrival order, each with its sender. The
    plan for a larger count starts with the plan for a smaller one."""
    rows = banking77_test()
    rng = random.Random(_SEED)  # noqa: S311 - a fixed demo order, not a secret
    order = list(range(len(rows)))
    rng.shuffle(order)
    senders = [rng.randrange(_PEOPLE) for _ in rows]
    return [(rows[index], demo_person(senders[position])) for position, index in enumerate(order[:count])]


def demo_avatar_url(person: Person, *, base_url: str) -> str:
    """A local SVG served by the app itself (whitenoise): the demo fetches nothing from the
    internet. Message avatars must be absolute http(s) URLs, hence ``base_url``; empty: none."""
    if not base_url:
        return ""
    return base_url.rstrip("/") + static(f"clustering/demo/avatar-{person.number % _AVATARS}.svg")


def demo_messages_load(*, tenant: Tenant, count: int = DEMO_DEFAULT_COUNT, avatar_base_url: str = "") -> DemoLoad:
    """Send the first ``count`` demo questions that ``tenant`` does not have yet as inbound
    messages, through the ingest service, then wake the worker if any demo message waits for
    it. Questions already stored (by external id) are skipped before ingest, so a second run
    writes nothing at all."""
    plan = demo_plan(count)
    wanted = [_external_id(row) for row, _ in plan]
    present = set(Message.objects.filter(tenant=tenant, external_id__in=wanted).values_list("external_id", flat=True))
    todo = [(row, person) for row, person in plan if _external_id(row) not in present]
    now = timezone.now()
    step = _SPREAD / max(1, len(todo))
    payloads = [
        InboundMessageIn(
            user_id=person.user_id,
            session_id="demo",
            channel=person.channel,
            text=row.text,
            sender_name=person.name,
            sender_avatar_url=demo_avatar_url(person, base_url=avatar_base_url),
            external_id=_external_id(row),
            sent_at=now - step * (len(todo) - 1 - position),
        )
        for position, (row, person) in enumerate(todo)
    ]
    added = rejected = 0
    size = int(settings.CONVO_MAX_BATCH_ITEMS)
    for start in range(0, len(payloads), size):
        # No admission check: a few hundred rows at start-up must not be refused for a backlog.
        results = message_ingest_batch(tenant=tenant, payloads=payloads[start : start + size], admission=False)
        added += sum(1 for result in results if isinstance(result, Accepted) and not result.replayed)
        rejected += sum(1 for result in results if not isinstance(result, Accepted))
    pending = Message.objects.filter(
        tenant=tenant, external_id__startswith=DEMO_EXTERNAL_ID_PREFIX, embedding_state=EmbeddingState.PENDING
    ).count()
    # Ingest already kicks once its batch commits; this covers a re-run after a worker that
    # stopped before embedding everything (the kick is deduplicated within its interval).
    kicked = embedding_kick() if pending else False
    return DemoLoad(
        wanted=len(plan),
        added=added,
        present=len(present),
        rejected=rejected,
        people=len({person.number for _, person in plan}),
        channels=len({person.channel for _, person in plan}),
        pending=pending,
        kicked=kicked,
    )


def _external_id(row: LabelledText) -> str:
    return f"{DEMO_EXTERNAL_ID_PREFIX}{row.index}"
