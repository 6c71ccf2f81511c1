"""Each worker process's matrix of a tenant's joinable clusters: candidate search without a scan.

The exact SQL search reads every joinable cluster's vector for every message (~8-10 ms at 10k
clusters). Instead, a worker keeps per (tenant, space) the clusters' vector sums as a numpy
matrix and scores them all in process (~0.6-1 ms at 10k), making the same decisions as the SQL
scan (``tests/clustering/test_cluster_matrix.py`` compares the two, rule by rule and through
the whole pipeline).

Keeping it right across processes, trusting nothing but the database:

* every write of a cluster row takes a new ``revision`` from one sequence (a trigger, migration
  0002), whoever issues it;
* every writer of a tenant's clusters holds the tenant's clustering lock until it commits
  (assignment, moderation), so once a worker holds the lock nothing of the tenant is in flight,
  and everything committed since its last read has a revision above every one it has seen. The
  move of clusters into a newly activated space (``clustering/services/spaces.py``) runs under
  the spaces lock, held exclusively, which the worker holds shared while it assigns; it changes
  ``space_id``, so the moved rows arrive in the new space's matrix as new revisions, and the
  matrix key carries the space's activation time (a space activated again starts afresh);
* so, under the lock, the worker reads the tenant's rows in the space with a revision above the
  highest it has seen (a range of the index on (tenant, space, revision): usually the few rows
  other workers or moderators changed) and updates its rows; a cluster that is no longer
  joinable (archived, merged) leaves the matrix;
* its own joins and new clusters come back from the UPDATE/INSERT (``RETURNING``): the matrix
  only ever holds values read from the database (the sums exactly as stored, float32, read with
  ``vector_send``; scores are computed in float64 from them).

A transaction that rolls back must not leave its changes behind: a matrix changed by a
transaction stays "owned" by it until ``transaction.on_commit`` confirms it (the callbacks of a
rolled-back savepoint are dropped too). The next transaction that finds it still owned reads
again every row changed since the last confirmation (by id, and by revision); a matrix that was
never confirmed is loaded again. A join whose cluster turns out gone or no longer joinable (a
stale matrix, which the rules above should make impossible) drops the matrix, and SQL decides.

Memory: ``CLUSTER_MATRIX_CACHE_ENTRIES`` matrices per process at most, least recently used
dropped first, taking ``CLUSTER_MATRIX_CACHE_MB`` together at most (4 bytes per dimension per
cluster: the sums as stored); a tenant above ``CLUSTER_MATRIX_MAX_CLUSTERS`` joinable clusters,
or whose matrix alone would not fit, is searched in SQL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import connection, transaction
from threadpoolctl import ThreadpoolController

from clustering.models import JOINABLE, Cluster
from conversations.models import EmbeddingSpace

Floats = npt.NDArray[np.float64]
Key = tuple[int, int, datetime | None]

_CLUSTERS = Cluster._meta.db_table
# What the matrix keeps of a cluster, in the order ``ClusterMatrix.apply`` reads it. The vector
# comes as pgvector's binary form (``vector_send``): exact float32 values, no text to parse.
ROW_COLUMNS = "id, vector_send(vector_sum), size, status, representative_text, revision"
_JOINABLE = frozenset(str(status) for status in JOINABLE)
_HEADER = 4  # vector_send: int16 dimensions, int16 unused, then big-endian float32 values
_NEVER_CONFIRMED = -1

Row = tuple[UUID, bytes, int, str, str, int]


class ClusterMatrix:
    """The joinable clusters of one tenant in one space, as of ``revision``."""

    def __init__(self, *, dimensions: int) -> None:
        self.dimensions = dimensions
        self.ids: list[UUID] = []
        self.rows: dict[UUID, int] = {}
        self.statuses: list[str] = []
        self.texts: list[str] = []
        # The sums as stored (float32, exactly), which halves memory and the scan; every score is
        # then computed in float64 from them (see ``_shortlist``).
        self.sums: npt.NDArray[np.float32] = np.zeros((0, dimensions), dtype=np.float32)
        self.sizes: Floats = np.zeros(0)
        self.norms: Floats = np.zeros(0)
        # Every row with a revision up to this is reflected (some maybe not yet committed).
        self.revision = 0
        # ... and up to this, known committed; the rows changed since then, by id.
        self.confirmed = _NEVER_CONFIRMED
        self.touched: set[UUID] = set()
        # The transaction (a token) that last changed it, until its commit confirms it.
        self.owner: object | None = None
        self.guard = threading.Lock()
        # Twice the error bound of a float32 dot product of ``dimensions`` terms (relative to
        # |a| * |b|), counting the rounding of the result: see ``_shortlist``.
        terms = dimensions + 2
        self._error = 2.0 * terms * 2.0**-24 / (1.0 - terms * 2.0**-24)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return int(self.sums.nbytes + self.sizes.nbytes + self.norms.nbytes)

    # --- keeping up -------------------------------------------------------------------------------

    def load(self, rows: Sequence[Row]) -> None:
        """Fill an empty matrix with ``rows`` (joinable clusters) in one go."""
        n = len(rows)
        width = _HEADER + 4 * self.dimensions
        blob = b"".join(bytes(row[1]) for row in rows)
        if len(blob) != n * width:
            raise ValueError(f"cluster vectors of another size than the space's {self.dimensions} dimensions")
        capacity = max(16, n + n // 4)
        self.sums = np.zeros((capacity, self.dimensions), dtype=np.float32)
        self.sizes = np.zeros(capacity)
        self.norms = np.zeros(capacity)
        if n:
            raw = np.frombuffer(blob, dtype=np.uint8).reshape(n, width)[:, _HEADER:]
            self.sums[:n] = np.ascontiguousarray(raw).view(">f4").reshape(n, self.dimensions)
            for start in range(0, n, 4096):  # float64 norms, a slice at a time
                wide = self.sums[start : start + 4096].astype(np.float64)
                self.norms[start : start + len(wide)] = np.sqrt(np.einsum("ij,ij->i", wide, wide))
            self.sizes[:n] = [row[2] for row in rows]
        self.ids = [row[0] for row in rows]
        self.rows = {cluster_id: index for index, cluster_id in enumerate(self.ids)}
        self.statuses = [row[3] for row in rows]
        self.texts = [row[4] for row in rows]
        self.revision = max((row[5] for row in rows), default=0)

    def apply(self, rows: Iterable[Row]) -> None:
        """Take rows as the database has them now: joinable ones in (new or replaced), the others
        out. Each is remembered as changed until the transaction's commit confirms it."""
        for cluster_id, vector, size, status, text, revision in rows:
            if status in _JOINABLE:
                self._put(cluster_id, vector, size, status, text)
            else:
                self._remove(cluster_id)
            self.touched.add(cluster_id)
            self.revision = max(self.revision, revision)

    def _put(self, cluster_id: UUID, vector: bytes, size: int, status: str, text: str) -> None:
        values = np.frombuffer(vector, dtype=">f4", offset=_HEADER)
        if len(values) != self.dimensions:
            raise ValueError(f"a cluster vector of {len(values)} dimensions in a {self.dimensions}-dimension space")
        index = self.rows.get(cluster_id)
        if index is None:
            index = len(self.ids)
            if index == len(self.sizes):
                self._grow()
            self.rows[cluster_id] = index
            self.ids.append(cluster_id)
            self.statuses.append(status)
            self.texts.append(text)
        else:
            self.statuses[index] = status
            self.texts[index] = text
        self.sums[index] = values
        self.sizes[index] = size
        wide = values.astype(np.float64)
        self.norms[index] = float(np.sqrt(wide @ wide))

    def _remove(self, cluster_id: UUID) -> None:
        index = self.rows.pop(cluster_id, None)
        if index is None:
            return
        last = len(self.ids) - 1
        if index != last:  # the last row takes the freed place: the arrays stay dense
            moved = self.ids[last]
            self.ids[index], self.statuses[index], self.texts[index] = moved, self.statuses[last], self.texts[last]
            self.sums[index], self.sizes[index], self.norms[index] = self.sums[last], self.sizes[last], self.norms[last]
            self.rows[moved] = index
        self.ids.pop()
        self.statuses.pop()
        self.texts.pop()

    def _grow(self) -> None:
        capacity = max(16, 2 * len(self.sizes))
        sums = np.zeros((capacity, self.dimensions), dtype=np.float32)
        sums[: len(self.sums)] = self.sums
        self.sums = sums
        self.sizes = np.resize(self.sizes, capacity)
        self.norms = np.resize(self.norms, capacity)

    def confirm(self, token: object) -> None:
        """The transaction ``token`` committed: what it read and wrote is now committed state
        (unless another transaction has taken the matrix over since, which then confirms it)."""
        with self.guard:
            if self.owner is token:
                self.owner = None
                self.confirmed = self.revision
                self.touched.clear()

    # --- scoring ----------------------------------------------------------------------------------
    #
    # Every score is computed in float64 from the stored float32 values (the SQL path accumulates
    # in float32: the two agree up to ties). So as not to read a float64 copy of the whole matrix
    # per message, a float32 matrix-vector product (BLAS, held to one thread: OpenBLAS's idle
    # threads would otherwise spin on a core the database needs) finds a shortlist that provably
    # holds the best rows: a float32 dot product of d terms is within (d + 2) * 2^-24 * |a| * |b|
    # of the exact one, whatever the order of the additions. Only the shortlist is then scored in
    # float64.

    def nearest_by_cosine(self, vector: Floats, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` rows with the highest cosine to ``vector``, best first, with it: what
        ``1 - (vector_sum <=> vector)`` ranks in SQL (clamped to [-1, 1]; a zero vector's NaN
        ranks last)."""
        n = len(self.ids)
        if not n or limit <= 0:
            return []
        length = float(np.sqrt(vector @ vector))
        valid = self.norms[:n] > 0
        rows: npt.NDArray[np.intp] = np.arange(n) if valid.all() else np.flatnonzero(valid)
        if length == 0:
            rows = rows[:0]
        with np.errstate(divide="ignore"):
            weights = 1.0 / (self.norms[:n] * length)
        best = self._shortlist(vector, limit, weights, rows if len(rows) < n else None)
        cosines = np.clip(self._dots(best, vector) * weights[best], -1.0, 1.0)
        order = np.argsort(-cosines, kind="stable")[:limit]
        found = [(int(best[i]), float(cosines[i])) for i in order]
        if len(found) < limit:  # zero vectors last, as NaN sorts in SQL
            found += [(int(i), float("nan")) for i in np.flatnonzero(~valid | (length == 0))[: limit - len(found)]]
        return found

    def best_inner(self, direction: Floats, vector: Floats, limit: int) -> list[tuple[int, float, float]]:
        """The ``limit`` rows with the highest ``(vector_sum · direction) / max(size, 1)``, best
        first, with that value and the row's cosine to ``vector`` (clamped; NaN for a zero vector)."""
        n = len(self.ids)
        if not n or limit <= 0:
            return []
        weights = 1.0 / np.maximum(self.sizes[:n], 1.0)
        best = self._shortlist(direction, limit, weights, None)
        inner = self._dots(best, direction) * weights[best]
        order = np.argsort(-inner, kind="stable")[:limit]
        best, inner = best[order], inner[order]
        with np.errstate(divide="ignore", invalid="ignore"):
            cosines = self._dots(best, vector) / (self.norms[best] * float(np.sqrt(vector @ vector)))
        cosines = np.clip(cosines, -1.0, 1.0)
        return [(int(i), float(v), float(c)) for i, v, c in zip(best, inner, cosines, strict=True)]

    def _shortlist(
        self, direction: Floats, limit: int, weights: Floats, rows: npt.NDArray[np.intp] | None
    ) -> npt.NDArray[np.intp]:
        """Rows (of ``rows``, or all) sure to hold the ``limit`` largest ``weights * (sums ·
        direction)`` (weights >= 0): every row whose float32 estimate, widened by its error
        bound, reaches the ``limit``-th best estimate narrowed by its own."""
        n = len(self.ids)
        candidates = np.arange(n) if rows is None else rows
        if len(candidates) <= limit:
            return candidates
        sums = self.sums[:n] if rows is None else self.sums[rows]
        w = weights if rows is None else weights[rows]
        with _single_threaded_blas():
            estimate = (sums @ direction.astype(np.float32)) * w
        norms = self.norms[:n] if rows is None else self.norms[rows]
        slack = norms * w
        slack *= self._error * float(np.sqrt(direction @ direction))
        lower = estimate - slack
        kth = np.partition(lower, len(lower) - limit)[len(lower) - limit]
        estimate += slack
        return candidates[np.flatnonzero(estimate >= kth)]

    def _dots(self, rows: npt.NDArray[np.intp], direction: Floats) -> Floats:
        """``sums[rows] · direction`` in float64."""
        return np.einsum("ij,j->i", self.sums[rows].astype(np.float64), direction)

    def largest(self, cluster_ids: Iterable[UUID]) -> int | None:
        """Of these clusters, the row of the one with the most members that is in the matrix."""
        found = [self.rows[c] for c in cluster_ids if c in self.rows]
        return max(found, key=lambda index: self.sizes[index]) if found else None


# --- the per-process cache ------------------------------------------------------------------------

_lock = threading.Lock()
_matrices: OrderedDict[Key, ClusterMatrix] = OrderedDict()


Statement = tuple[str, list[Any]]


class MatrixSync:
    """The catch-up of one tenant's matrix in a space, in two steps, so that the caller can send
    its read in the round trip that takes the tenant's lock: ``statement`` (planned from the
    matrix as it is, which nothing here changes), then, under the lock, ``finish`` with the rows
    it returned. ``finish`` takes the matrix over for the caller's transaction and checks that
    nothing changed it since the plan (another thread of this process, which held the lock
    first): if something did, it plans and reads again, now under the lock."""

    def __init__(self, *, tenant_id: int, space: EmbeddingSpace) -> None:
        self.tenant_id, self.space = tenant_id, space
        self.cap = int(settings.CLUSTER_MATRIX_MAX_CLUSTERS)
        self.budget = int(settings.CLUSTER_MATRIX_CACHE_MB) * 2**20
        self.key: Key = (tenant_id, int(space.pk), space.activated_at)
        self.token = object()
        self.statement: Statement | None = None
        if self.cap <= 0 or int(settings.CLUSTER_MATRIX_CACHE_ENTRIES) <= 0:
            return  # matrices are off: no statement, and ``finish`` answers None
        self._plan()

    def _plan(self) -> None:
        with _lock:
            matrix = _matrices.get(self.key)
        self.matrix, self.mode, self.seen = matrix, "load", None
        self.statement = (_COUNT, [self.tenant_id, self.space.pk, self.cap + 1])
        if matrix is None:
            return
        with matrix.guard:
            self.seen = (matrix.owner, matrix.revision, matrix.confirmed)
            touched = list(matrix.touched)
        owner, revision, confirmed = self.seen
        if owner is None:  # confirmed: the rows changed since
            self.mode = "delta"
            self.statement = _rows_statement(self.tenant_id, self.space, "revision > %s", [revision])
        elif confirmed != _NEVER_CONFIRMED:
            # The last transaction that changed it has not confirmed it (it rolled back, or its
            # commit is not confirmed yet): every row changed since the last confirmation, by id
            # and by revision, as the database has it now.
            self.mode = "repair"
            self.statement = _rows_statement(
                self.tenant_id, self.space, "(revision > %s OR id = ANY(%s))", [confirmed, touched]
            )
        # else: loaded by a transaction that never committed: load it again

    def finish(self, rows: Sequence[Any]) -> ClusterMatrix | None:
        """The caught-up matrix (kept as the most recently used), or None: search in SQL."""
        if self.statement is None:
            return None
        for _ in range(3):
            if self.mode == "load" or self._take():
                return self._finish(rows)
            self._plan()  # changed since the plan: again, under the lock this time
            with connection.cursor() as cursor:
                cursor.execute(*self.statement)
                rows = cursor.fetchall()
        self._forget()  # kept changing: start afresh
        self.mode, self.statement = "load", (_COUNT, [self.tenant_id, self.space.pk, self.cap + 1])
        with connection.cursor() as cursor:
            cursor.execute(*self.statement)
            return self._finish(cursor.fetchall())

    def _take(self) -> bool:
        """Own the planned matrix for this transaction if it is as the plan saw it."""
        matrix = self.matrix
        assert matrix is not None
        with _lock:
            current = _matrices.get(self.key)
        with matrix.guard:
            if current is not matrix or (matrix.owner, matrix.revision, matrix.confirmed) != self.seen:
                return False
            matrix.owner = self.token
        return True

    def _finish(self, rows: Sequence[Any]) -> ClusterMatrix | None:
        matrix = self.matrix
        if self.mode == "load":
            joinable = int(rows[0][0])
            if joinable > self.cap or joinable * int(self.space.dimensions) * 4 > self.budget:
                self._forget()
                return None
            matrix = ClusterMatrix(dimensions=int(self.space.dimensions))
            matrix.owner = self.token
            sql, params = _rows_statement(self.tenant_id, self.space, "status IN ('open', 'answered')", [])
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                matrix.load(cursor.fetchall())
        elif self.mode == "repair":
            assert matrix is not None
            present = {row[0] for row in rows}
            for cluster_id in list(matrix.touched):
                if cluster_id not in present:  # gone from the tenant's space
                    matrix._remove(cluster_id)
            matrix.revision = matrix.confirmed
            matrix.apply(rows)
        else:
            assert matrix is not None
            matrix.apply(rows)
        if len(matrix) > self.cap or matrix.nbytes > self.budget:
            self._forget()
            return None
        _remember(self.key, matrix, self.budget)
        transaction.on_commit(partial(matrix.confirm, self.token))
        return matrix

    def _forget(self) -> None:
        with _lock:
            _matrices.pop(self.key, None)


def cluster_matrix(*, tenant_id: int, space: EmbeddingSpace) -> ClusterMatrix | None:
    """The tenant's matrix in ``space``, caught up with the database, or None when the tenant is
    to be searched in SQL (too many joinable clusters, or matrices turned off). The caller holds
    the tenant's clustering lock, inside the transaction that will use the matrix."""
    sync = MatrixSync(tenant_id=tenant_id, space=space)
    if sync.statement is None:
        return sync.finish([])
    with connection.cursor() as cursor:
        cursor.execute(*sync.statement)
        return sync.finish(cursor.fetchall())


def cluster_matrix_forget(*, tenant_id: int, space: EmbeddingSpace) -> None:
    """Drop the tenant's matrix in ``space`` (the next batch loads it again)."""
    with _lock:
        _matrices.pop((tenant_id, int(space.pk), space.activated_at), None)


def cluster_matrices_clear() -> None:
    """Drop every matrix of this process (tests)."""
    with _lock:
        _matrices.clear()


def cluster_matrices_cached() -> list[Key]:
    """The keys of the matrices this process keeps, least recently used first."""
    with _lock:
        return list(_matrices)


_COUNT = f"""
SELECT count(*) FROM (SELECT 1 FROM {_CLUSTERS}
 WHERE tenant_id = %s AND space_id = %s AND status IN ('open', 'answered') LIMIT %s) AS joinable
"""


def joinable_count(*, tenant_id: int, space: EmbeddingSpace, limit: int) -> int:
    """How many joinable clusters the tenant has in ``space``, counting up to ``limit``."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNT, [tenant_id, space.pk, limit])
        return int(cursor.fetchone()[0])


def _single_threaded_blas() -> Any:
    """numpy's BLAS held to one thread for a block (a matrix-vector product is memory-bound:
    more threads do not make it faster, and OpenBLAS's would spin afterwards)."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController().select(user_api="blas")
    return _blas.limit(limits=1)


_blas: Any = None


def _rows_statement(tenant_id: int, space: EmbeddingSpace, condition: str, params: list[Any]) -> Statement:
    return (
        f"SELECT {ROW_COLUMNS} FROM {_CLUSTERS} WHERE tenant_id = %s AND space_id = %s AND {condition}",
        [tenant_id, space.pk, *params],
    )


def _remember(key: Key, matrix: ClusterMatrix, budget: int) -> None:
    """Keep ``matrix`` as the most recently used; drop the least recently used beyond the bounds."""
    limit = int(settings.CLUSTER_MATRIX_CACHE_ENTRIES)
    with _lock:
        _matrices[key] = matrix
        _matrices.move_to_end(key)
        total = sum(entry.nbytes for entry in _matrices.values())
        while len(_matrices) > 1 and (len(_matrices) > limit or total > budget):
            _, dropped = _matrices.popitem(last=False)
            total -= dropped.nbytes
