"""A local HTTP server that speaks Ollama's ``/api/embed`` and OpenAI's ``/v1/embeddings`` on the
wire, error bodies included, scriptable per test and recording what it received.

Each request takes the next ``Reply`` from ``script`` (in arrival order), or ``default(body)``
when the script is empty; the default answers correctly. A ``Reply`` can change the status,
headers, delay, the error message (formatted the way the API formats errors), or rewrite the
correct answer (``edit``) to make it malformed.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Api = Literal["ollama", "openai"]
PATHS = {"ollama": "/api/embed", "openai": "/v1/embeddings"}


def vector_for(text: str, dimensions: int) -> list[float]:
    """The fake model: a deterministic unit vector per text (so tests can check order)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 + i for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


@dataclass
class Reply:
    status: int = 200
    error: str | None = None  # with a non-2xx status: the provider's error message
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line is sent
    edit: Callable[[dict[str, Any]], Any] | None = None  # rewrites the correct answer (dict or raw bytes)
    raw: bytes | None = None  # sent verbatim as the body


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class FakeProvider(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: Api, *, dimensions: int, api_key: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api: Api = api
        self.dimensions = dimensions
        self.api_key = api_key  # openai: a request without "Bearer <api_key>" gets OpenAI's 401
        self.script: deque[Reply] = deque()
        self.default: Callable[[Any], Reply] = lambda body: Reply()
        self.shuffle_data = False  # openai: answer `data` in reverse index order
        self.received: list[Received] = []
        self.answered: list[Any] = []  # request bodies, in the order their answers were sent
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout test) makes the write fail; that is expected

    def error_body(self, message: str, status: int) -> dict[str, Any]:
        if self.api == "ollama":
            return {"error": message}
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "invalid_request_error")
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        if status >= 500:
            kind, code = "server_error", None
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        vectors = [vector_for(text, self.dimensions) for text in body["input"]]
        if self.api == "ollama":
            return {"model": body["model"], "embeddings": vectors, "total_duration": 1, "prompt_eval_count": 3}
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        if self.shuffle_data:
            data.reverse()
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }


class _Handler(BaseHTTPRequestHandler):
    server: FakeProvider
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with server.lock:
            server.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = server.script.popleft() if server.script else server.default(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(reply.delay)
        finally:
            # Counted out before the answer is written: the client frees its slot only once it has
            # read the answer, so a next request can never be counted while this one still is.
            with server.lock:
                server.in_flight -= 1
        self._respond(body, reply)

    def _respond(self, body: Any, reply: Reply) -> None:
        server = self.server
        if self.path != PATHS[server.api]:
            if server.api == "ollama":  # Go's mux answers unknown paths in plain text
                return self._send(404, b"404 page not found", {"Content-Type": "text/plain"})
            return self._send_json(404, server.error_body(f"Invalid URL (POST {self.path})", 404), {})
        authorization = self.headers.get("Authorization")
        if server.api == "openai" and server.api_key is not None and authorization != f"Bearer {server.api_key}":
            return self._send_json(401, server.error_body("Incorrect API key provided: sk-...", 401), {})
        if not isinstance(body, dict) or not isinstance(body.get("input"), list) or not body.get("model"):
            return self._send_json(400, server.error_body("invalid input: 'model' and 'input' are required", 400), {})
        if reply.raw is not None:
            return self._send(reply.status, reply.raw, {"Content-Type": "application/json", **reply.headers})
        if reply.status >= 300:
            error = server.error_body(reply.error or f"error {reply.status}", reply.status)
            return self._send_json(reply.status, error, reply.headers)
        payload = server.answer(body)
        if reply.edit is not None:
            payload = reply.edit(payload)
        with server.lock:
            server.answered.append(body)
        if isinstance(payload, bytes):
            return self._send(reply.status, payload, {"Content-Type": "application/json", **reply.headers})
        return self._send_json(reply.status, payload, reply.headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        # json.dumps writes NaN as the bare literal NaN, as a buggy server would.
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
