"""`make run`: the whole of convo on one machine, in the foreground.

Starts the embedded PostgreSQL when DATABASE_URL is unset, migrates, creates the demo tenant and
staff user, loads the demo inbox (unless CONVO_DEMO=false), then runs gunicorn (the API and the
admin) and the django-q2 worker side by side.
Ctrl-C (or SIGTERM) stops the web server and the worker gracefully, then the embedded database.
A second run reuses the data folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from convo.env import BASE_DIR, env

GRACE_SECONDS = 20


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "convo.settings.local")
    data_dir = Path(env.str("CONVO_DATA_DIR", default=str(BASE_DIR / ".data")))
    host = env.str("CONVO_HOST", default="127.0.0.1")
    port = env.int("CONVO_PORT", default=8000)
    embedded = not env.str("DATABASE_URL", default="")

    if embedded:
        from convo.embedded_db import embedded_server_start

        server = embedded_server_start(data_dir=data_dir, database=env.str("CONVO_DB_NAME", default="convo"))
        # Children connect to the running server instead of each starting it.
        os.environ["DATABASE_URL"] = server.url(env.str("CONVO_DB_NAME", default="convo"))
        print(f"embedded PostgreSQL 16 + pgvector: {server.pgdata}", flush=True)

    metrics_dir_prepare(data_dir=data_dir)
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        manage = [sys.executable, str(BASE_DIR / "manage.py")]
        for step in startup_steps():
            done = subprocess.run([*manage, *step.args], check=step.required, cwd=BASE_DIR)
            if done.returncode:
                print(f"{' '.join(step.args)} failed (exit {done.returncode}); starting without it", flush=True)
        # Each child gets its own session: Ctrl-C reaches only this process, which then stops the
        # children in order (web first, so nothing new is acknowledged; then the worker).
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "convo.wsgi:application",
                "--bind",
                f"{host}:{port}",
                "--workers",
                str(env.int("CONVO_WEB_WORKERS", default=3)),
                "--timeout",
                "30",
                "--graceful-timeout",
                "10",
                # child_exit tells prometheus_client a worker is gone (docs/operations.md).
                "--config",
                "python:convo.gunicorn_hooks",
            ],
            cwd=BASE_DIR,
            start_new_session=True,
        )
        children.append(web)
        names = {web.pid: "gunicorn"}
        worker = subprocess.Popen([*manage, "qcluster"], cwd=BASE_DIR, start_new_session=True)
        children.append(worker)
        names[worker.pid] = "qcluster"
        print(
            f"\nconvo is running:\n  API       http://{host}:{port}/api/v1/\n"
            f"  API docs  http://{host}:{port}/api/docs/\n  admin     http://{host}:{port}/admin/\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"{names[child.pid]} exited with {child.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.2)
    except subprocess.CalledProcessError as exc:
        print(f"start-up step failed: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return 1
    finally:
        _stop_children(children)
        if embedded:
            from convo.embedded_db import embedded_server_stop

            if embedded_server_stop(data_dir=data_dir):
                print("embedded PostgreSQL stopped", flush=True)
    return 0


@dataclass(frozen=True)
class Step:
    """A ``manage.py`` command run before the servers start; a failed optional one is reported
    and skipped (a demo must never keep convo from starting)."""

    args: tuple[str, ...]
    required: bool = True


def startup_steps() -> list[Step]:
    """The start-up commands, in order. ``CONVO_DEMO=false`` leaves out the demo inbox
    (Banking77 questions from many users, clustered by the worker a minute after start)."""
    steps = [
        Step(("migrate", "--noinput")),
        Step(("collectstatic", "--noinput", "-v0")),
        Step(("convo_schedules",)),
        Step(("convo_bootstrap_demo",)),
    ]
    if env.bool("CONVO_DEMO", default=True):
        steps.append(Step(("convo_demo_load",), required=False))
    return steps


def metrics_dir_prepare(*, data_dir: Path) -> Path:
    """Prometheus multi-process mode for every child: each process writes its metrics to files in
    ``PROMETHEUS_MULTIPROC_DIR`` (default ``<data dir>/prometheus``), and ``/metrics`` sums them.
    The folder must be emptied before the processes start, or a run adds the last run's counts."""
    directory = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "prometheus")))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    sys.exit(main())
