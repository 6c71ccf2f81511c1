"""clustering.metrics against values worked out by hand (scikit-learn is not a dependency; the
expected values are also what sklearn's normalized_mutual_info_score / adjusted_rand_score give)."""

from __future__ import annotations

import math
from uuid import uuid4

import pytest

from clustering.metrics import (
    adjusted_rand_index,
    clusters_covering,
    contingency,
    entropy,
    normalized_mutual_info,
    purity,
)


@pytest.mark.parametrize(
    ("truth", "predicted"),
    [
        ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
        ([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 9, 9]),  # the same partition under other names
        (["a", "a", "b", "c"], [uuid4()] * 2 + [uuid4(), uuid4()]),  # labels need not be ints, nor ordered
    ],
)
def test_identical_partitions_score_one(truth: list[object], predicted: list[object]) -> None:
    assert normalized_mutual_info(truth, predicted) == pytest.approx(1.0)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(1.0)
    assert purity(truth, predicted) == pytest.approx(1.0)


def test_a_refinement() -> None:
    """truth {0,1} {2,3}; predicted {0,1} {2} {3}.

    H(truth) = ln 2; H(predicted) = -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2; the prediction
    refines the truth, so I = H(truth) = ln 2, and NMI = ln 2 / ((ln 2 + 1.5 ln 2) / 2) = 0.8.
    Pairs: 6 in all; joined by both 1, by the truth 2, by the prediction 1. Expected index
    2 * 1 / 6 = 1/3, maximum (2 + 1) / 2 = 3/2, so ARI = (1 - 1/3) / (3/2 - 1/3) = 4/7."""
    truth, predicted = [0, 0, 1, 1], [0, 0, 1, 2]
    assert normalized_mutual_info(truth, predicted) == pytest.approx(0.8)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(4 / 7)
    assert purity(truth, predicted) == pytest.approx(1.0)  # every cluster is pure
    # Swapping the roles changes neither NMI nor ARI, but purity: cluster {2,3} mixes two labels.
    assert normalized_mutual_info(predicted, truth) == pytest.approx(0.8)
    assert adjusted_rand_index(predicted, truth) == pytest.approx(4 / 7)
    assert purity(predicted, truth) == pytest.approx(3 / 4)


def test_crossing_partitions() -> None:
    """truth {0,1} {2,3}; predicted {0,2} {1,3}: each cluster holds one of each label.

    I = 0, so NMI = 0. Pairs joined by both: 0; by the truth 2; by the prediction 2; expected
    index 2 * 2 / 6 = 2/3, maximum 2, so ARI = (0 - 2/3) / (2 - 2/3) = -1/2: worse than chance."""
    truth, predicted = [0, 0, 1, 1], [0, 1, 0, 1]
    assert normalized_mutual_info(truth, predicted) == pytest.approx(0.0)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(-0.5)
    assert purity(truth, predicted) == pytest.approx(0.5)


def test_a_six_item_example() -> None:
    """truth {0,1,2} {3,4,5}; predicted {0,1} {2,3} {4,5}.

    Contingency [[2,1,0],[0,1,2]]. Pairs: joined by both 1 + 1 = 2; by the truth 3 + 3 = 6; by the
    prediction 1 + 1 + 1 = 3; 15 in all. Expected 6 * 3 / 15 = 6/5, maximum 9/2, so
    ARI = (2 - 6/5) / (9/2 - 6/5) = (4/5) / (33/10) = 8/33.
    I = 2 * (2/6 ln(6*2 / (3*2))) + 2 * (1/6 ln(6*1 / (3*2))) = 2/3 ln 2;
    H(truth) = ln 2, H(predicted) = ln 3, so NMI = (2/3 ln 2) / ((ln 2 + ln 3) / 2).
    Purity: the clusters' majorities hold 2 + 1 + 2 = 5 of 6 items."""
    truth, predicted = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert adjusted_rand_index(truth, predicted) == pytest.approx(8 / 33)
    assert normalized_mutual_info(truth, predicted) == pytest.approx(
        (2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2)
    )
    assert purity(truth, predicted) == pytest.approx(5 / 6)


