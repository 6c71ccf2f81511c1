"""Measurement helpers of the benchmarks that decide what a figure means: the database's own
time for a statement, and where the CPU of an HTTP measurement went."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conversations.models import Conversation, Message, Tenant
from conversations.payloads import ConversationIn
from conversations.services.ingest import conversation_create_batch
from convo.benchmark_db import statement_server_ms
from convo.benchmarking import CpuAccount


@pytest.mark.django_db
def test_statement_server_ms_explains_the_statement_and_leaves_nothing_behind(tenant: Tenant) -> None:
    payloads = [
        ConversationIn.model_validate({"user_id": f"u{n}", "messages": [{"text": "hello"}, {"text": "again"}]})
        for n in range(5)
    ]

    took = statement_server_ms(
        call=lambda: conversation_create_batch(tenant=tenant, payloads=payloads),
        statement_prefix="WITH conversations AS",
    )

    assert 0 < took < 10_000
    assert not Conversation.objects.filter(tenant=tenant).exists()
    assert not Message.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_statement_server_ms_refuses_a_call_without_the_statement(tenant: Tenant) -> None:
    with pytest.raises(RuntimeError, match="no statement starting with"):
        statement_server_ms(call=lambda: Conversation.objects.count(), statement_prefix="WITH conversations AS")


BURN = """
import os, sys, time
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
os.write(1, b"burnt\\n")  # one write: two children share the pipe
{after}
"""
# A "server" that, once told to, starts two children that each burn 0.3 s of CPU: one stays alive,
# the other ends and is waited for during the measurement (as a replaced worker or a closed
# backend would).
SERVER = f"""
import os, subprocess, sys, time
sys.stdin.readline()
alive = subprocess.Popen([sys.executable, "-c", {BURN.format(after="time.sleep(60)")!r}, "0.3"])
subprocess.run([sys.executable, "-c", {BURN.format(after="")!r}, "0.3"])
os.write(1, b"reaped\\n")
alive.wait()
"""


def test_cpu_account_gives_a_server_tree_its_own_cpu_and_the_caller_its_own() -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        with CpuAccount(server_pid=server.pid) as account:
            server.stdin.write("go\n")
            server.stdin.flush()
            lines = {server.stdout.readline().strip() for _ in range(3)}
            end = time.process_time() + 0.1
            while time.process_time() < end:  # the caller's own CPU
                pass
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(server.pid)], check=False)
        server.kill()
        server.wait()

    assert lines == {"burnt", "reaped"}
    assert account.spent is not None
    assert 0.55 <= account.spent.server < 1.0
    assert 0.08 <= account.spent.client < 0.5
    assert account.spent.per_request_ms(10) == pytest.approx(
        (account.spent.server * 100, account.spent.database * 100, account.spent.client * 100)
    )
