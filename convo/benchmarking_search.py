"""Measurement helpers for ``manage.py convo_benchmark_embeddings``: the Banking77 data, synthetic
corpora built from real vectors, exact nearest neighbours and recall, a django-q2 cluster that
lives exactly as long as a measurement, a poller that sees items become done, and the table.

Like ``convo.benchmarking`` nothing here touches Django models: the command owns every query, so
these pieces can be reused (and tested) on their own.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from convo.benchmarking import Summary, render_lines

Matrix = npt.NDArray[np.float32]

BANKING77_DIR = Path(os.environ.get("CONVO_BANKING77_DIR", "/work/shared/data/banking77"))


# --- data ---------------------------------------------------------------------------------------


def banking77(split: str, *, directory: Path = BANKING77_DIR) -> list[str]:
    """The ``text`` column of Banking77's ``train`` or ``test`` split, in file order."""
    with open(directory / f"{split}.csv", newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def vectors_cached(
    texts: Sequence[str], *, model_id: str, embed: Callable[[list[str]], list[list[float]]], cache_dir: Path
) -> Matrix:
    """``embed(texts)`` as a float32 matrix, kept in ``cache_dir`` under a hash of the model and the
    texts, so a second run does not spend a minute re-embedding the same corpus. (This is a file
    of benchmark inputs, not the service's embedding cache, which the pipeline measurements use
    cold.)"""
    digest = hashlib.sha256(model_id.encode() + b"\0" + "\0".join(texts).encode()).hexdigest()[:20]
    path = cache_dir / f"vectors-{digest}.npy"
    if path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return np.asarray(cached, dtype=np.float32)
    matrix = np.asarray(embed(list(texts)), dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, matrix)
    temporary.replace(path)
    return matrix


def unit_rows(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def corpus_from(base: Matrix, size: int, *, sigma: float, seed: int) -> Matrix:
    """``size`` unit vectors: the real ``base`` vectors first, then copies of them with gaussian
    noise of ``sigma`` per dimension, renormalised (a paraphrase of the same question, roughly: at
    sigma 0.015 and 384 dimensions a copy keeps a cosine of ~0.96 to its original)."""
    rows = np.empty((size, base.shape[1]), dtype=np.float32)
    first = min(size, base.shape[0])
    rows[:first] = base[:first]
    rng = np.random.default_rng(seed)
    start = first
    while start < size:
        end = min(size, start + base.shape[0])
        source = base[: end - start]
        noisy = source + rng.normal(0.0, sigma, size=source.shape).astype(np.float32)
        rows[start:end] = unit_rows(noisy)
        start = end
    return rows


def exact_top_k(corpus: Matrix, queries: Matrix, k: int) -> tuple[npt.NDArray[Any], Matrix]:
    """Brute-force nearest neighbours by cosine (the rows are unit vectors, so a dot product):
    (indices, similarities), each of shape (queries, k), nearest first. Queries go in chunks
    that keep the score matrix near 256 MB, whatever the corpus size."""
    k = min(k, corpus.shape[0])
    chunk = max(1, 64_000_000 // max(1, corpus.shape[0]))
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    similarities = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ corpus.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1)
        indices[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        similarities[start : start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return indices, similarities


def recall_with_ties(found: Sequence[float], exact: Sequence[float], *, k: int, tolerance: float = 1e-5) -> float:
    """Recall@k that does not punish ties: a returned item counts when its (exactly recomputed)
    similarity reaches the k-th best exact similarity. Identical texts give identical vectors, so
    "the" true top k is only defined up to ties. ``found`` are the exact similarities of what the
    search returned; ``exact`` the brute-force top-k similarities."""
    wanted = min(k, len(exact))
    if wanted == 0:
        return 1.0
    kth = exact[wanted - 1]
    return min(wanted, sum(1 for value in found[:k] if value >= kth - tolerance)) / wanted


# --- pacing and observation ---------------------------------------------------------------------


def paced(rate: float, count: int, *, began: float) -> Iterator[int]:
    """Yield 0..count-1, each no earlier than ``began + i / rate`` (open loop: a late item is sent
    at once, and the schedule does not slip)."""
    for index in range(count):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield index


class DonePoller(threading.Thread):
    """Polls ``fetch_done(outstanding ids)`` every ``interval`` seconds (one query for all of
    them) and records, per id, the ``perf_counter`` at which the poll that first saw it started:
    the row was committed before that query's snapshot, so this is an upper bound of the time it
    became visible, late by at most one interval plus the query itself."""

    def __init__(self, fetch_done: Callable[[list[Any]], Iterable[Any]], *, interval: float) -> None:
        super().__init__(daemon=True, name="convo-bench-poller")
        self._fetch_done = fetch_done
        self._interval = interval
        self._outstanding: set[Any] = set()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.seen: dict[Any, float] = {}
        self.polls = 0
        self.poll_seconds = 0.0
        self.error: BaseException | None = None

    def watch(self, item: Any) -> None:
        with self._lock:
            self._outstanding.add(item)

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                with self._lock:
                    wanted = list(self._outstanding)
                began = time.perf_counter()
                if wanted:
                    done = set(self._fetch_done(wanted))
                    self.polls += 1
                    self.poll_seconds += time.perf_counter() - began
                    with self._lock:
                        for item in done:
                            if item in self._outstanding:
                                self._outstanding.discard(item)
                                self.seen[item] = began
                self._halt.wait(max(0.0, self._interval - (time.perf_counter() - began)))
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# --- a django-q2 cluster ------------------------------------------------------------------------


class QCluster:
    """``manage.py qcluster`` in its own session, stopped on exit whatever happened: SIGTERM to
    its process group (django-q2 stops its workers after their current task), then SIGKILL.

    django-q2's graceful stop can take half a minute (it waits for its pusher and for the tasks
    already pulled); ``grace`` is short because a kill is safe here: a batch killed mid-way is
    handed back by the reconciler after its lease, which is what the worker is built for."""

    def __init__(self, *, manage_py: Path, env: Mapping[str, str], log_path: Path) -> None:
        self._argv = [sys.executable, str(manage_py), "qcluster"]
        self._cwd = manage_py.parent
        self._env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> QCluster:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
                self._argv, cwd=self._cwd, env=self._env, stdout=log, stderr=log, start_new_session=True
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the group is only the cluster's
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # Workers that outlived the master (they are in the same group) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


# --- timing proxy -------------------------------------------------------------------------------


class TimedEmbedder:
    """Wraps an embedder (same ``model_id`` and ``dimensions``, so the same space and cache keys)
    and adds up the time spent inside ``embed``: the pipeline's time minus this is its overhead."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id: str = inner.model_id
        self.dimensions: int = inner.dimensions
        self.seconds = 0.0
        self.calls = 0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        began = time.perf_counter()
        try:
            return list(self.inner.embed(texts))
        finally:
            self.seconds += time.perf_counter() - began
            self.calls += 1
            self.texts += len(texts)

    def reset(self) -> None:
        self.seconds, self.calls, self.texts = 0.0, 0, 0


# --- the results table --------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of the results: a measured value beside the issue's target, if it has one."""

    section: str
    name: str
    value: str
    target: str = ""
    verdict: str = ""
    note: str = ""
    latency: Summary | None = None
    data: dict[str, Any] = field(default_factory=dict)


def verdict(met: bool | None) -> str:
    if met is None:
        return ""
    return "met" if met else "MISSED"


def render_table(figures: Sequence[Figure]) -> str:
    header = ("#", "measurement", "value", "target", "verdict")
    return render_lines([header, *((f.section, f.name, f.value, f.target, f.verdict) for f in figures)])


def ms(summary: Summary) -> str:
    return f"p50 {summary.p50:.2f} / p95 {summary.p95:.2f} / p99 {summary.p99:.2f} ms (n={summary.count})"
