"""`make run` end to end: the launcher starts the embedded database, web server and worker, a
client can ingest with the printed key, Ctrl-C stops everything, and a second run reuses the data."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from convo.env import BASE_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    # The demo inbox (600 questions through the real model) is tested on its own (tests/clustering/test_demo.py).
    env.update(
        CONVO_DATA_DIR=str(data_dir), CONVO_PORT=str(port), CONVO_WEB_WORKERS="1", Q_WORKERS="1", CONVO_DEMO="false"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "convo.launcher"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ""
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    while "Press Ctrl-C to stop." not in output:
        line = process.stdout.readline()
        assert line or process.poll() is None, output
        output += line
        assert time.monotonic() < deadline, output
    return process, output


def request(port: int, method: str, path: str, key: str, body: object | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
    )
    for _ in range(100):  # gunicorn may still be binding
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status, json.loads(response.read() or b"null")
        except ConnectionRefusedError:
            time.sleep(0.1)
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
            time.sleep(0.1)
    raise AssertionError("the web server never answered")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    return output


@pytest.mark.slow
def test_run_ingest_stop_and_run_again(tmp_path):
    port = free_port()
    process, output = start(tmp_path, port)
    try:
        key = re.search(r"API key:\s+(\S+)", output).group(1)
        assert re.search(r"staff user:\s+admin / \S+", output)
        status, body = request(port, "POST", "/api/v1/messages", key, {"user_id": "u", "session_id": "s", "text": "hi"})
        assert status == 202
        assert body["state"] == "pending"
    finally:
        tail = stop(process)
    assert "embedded PostgreSQL stopped" in tail
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()

    process, output = start(tmp_path, port)
    try:
        assert re.search(r"API key:\s+(\S+)", output).group(1) == key  # same credentials, same data
        status, body = request(port, "GET", "/api/v1/conversations", key)
        assert status == 200
        assert len(body["results"]) == 1
    finally:
        stop(process)
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()
