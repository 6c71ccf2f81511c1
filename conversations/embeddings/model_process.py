"""The local model run in a child process (``model_server.py``), one per model (and options)
and process.

Why: the embedding worker runs the model in one thread while another stores the previous batch
(vectors, states, clusters). In one process both need the interpreter lock, and each statement
the storing thread sends made the model wait: a few per cent of throughput at batch 10
(docs/benchmarks.md, issue 3). In a process of its own the model waits for nothing, and the
worker and web processes never import torch.

Contract:

* ``model_process_for`` returns this process's server for a (model path, threads, batch size),
  starting it on first use and waiting until the model is loaded: a model that cannot be loaded
  is ``ImproperlyConfigured`` when the embedder is built.
* ``encode`` sends a batch and waits at most ``timeout_seconds`` for the child to take it and
  answer. The child dying, hanging past the timeout, failing to encode or answering out of step
  is ``EmbeddingUnavailable`` (the batch is retried later); a dead or hung child is killed and
  the next call starts a new one. A child found dead when asked is replaced at once, once,
  within the call: the new child shares the call's time, beyond its own loading.
* Calls are serialised per server (the protocol is one request, one answer); any interruption
  between the two (an exception, a signal) ends the child, so an answer is never read by the
  wrong request.
* The child ends with its parent: when this process exits or is killed, the child reads the end
  of its input (or sees its parent change) and stops. A forked process (the django-q2 cluster and
  gunicorn fork their workers) closes its copies of the parent's pipes and starts its own child.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.base import EmbeddingUnavailable
from conversations.embeddings.model_server import FRAME_LENGTH

_SERVER = Path(__file__).with_name("model_server.py")
START_TIMEOUT_SECONDS = 300.0  # loading from disk takes ~5 s; a cold, busy machine much longer


class _Timeout(Exception):
    pass


class ModelProcess:
    """A running ``model_server.py`` and the pipes to it."""

    def __init__(self, *, path: str, threads: int, batch_size: int) -> None:
        self.path, self.threads, self.batch_size = path, threads, batch_size
        self.dimensions = 0
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        _every.add(self)
        with self._lock:
            self._start(error=ImproperlyConfigured)

    def __repr__(self) -> str:
        return f"<ModelProcess {self.path} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None else None

    def encode(self, texts: Sequence[str], *, timeout_seconds: float) -> np.ndarray:
        """The vectors of ``texts`` as a (len(texts), dimensions) float32 array."""
        body = json.dumps(list(texts)).encode()
        request = FRAME_LENGTH.pack(len(body)) + body
        deadline = time.monotonic() + timeout_seconds  # for the whole call, a replaced child included
        with self._lock:
            # A child that died since the last call may only show it when asked (a process with
            # threads is reaped once its last thread has ended): it is replaced, once.
            for attempt in (1, 2):
                if self._child is not None and self._child.poll() is not None:
                    self._stop()
                if self._child is None:
                    self._start(error=EmbeddingUnavailable)
                try:
                    answer = self._ask(request, deadline=deadline)
                    break
                except (OSError, EOFError) as exc:
                    self._stop()
                    if attempt == 2:
                        raise EmbeddingUnavailable(f"the model process for {self.path} ended: {exc}") from exc
                except _Timeout as exc:
                    self._stop()
                    raise EmbeddingUnavailable(f"the model process for {self.path} gave no answer in time") from exc
                except BaseException:
                    self._stop()  # its answer, if it comes, must not be read by the next request
                    raise
            if answer[:1] == b"E":
                raise EmbeddingUnavailable(
                    f"the model process could not encode {len(texts)} texts: {answer[1:].decode(errors='replace')}"
                )
            size = (len(answer) - 1) // 4
            if answer[:1] != b"V" or size != len(texts) * self.dimensions or (len(answer) - 1) % 4:
                self._stop()  # out of step with this process: never trust its next answer either
                raise EmbeddingUnavailable(f"the model process answered {len(answer)} bytes for {len(texts)} texts")
        return np.frombuffer(answer, dtype="<f4", offset=1).reshape(len(texts), self.dimensions)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _ask(self, request: bytes, *, deadline: float) -> bytes:
        child = self._child
        assert child is not None
        assert child.stdin is not None
        assert child.stdout is not None
        _write_all(child.stdin.fileno(), request, deadline)
        return _frame_read(child.stdout.fileno(), deadline=deadline)

    def _start(self, *, error: type[Exception]) -> None:
        try:
            self._child = subprocess.Popen(  # noqa: S603  (our own script, arguments from settings, no shell)
                # -P: the script's folder holds http.py, which must not shadow the standard library
                [sys.executable, "-P", str(_SERVER), self.path, str(self.threads), str(self.batch_size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # nothing sits in a buffer: a fork cannot replay half a request
            )
        except OSError as exc:
            raise error(f"the model process for {self.path} could not be started: {exc}") from exc
        assert self._child.stdin is not None
        os.set_blocking(self._child.stdin.fileno(), False)  # a write waits in _write_all, with its deadline
        try:
            hello = self._hello()
        except BaseException as exc:
            self._stop()  # also on an interrupt: its first frame would be read as the next answer
            if not isinstance(exc, Exception):
                raise
            raise error(f"the model process for {self.path} did not start: {exc!r}") from exc
        if "error" in hello:
            self._stop()
            raise error(f"cannot load the local embedding model {self.path!r} offline: {hello['error']}")
        self.dimensions = hello["dimensions"]

    def _hello(self) -> dict[str, Any]:
        """The child's first frame: the size of its vectors once loaded, or why it cannot load."""
        assert self._child is not None
        assert self._child.stdout is not None
        hello = json.loads(_frame_read(self._child.stdout.fileno(), deadline=time.monotonic() + START_TIMEOUT_SECONDS))
        if not isinstance(hello, dict) or not ("error" in hello or isinstance(hello.get("dimensions"), int)):
            raise ValueError(f"unexpected first frame {hello!r}")
        return hello

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            _close_pipes(child)
        finally:
            child.kill()
            child.wait()

    def _forget_after_fork(self) -> None:
        """In a forked process: the child is the parent's. Close this copy of its pipes (so it
        still sees its end when the parent goes) and start another when next asked."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        child, self._child = self._child, None
        if child is not None:
            _close_pipes(child)


def _close_pipes(child: subprocess.Popen[bytes]) -> None:
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _ready(fd: int, event: int, deadline: float, late: str) -> Iterator[None]:
    """Yields each time ``fd`` is ready for ``event``; ``_Timeout(late)`` once ``deadline`` passes."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, event)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise _Timeout(late)
            yield


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    for _ in _ready(fd, selectors.EVENT_WRITE, deadline, "the model process took no request in time"):
        with contextlib.suppress(BlockingIOError):  # the pipe filled up again: wait for room
            view = view[os.write(fd, view) :]
        if not view:
            return


