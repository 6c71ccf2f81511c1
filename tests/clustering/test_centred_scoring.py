"""The centred average-link rule, as the database runs it, makes exactly the partition that a plain
numpy implementation of the rule makes on the same vectors (the rule studied in docs/clustering.md),
through the warm-up and past it."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from clustering.models import ClusterMembership, TenantCentre
from conversations.embeddings import get_embedder
from conversations.models import Message
from tests.clustering.conftest import Inbound

pytestmark = pytest.mark.django_db

TOPICS = [
    "how much does the premium plan cost",
    "my parcel never arrived at the delivery address",
    "can I pay for my order with a credit card",
    "when is the next live stream happening",
    "how do I reset the password of my account",
    "is the shop open on sunday afternoon",
    "I want a refund for the broken headphones",
    "do you ship your products to canada",
]
TAILS = ["", " please", " today", " thanks", " right now", " asap", " again", " soon", " ?", " for me"]
OPENERS = ["", "hi ", "hello ", "hey ", "quick question: ", "sorry, "]


def reference_partition(vectors: np.ndarray, warmup: int, warm_t: float, t: float) -> list[int]:
    """The rule in a few lines of numpy: centroid cosine during the warm-up, then centred
    average-link against the tenant's running mean (which includes the message)."""
    total, norm_sum = np.zeros(vectors.shape[1]), 0.0
    sums: list[np.ndarray] = []
    sizes: list[int] = []
    labels = []
    for count, x in enumerate(vectors, start=1):
        total += x
        mu = total / count
        q = x - mu
        q_norm = max(float(np.linalg.norm(q)), 1e-9)
        norm_sum += q_norm
        chosen = -1
        if sums:
            stacked, n = np.array(sums), np.array(sizes)
            if count < warmup:
                cosines = stacked @ x / np.linalg.norm(stacked, axis=1)
                best = int(np.argmax(cosines))
                chosen = best if cosines[best] >= warm_t else -1
            else:
                scores = ((stacked @ q) / n - q @ mu) / (q_norm * (norm_sum / count))
                best = int(np.argmax(scores))
                chosen = best if scores[best] >= t else -1
        if chosen < 0:
            sums.append(x.copy())
            sizes.append(1)
            labels.append(len(sums) - 1)
        else:
            sums[chosen] += x
            sizes[chosen] += 1
            labels.append(chosen)
    return labels


def canonical(labels: list) -> list[int]:
    seen: dict = {}
    return [seen.setdefault(label, len(seen)) for label in labels]


def test_the_database_follows_the_reference_rule(tenant, inbound: Inbound, settings) -> None:
    settings.CLUSTER_SHORT_MESSAGE_CHARS = 0  # the wording rule is not part of the reference
    settings.CLUSTER_CENTERING_MIN_MESSAGES = 30
    settings.EMBEDDING_BATCH_SIZE = 7  # several batches: the centre is saved and loaded between them
    texts = [f"{opener}{topic}{tail}" for topic, opener, tail in itertools.product(TOPICS, OPENERS[:3], TAILS[:4])]
    random.Random(7).shuffle(texts)
    assert len(set(texts)) == len(texts) == 96
    messages = inbound(tenant, *texts)

    ordered = list(Message.objects.filter(pk__in=[m.pk for m in messages]).order_by("created_at", "id"))
    vectors = np.array(get_embedder().embed([m.text for m in ordered]), dtype=np.float64)
    expected = reference_partition(
        vectors,
        warmup=30,
        warm_t=settings.CLUSTER_WARMUP_SIMILARITY_THRESHOLD,
        t=settings.CLUSTER_SIMILARITY_THRESHOLD,
    )
    membership = dict(ClusterMembership.objects.filter(tenant=tenant).values_list("message_id", "cluster_id"))
    actual = [membership[m.pk] for m in ordered]
    assert canonical(actual) == canonical(expected)
    assert len(set(expected)) < len(texts) / 3  # the rule really groups (not one cluster per message)
    centre = TenantCentre.objects.get(tenant=tenant)
    assert centre.messages == 96
    assert np.allclose(np.asarray(centre.vector_sum), vectors.sum(axis=0), atol=1e-4)
