"""Kill -9 the django-q2 worker in the middle of 1000 pending messages, restart it, and check
that every message is embedded exactly once per model and the provider answered each distinct
text once. The provider is a local HTTP server speaking Ollama's /api/embed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection

from conversations.models import EmbeddingSpace, Message, MessageEmbedding
from conversations.services.embedding import embedding_reconcile
from convo.env import BASE_DIR
from tests.factories import ConversationFactory

DIMS = 16
MESSAGES = 1000
DISTINCT = 700


class CountingOllama(ThreadingHTTPServer):
    """Answers /api/embed like Ollama. Counts the texts of every request it answered; holds
    request number ``hold_at`` (never answering it) so the worker can be killed mid-request."""

    daemon_threads = True

    def __init__(self, hold_at: int) -> None:
        super().__init__(("127.0.0.1", 0), OllamaHandler)
        self.answered: Counter[str] = Counter()
        self.requests = 0
        self.hold_at = hold_at
        self.holding = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()


class OllamaHandler(BaseHTTPRequestHandler):
    server: CountingOllama

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
            number = self.server.requests
        if number == self.server.hold_at:
            self.server.holding.set()
            self.server.release.wait(60)
            return  # never answered: the worker that asked is dead by now
        time.sleep(0.02)  # a provider takes a moment
        vectors = [_vector(text) for text in body["input"]]
        with self.server.lock:
            self.server.answered.update(body["input"])
        payload = json.dumps({"model": body["model"], "embeddings": vectors}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    vector = [b - 127.5 for b in digest[:DIMS]]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def start_worker(env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it for its life)
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=BASE_DIR,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def enqueue(env: dict[str, str], func: str) -> None:
    code = f"import django; django.setup(); from django_q.tasks import async_task; async_task({func!r})"
    subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, check=True, timeout=60)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_kill_minus_nine_mid_batch_loses_nothing_and_embeds_once(tenant, tmp_path):
    conversation = ConversationFactory(tenant=tenant)
    texts = [f"question number {i % DISTINCT}" for i in range(MESSAGES)]
    Message.objects.bulk_create([Message(tenant=tenant, conversation=conversation, text=text) for text in texts])
    server = CountingOllama(hold_at=20)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    db = connection.settings_dict
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DJANGO_SETTINGS_MODULE"}},
        "DJANGO_SETTINGS_MODULE": "convo.settings.local",
        "DATABASE_URL": f"postgres://{db['USER']}@/{db['NAME']}?host={db['HOST']}&port={db['PORT']}",
        "Q_BROKER": "orm",
        "Q_WORKERS": "1",  # one drain at a time: when it is held, nothing else is mid-request
        "EMBEDDINGS_BACKEND": "ollama",
        "EMBEDDINGS_MODEL": "counting-test",
        "EMBEDDINGS_DIMENSIONS": str(DIMS),
        "EMBEDDINGS_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "EMBEDDING_BATCH_SIZE": "25",
        "EMBEDDING_CONCURRENT_BATCHES": "1",
        "EMBEDDING_LEASE_SECONDS": "1",
    }
    worker = start_worker(env, str(tmp_path / "worker.log"))
    try:
        enqueue(env, "conversations.tasks.embed_pending")
        if not server.holding.wait(120):
            print((tmp_path / "worker.log").read_text()[-5000:], server.requests)
            raise AssertionError("the worker never reached the held request")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        server.release.set()

    in_flight = Message.objects.filter(embedding_state="processing").count()
    done_before = Message.objects.filter(embedding_state="done").count()
    # The held batch is left claimed, and so is the next one when the drain had already claimed
    # it (embedding_drain claims a batch ahead, while the model thread embeds the previous one).
    assert in_flight in {25, 50}, "the killed worker's claims are left as they were"
    assert 0 < done_before < MESSAGES

    time.sleep(1.1)  # past the lease
    worker = start_worker(env, str(tmp_path / "worker.log"))
    try:
        enqueue(env, "conversations.tasks.reconcile_embeddings")  # what the minute schedule runs
        try:
            wait_for(lambda: Message.objects.filter(embedding_state="done").count() == MESSAGES, 120, "all embedded")
        except AssertionError:
            print((tmp_path / "worker.log").read_text()[-5000:])
            print(dict(Counter(Message.objects.values_list("embedding_state", flat=True))))
            raise
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
        server.shutdown()

    space = EmbeddingSpace.objects.get(model_id="ollama:counting-test")
    assert MessageEmbedding.objects.filter(space=space).count() == MESSAGES
    assert set(server.answered) == set(texts)
    assert max(server.answered.values()) == 1, "a text was sent to the provider twice"
    assert embedding_reconcile() == 0
