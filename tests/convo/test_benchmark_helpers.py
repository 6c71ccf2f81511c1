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


BURN_THEN_WAIT = """
import sys, time
sys.stdin.readline()
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
print("burnt", flush=True)
time.sleep(60)
"""


def test_cpu_account_gives_a_server_tree_its_own_cpu_and_the_caller_its_own() -> None:
    # A "server" whose child burns 0.3 s of CPU: the account follows the server's children.
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN_THEN_WAIT!r}, '0.3'])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        with CpuAccount(server_pid=server.pid) as account:
            server.stdin.write("go\n")
            server.stdin.flush()
            assert server.stdout.readline().strip() == "burnt"
            end = time.process_time() + 0.1
            while time.process_time() < end:  # the caller's own CPU
                pass
    finally:
        server.kill()
        subprocess.run(["pkill", "-KILL", "-P", str(server.pid)], check=False)
        server.wait()

    assert account.spent is not None
    assert account.spent.server >= 0.25
    assert 0.08 <= account.spent.client < account.spent.server
    assert account.spent.per_request_ms(10) == pytest.approx(
        (account.spent.server * 100, account.spent.database * 100, account.spent.client * 100)
    )