def test_one_big_cluster_carries_no_information() -> None:
    truth, predicted = [0, 0, 1, 1, 2, 2], ["x"] * 6
    assert normalized_mutual_info(truth, predicted) == pytest.approx(0.0)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(0.0)
    assert purity(truth, predicted) == pytest.approx(2 / 6)


def test_all_singletons_are_pure_but_not_informative_pairs() -> None:
    """Every item alone: purity is 1 (why the benchmark prints the cluster count beside it), ARI 0
    (no pair joined), NMI = H(truth) / ((H(truth) + ln n) / 2)."""
    truth, predicted = [0, 0, 1, 1], [0, 1, 2, 3]
    assert purity(truth, predicted) == pytest.approx(1.0)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(0.0)
    assert normalized_mutual_info(truth, predicted) == pytest.approx(math.log(2) / ((math.log(2) + math.log(4)) / 2))


@pytest.mark.parametrize(
    ("truth", "predicted", "nmi", "ari"),
    [
        ([], [], 1.0, 1.0),  # as sklearn: nothing to disagree about
        ([1, 1, 1], [7, 7, 7], 1.0, 1.0),  # one cluster each: a perfect match
        ([0, 1, 2], [0, 1, 2], 1.0, 1.0),  # all singletons on both sides: no pair to disagree on
        ([0, 1, 2], [5, 5, 5], 0.0, 0.0),
    ],
)
def test_degenerate_cases_follow_sklearn(truth: list[int], predicted: list[int], nmi: float, ari: float) -> None:
    assert normalized_mutual_info(truth, predicted) == pytest.approx(nmi)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(ari)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="labels_true has 2 items"):
        normalized_mutual_info([0, 1], [0])


def test_contingency_keeps_only_non_empty_cells() -> None:
    table = contingency(["a", "a", "b", "b", "b"], [1, 2, 2, 2, 3])
    cells = sorted(zip(table.cell_class.tolist(), table.cell_cluster.tolist(), table.cells.tolist(), strict=True))
    assert cells == [(0, 0, 1), (0, 1, 1), (1, 1, 2), (1, 2, 1)]
    assert table.class_sizes.tolist() == [2, 3]
    assert table.cluster_sizes.tolist() == [1, 3, 1]
    assert table.n == 5


def test_entropy() -> None:
    import numpy as np

    assert entropy(np.array([5])) == pytest.approx(0.0)
    assert entropy(np.array([1, 1, 1, 1])) == pytest.approx(math.log(4))
    assert entropy(np.array([], dtype=np.int64)) == 0.0


def test_large_partitions_stay_exact() -> None:
    """Pair counts in Python integers: 200k items in 2 clusters would overflow nothing, and a
    shuffled copy of a partition still scores 1."""
    n = 200_000
    truth = [i % 2 for i in range(n)]
    assert adjusted_rand_index(truth, [1 - label for label in truth]) == pytest.approx(1.0)
    assert normalized_mutual_info(truth, [1 - label for label in truth]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("predicted", "share", "expected"),
    [
        (["a"] * 8 + ["b", "c"], 0.8, 1),  # the biggest cluster alone holds 8 of 10
        (["a"] * 7 + ["b", "c", "d"], 0.8, 2),
        (list(range(10)), 0.8, 8),  # singletons: 8 of them for 80%
        (["a"] * 5 + ["b"] * 3 + ["c"] * 2, 1.0, 3),
        ([], 0.8, 0),
    ],
)
def test_clusters_covering(predicted: list[object], share: float, expected: int) -> None:
    assert clusters_covering(predicted, share) == expected


def test_clusters_covering_rejects_a_bad_share() -> None:
    with pytest.raises(ValueError, match="share"):
        clusters_covering([1, 2], 0)
