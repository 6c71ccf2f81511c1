"""The local model in a child process (the default, EMBEDDINGS_PROCESS): the same vectors as in
this process, and a child that dies, hangs, is orphaned or forked away is dealt with."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from conversations.embeddings import EmbeddingUnavailable
from conversations.embeddings.local import SentenceTransformerEmbedder, model_path
from conversations.embeddings.model_process import model_process_for
from tests.embeddings.test_local import embedder as in_process  # noqa: F401  (the fixture)

TEXTS = ["How do I top up my card?", "hello", "My card was stolen, what now?"]


@pytest.fixture(scope="module")
def separate() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(model="all-MiniLM-L6-v2", dimensions=384, process=True)


def alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_the_same_vectors_as_the_model_in_this_process(separate, in_process):  # noqa: F811
    assert separate.model_process is not None and in_process.model_process is None
    assert separate.model_process.pid != os.getpid()
    for got, want in zip(separate.embed(TEXTS), in_process.embed(TEXTS), strict=True):
        assert len(got) == 384
        assert got == pytest.approx(want, abs=1e-6)
    assert separate.embed([]) == []


def test_one_child_per_model_and_process(separate):
    again = SentenceTransformerEmbedder(model="all-MiniLM-L6-v2", dimensions=384, process=True)
    assert again.model_process is separate.model_process


def test_a_child_that_died_is_replaced(separate):
    server = separate.model_process
    first = server.pid
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: not alive(first))
    # Found dead before the call: a new child answers this very call.
    assert len(separate.embed(TEXTS[:1])) == 1
    assert server.pid not in (None, first)


def test_a_hung_child_is_unavailable_then_replaced(separate):
    server = separate.model_process
    hung = server.pid
    os.kill(hung, signal.SIGSTOP)
    try:
        with pytest.raises(EmbeddingUnavailable, match="no answer in time"):
            server.encode(TEXTS, timeout_seconds=0.5)
        assert wait_until(lambda: not alive(hung))  # killed, not left behind
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGKILL)
    assert len(separate.embed(TEXTS)) == 3
    assert server.pid not in (None, hung)


def test_a_model_that_is_not_on_disk_fails_at_build_time():
    with pytest.raises(ImproperlyConfigured, match=r"cannot load the local embedding model .* offline"):
        SentenceTransformerEmbedder(model="convo-tests/no-such-model", dimensions=384, process=True)


def test_a_wrong_dimensions_setting_fails_at_build_time(separate):
    with pytest.raises(ImproperlyConfigured, match="384"):
        SentenceTransformerEmbedder(model="all-MiniLM-L6-v2", dimensions=768, process=True)


def test_a_forked_process_starts_its_own_child(separate):
    server = separate.model_process
    parent_child = server.pid
    inherited = (server._child.stdin.fileno(), server._child.stdout.fileno())
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked process: no pytest, no assertions, only an answer through the pipe
        try:
            closed = []
            for fd in inherited:  # checked before anything else opens a file
                try:
                    os.fstat(fd)
                except OSError:
                    closed.append(fd)
            vectors = separate.embed(TEXTS[:1])
            again = model_process_for(path=server.path, threads=server.threads, batch_size=server.batch_size)
            answer = f"{len(closed)} {server.pid} {len(vectors[0])} {again is server}"
        except BaseException as exc:
            answer = f"error {exc!r}"
        finally:
            os.write(writer, answer.encode())
            os._exit(0)
    os.close(writer)
    answer = b""
    while select.select([reader], [], [], 120)[0] and (chunk := os.read(reader, 1000)):
        answer += chunk
    os.close(reader)
    os.waitpid(pid, 0)
    closed, forked_child, dimensions, same_server = answer.decode().split()
    assert closed == "2", "the parent's pipes stayed open in the forked process"
    assert (dimensions, same_server) == ("384", "True")
    assert int(forked_child) != parent_child
    assert wait_until(lambda: not alive(int(forked_child)))  # it ended with the forked process
    assert server.pid == parent_child and alive(parent_child)  # the parent's is untouched
    assert len(separate.embed(TEXTS[:1])) == 1


def test_the_child_ends_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(settings.BASE_DIR)!r})
        from conversations.embeddings.model_process import ModelProcess
        server = ModelProcess(path=sys.argv[1], threads=1, batch_size=8)
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, model_path("all-MiniLM-L6-v2")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 120)
        assert ready, "the parent never started its model process"
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not alive(child)), "the model process outlived its parent"
    finally:
        parent.kill()


def test_a_child_that_answers_out_of_step_is_replaced(separate):
    server = separate.model_process
    first = server.pid
    # An answer nobody asked for, as an interrupted call would leave it: the next call must not
    # take it for its own (here it cannot even be vectors of the right size).
    assert server._child is not None
    os.write(server._child.stdin.fileno(), b"\x00\x00\x00\x02[]")
    with pytest.raises(EmbeddingUnavailable, match="answered"):
        server.encode(TEXTS, timeout_seconds=60)
    assert wait_until(lambda: not alive(first))
    assert len(separate.embed(TEXTS)) == 3
    assert server.pid not in (None, first)