def _frame_read(fd: int, *, deadline: float) -> bytes:
    (length,) = FRAME_LENGTH.unpack(_read_exactly(fd, FRAME_LENGTH.size, deadline))
    return _read_exactly(fd, length, deadline)


def _read_exactly(fd: int, count: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    if count:
        for _ in _ready(fd, selectors.EVENT_READ, deadline, "no answer in time"):
            chunk = os.read(fd, min(count, 1 << 20))
            if not chunk:
                raise EOFError("the model process ended")
            chunks.append(chunk)
            count -= len(chunk)
            if not count:
                break
    return b"".join(chunks)


_every: weakref.WeakSet[ModelProcess] = weakref.WeakSet()
_servers: dict[tuple[str, int, int], ModelProcess] = {}
_servers_lock = threading.Lock()


def model_process_for(*, path: str, threads: int, batch_size: int) -> ModelProcess:
    """This process's server for the model at ``path``, started (and loaded) on first use."""
    key = (path, threads, batch_size)
    with _servers_lock:
        server = _servers.get(key)
        if server is None:
            server = _servers[key] = ModelProcess(path=path, threads=threads, batch_size=batch_size)
        return server


def _close_all() -> None:
    for server in list(_every):
        server.close()


def _after_fork_in_child() -> None:
    global _servers_lock
    _servers_lock = threading.Lock()
    for server in list(_every):
        server._forget_after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
