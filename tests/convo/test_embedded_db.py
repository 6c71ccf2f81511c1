"""The embedded PostgreSQL 16 + pgvector: starts in a fresh folder, is found when running, stops."""

from __future__ import annotations

import psycopg
import pytest

from convo.embedded_db import embedded_server_start, embedded_server_stop


@pytest.mark.slow
def test_start_reuse_and_stop(tmp_path):
    server = embedded_server_start(data_dir=tmp_path, database="probe")
    try:
        assert server.started_here
        with psycopg.connect(server.url("probe")) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("16")
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            assert conn.execute("SELECT '[1,2]'::vector <=> '[2,4]'::vector").fetchone()[0] == pytest.approx(0)
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            conn.commit()
        again = embedded_server_start(data_dir=tmp_path, database="probe")
        assert not again.started_here
        assert again.socket_dir == server.socket_dir
    finally:
        assert embedded_server_stop(data_dir=tmp_path)
    assert not embedded_server_stop(data_dir=tmp_path)

    restarted = embedded_server_start(data_dir=tmp_path, database="probe")
    try:
        with psycopg.connect(restarted.url("probe")) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone()[0] == 42
    finally:
        embedded_server_stop(data_dir=tmp_path)
