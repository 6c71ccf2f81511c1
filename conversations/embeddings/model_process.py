"""The local model run in a child process (``model_server.py``), one per model and process.

Why: the embedding worker runs the model in one thread while another stores the previous batch
(vectors, states, clusters). In one process both need the interpreter lock, and each statement
the storing thread sends made the model wait: a few per cent of throughput at batch 10
(docs/benchmarks.md, issue 3). In a process of its own the model waits for nothing, and the
worker and web processes never import torch.

Contract:

* ``model_process_for`` returns this process's server for a (model path, threads, batch size),
  starting it on first use and waiting until the model is loaded: a model that cannot be loaded
  is ``ImproperlyConfigured`` when the embedder is built.
* ``encode`` sends a batch and waits at most ``timeout_seconds`` for the vectors. The child
  dying, hanging past the timeout, or failing to encode is ``EmbeddingUnavailable`` (the batch is
  retried later); a dead or hung child is killed and the next call starts a new one.
* Calls are serialised per server (the protocol is one request, one answer).
* The child ends with its parent: when this process exits, or is killed, the child reads the end
  of its input and stops. A forked process (the django-q2 cluster forks its workers) never uses
  the parent's server; it starts its own.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings.base import EmbeddingUnavailable

_SERVER = Path(__file__).with_name("model_server.py")
_LENGTH = struct.Struct(">I")
START_TIMEOUT_SECONDS = 300.0  # loading from disk takes ~5 s; a cold, busy machine much longer


class ModelProcess:
    """A running ``model_server.py`` and the pipes to it."""

    def __init__(self, *, path: str, threads: int, batch_size: int) -> None:
        self.path, self.threads, self.batch_size = path, threads, batch_size
        self.dimensions = 0
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        with self._lock:
            self._start(error=ImproperlyConfigured)

    def __repr__(self) -> str:
        pid = self._child.pid if self._child is not None else None
        return f"<ModelProcess {self.path} pid={pid}>"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def encode(self, texts: Sequence[str], *, timeout_seconds: float) -> np.ndarray:
        """The vectors of ``texts`` as a (len(texts), dimensions) float32 array."""
        body = json.dumps(list(texts)).encode()
        request = _LENGTH.pack(len(body)) + body
        with self._lock:
            # A child that died since the last call may only show it when asked (a process with
            # threads is reaped when its last thread ends): it is replaced, once, in this call.
            for attempt in (1, 2):
                if self._child is not None and self._child.poll() is not None:
                    self._stop()
                if self._child is None:
                    self._start(error=EmbeddingUnavailable)
                try:
                    answer = self._ask(request, deadline=time.monotonic() + timeout_seconds)
                    break
                except (OSError, EOFError) as exc:
                    self._stop()
                    if attempt == 2:
                        raise EmbeddingUnavailable(f"the model process for {self.path} ended: {exc}") from exc
                except _Timeout as exc:
                    self._stop()
                    raise EmbeddingUnavailable(f"the model process for {self.path} gave no answer in time") from exc
        if answer[:1] == b"E":
            raise EmbeddingUnavailable(f"the model process could not encode {len(texts)} texts: {answer[1:].decode()}")
        vectors = np.frombuffer(answer, dtype="<f4", offset=1)
        if vectors.size != len(texts) * self.dimensions:
            raise EmbeddingUnavailable(f"the model process answered {vectors.size} values for {len(texts)} texts")
        return vectors.reshape(len(texts), self.dimensions)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _ask(self, request: bytes, *, deadline: float) -> bytes:
        child = self._child
        assert child is not None
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(request)
        child.stdin.flush()
        return _frame_read(child.stdout.fileno(), deadline=deadline)

    def _start(self, *, error: type[Exception]) -> None:
        child = subprocess.Popen(  # noqa: S603  (our own script, arguments from settings, no shell)
            # -P: the script's folder holds http.py, which must not shadow the standard library
            [sys.executable, "-P", str(_SERVER), self.path, str(self.threads), str(self.batch_size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        try:
            hello = json.loads(_frame_read(child.stdout.fileno(), deadline=time.monotonic() + START_TIMEOUT_SECONDS))
        except (OSError, EOFError, ValueError, _Timeout) as exc:
            _kill(child)
            raise error(f"the model process for {self.path} did not start: {exc}") from exc
        if "error" in hello:
            _kill(child)
            raise error(f"cannot load the local embedding model {self.path!r} offline: {hello['error']}")
        self.dimensions = int(hello["dimensions"])
        self._child = child

    def _stop(self) -> None:
        if self._child is not None:
            _kill(self._child)
            self._child = None


class _Timeout(Exception):
    pass


def _frame_read(fd: int, *, deadline: float) -> bytes:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))
    return _read_exactly(fd, length, deadline)


def _read_exactly(fd: int, count: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise _Timeout("no answer in time")
            chunk = os.read(fd, min(count, 1 << 20))
            if not chunk:
                raise EOFError("the model process ended")
            chunks.append(chunk)
            count -= len(chunk)
    return b"".join(chunks)


def _kill(child: subprocess.Popen[bytes]) -> None:
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()
    child.kill()
    child.wait()


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
    with _servers_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


def _forget_inherited() -> None:
    """In a forked child: the servers belong to the parent. Close this copy of their pipes (so
    they still see their end when the parent goes) and start afresh when needed."""
    global _servers_lock
    _servers_lock = threading.Lock()
    for server in _servers.values():
        if server._child is not None:
            for stream in (server._child.stdin, server._child.stdout):
                if stream is not None:
                    stream.close()
    _servers.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_inherited)
