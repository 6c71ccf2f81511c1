"""convo_benchmark_knowledge end to end on a tiny Banking77-shaped set: the entries go through the
services and the worker, the questions through the lookup, the tally is printed, and the
benchmark's tenant is gone afterwards."""

from __future__ import annotations

import csv
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from conversations.models import Tenant
from feedback.benchmarking import Labelled, intent_answer, labelled_rows
from feedback.models import KnowledgeEntry, KnowledgeEntryVersion

pytestmark = pytest.mark.django_db(transaction=True)

TRAIN = [
    ("where is my new card", "card_arrival"),
    ("my card has not arrived yet", "card_arrival"),
    ("how do I change my pin", "change_pin"),
    ("I want a new pin number", "change_pin"),
]
# Two asked as stored (the hashing embedder's similarity 1.0: answered right), one unrelated.
TEST = [("where is my new card", "card_arrival"), ("how do I change my pin", "change_pin"), ("zebra", "other")]


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        writer.writerows(rows)


def test_the_benchmark_tallies_right_and_unanswered_and_cleans_up(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", TRAIN)
    write(tmp_path / "test.csv", TEST)
    out = StringIO()

    call_command("convo_benchmark_knowledge", "--data-dir", str(tmp_path), stdout=out)

    lines = {
        line.split("|")[0].strip(): line.split("|")[1].strip() for line in out.getvalue().splitlines() if "|" in line
    }
    assert lines["questions asked"] == "3"
    assert lines["answered, right intent"] == "66.7%"
    assert lines["answered, wrong intent"] == "0.0%"
    assert lines["no match"] == "33.3%"
    assert not Tenant.objects.filter(slug__startswith="bench-kb-").exists()
    assert not KnowledgeEntry.objects.exists() and not KnowledgeEntryVersion.objects.exists()


def test_rows_are_read_per_intent_and_answers_are_one_per_intent(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", TRAIN)
    assert labelled_rows(tmp_path / "train.csv", per_intent=1) == [
        Labelled("where is my new card", "card_arrival"),
        Labelled("how do I change my pin", "change_pin"),
    ]
    assert intent_answer("card_arrival") == "Answer for card arrival."
