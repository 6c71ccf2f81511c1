"""How well a clustering agrees with known labels: pure functions over two label sequences.

Used by ``convo_benchmark_clustering`` to score the online assignment against Banking77's intents
(the intent is the ground truth for "these messages ask the same thing"). scikit-learn is not a
dependency, so NMI and ARI are written here with numpy, following sklearn's definitions exactly
(NMI with the arithmetic mean of the two entropies, sklearn's default; ARI from pair counts),
including their answers in the degenerate cases. The contingency table is kept sparse (only the
non-empty cells), so thousands of clusters against thousands of labels cost memory in the number
of messages, not in clusters x labels.

Labels may be anything hashable (ints, strings, UUIDs); only equality matters.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Contingency:
    """The non-empty cells of the classes x clusters table, and both marginals."""

    n: int
    cells: IntArray  # counts of the non-empty (class, cluster) cells
    class_sizes: IntArray
    cluster_sizes: IntArray
    cell_class: IntArray  # the class index of each cell
    cell_cluster: IntArray  # the cluster index of each cell


def contingency(labels_true: Sequence[Hashable], labels_pred: Sequence[Hashable]) -> Contingency:
    if len(labels_true) != len(labels_pred):
        raise ValueError(f"labels_true has {len(labels_true)} items but labels_pred has {len(labels_pred)}")
    classes = _codes(labels_true)
    clusters = _codes(labels_pred)
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0
    pairs, counts = np.unique(classes * max(n_clusters, 1) + clusters, return_counts=True)
    return Contingency(
        n=len(labels_true),
        cells=counts.astype(np.int64),
        class_sizes=np.bincount(classes).astype(np.int64),
        cluster_sizes=np.bincount(clusters).astype(np.int64),
        cell_class=(pairs // max(n_clusters, 1)).astype(np.int64),
        cell_cluster=(pairs % max(n_clusters, 1)).astype(np.int64),
    )


def entropy(sizes: IntArray) -> float:
    """Shannon entropy (natural log) of a partition given its part sizes."""
    total = sizes.sum()
    if total == 0:
        return 0.0
    p = sizes[sizes > 0] / total
    return float(-(p * np.log(p)).sum())


def mutual_information(table: Contingency) -> float:
    if table.n == 0:
        return 0.0
    n = float(table.n)
    outer = table.class_sizes[table.cell_class].astype(np.float64) * table.cluster_sizes[table.cell_cluster]
    cells = table.cells.astype(np.float64)
    value = float((cells / n * (np.log(cells * n) - np.log(outer))).sum())
    return max(value, 0.0)  # rounding can leave -1e-17 for independent partitions


def normalized_mutual_info(labels_true: Sequence[Hashable], labels_pred: Sequence[Hashable]) -> float:
    """NMI with arithmetic normalisation: I(U; V) / ((H(U) + H(V)) / 2), in [0, 1].

    As sklearn: 1.0 when both are a single cluster (or both empty), 0.0 when either partition
    carries no information and the other does."""
    table = contingency(labels_true, labels_pred)
    if table.class_sizes.size == table.cluster_sizes.size and table.class_sizes.size <= 1:
        return 1.0
    mi = mutual_information(table)
    if mi == 0.0:
        return 0.0
    normalizer = (entropy(table.class_sizes) + entropy(table.cluster_sizes)) / 2
    return float(min(1.0, mi / max(normalizer, np.finfo(np.float64).eps)))


def adjusted_rand_index(labels_true: Sequence[Hashable], labels_pred: Sequence[Hashable]) -> float:
    """The Rand index corrected for chance (Hubert and Arabie): 1.0 for identical partitions,
    about 0 for independent ones, negative when they agree less than chance.

    From the pair confusion matrix, in Python integers (no overflow at any size); as sklearn,
    1.0 when no pair is split by one partition and joined by the other (e.g. both all-singletons)."""
    table = contingency(labels_true, labels_pred)
    n = table.n
    together_both = sum(comb(int(c), 2) for c in table.cells)  # pairs joined by both
    together_true = sum(comb(int(c), 2) for c in table.class_sizes)
    together_pred = sum(comb(int(c), 2) for c in table.cluster_sizes)
    tp = together_both
    fp = together_pred - together_both  # joined by the clustering only
    fn = together_true - together_both  # joined by the labels only
    tn = comb(n, 2) - tp - fp - fn
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def purity(labels_true: Sequence[Hashable], labels_pred: Sequence[Hashable]) -> float:
    """Share of items whose cluster's most common label is their own label. 1.0 for all
    singletons, so read it beside the number of clusters."""
    table = contingency(labels_true, labels_pred)
    if table.n == 0:
        return 1.0
    best = np.zeros(table.cluster_sizes.size, dtype=np.int64)
    np.maximum.at(best, table.cell_cluster, table.cells)
    return float(best.sum() / table.n)


def clusters_covering(labels_pred: Sequence[Hashable], share: float = 0.8) -> int:
    """How many of the largest clusters together hold at least ``share`` of the items: the
    moderator's workload if they answer clusters biggest first until ``share`` is covered."""
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    if not labels_pred:
        return 0
    sizes = np.sort(np.bincount(_codes(labels_pred)))[::-1]
    needed = share * len(labels_pred)
    # A small tolerance so that e.g. 0.8 * 10 = 8.000000000000002 still counts 8 items as enough.
    return int(np.searchsorted(np.cumsum(sizes), needed - 1e-9) + 1)


def _codes(labels: Sequence[Hashable]) -> IntArray:
    """Dense integer codes in order of first appearance (no sorting: labels need not be ordered)."""
    seen: dict[Hashable, int] = {}
    return np.fromiter((seen.setdefault(label, len(seen)) for label in labels), dtype=np.int64, count=len(labels))
