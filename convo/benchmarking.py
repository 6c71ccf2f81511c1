"""Measurement helpers for ``manage.py convo_benchmark_ingest``: percentiles, a gunicorn server
that lives exactly as long as a benchmark, and keep-alive HTTP clients driven from threads.

Nothing here touches Django models, so the pieces can be reused by other benchmarks. Only the
standard library is used on the client side: a load generator must not need new dependencies,
and ``http.client`` keeps the per-request cost on the client small enough to measure the server.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class Summary:
    """Latency percentiles of one measurement, in milliseconds."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float


def summarize(seconds: Sequence[float]) -> Summary:
    """Percentiles of ``seconds`` (as measured with ``time.perf_counter``), reported in ms.

    ``statistics.quantiles(method="inclusive")`` interpolates between samples, so a p99 over fewer
    than 100 samples is an interpolation, not an observed value: report the count beside it.
    """
    if not seconds:
        raise ValueError("no samples")
    ms = [value * 1000.0 for value in seconds]
    if len(ms) == 1:
        return Summary(1, ms[0], ms[0], ms[0], ms[0], ms[0])
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return Summary(len(ms), cuts[49], cuts[94], cuts[98], statistics.fmean(ms), max(ms))


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy_since(before: tuple[int, int]) -> float | None:
    """Share of all cores that were busy since ``before`` (any process, not only the benchmark's)."""
    busy, total = cpu_times()
    if total <= before[1]:
        return None
    return (busy - before[0]) / (total - before[1])


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds (user + system) each party of an HTTP measurement spent."""

    server: float  # the gunicorn master and its workers
    database: float  # every PostgreSQL process on the machine: backends, WAL writer, checkpointer
    client: float  # this process: the load generator's threads

    def per_request_ms(self, requests: int) -> tuple[float, float, float]:
        scale = 1000.0 / requests
        return self.server * scale, self.database * scale, self.client * scale


@dataclass(frozen=True)
class _Process:
    parent: int
    name: str
    started: int  # clock ticks after boot: tells a process from a later one with the same pid
    cpu: float  # its own user + system seconds
    reaped: float  # user + system seconds of its children that ended and were waited for


def _process_table() -> dict[int, _Process]:
    """Every process of the machine, read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # from the state field on
        table[int(entry)] = _Process(
            parent=int(fields[1]),
            name=stat[stat.index("(") + 1 : stat.rindex(")")],
            started=int(fields[19]),
            cpu=(int(fields[11]) + int(fields[12])) / tick,
            reaped=(int(fields[13]) + int(fields[14])) / tick,
        )
    return table


def _cpu_spent(before: dict[int, _Process], after: dict[int, _Process], pids: set[int]) -> float:
    """CPU seconds that the processes ``pids`` (as alive at the end) spent between the two
    readings, with what their children that ended meanwhile spent (a PostgreSQL backend that
    closed, a gunicorn worker that was replaced): whole lifetimes for those, a slight overcount."""
    spent = 0.0
    for pid in pids:
        now = after[pid]
        then = before.get(pid)
        if then is None or then.started != now.started:
            spent += now.cpu + now.reaped  # started during the block
        else:
            spent += (now.cpu - then.cpu) + (now.reaped - then.reaped)
    return spent


class CpuAccount:
    """The CPU time a server process tree, PostgreSQL and this process spend while the block runs.

    On a 2-core machine the three share the cores, so the split says where a request's cost is and
    what a latency target asks of each. ``spent`` stays None where there is no /proc (not Linux).
    """

    def __init__(self, *, server_pid: int, database_process: str = "postgres") -> None:
        self._server_pid = server_pid
        self._database_process = database_process
        self._before: tuple[dict[int, _Process], float] | None = None
        self.spent: CpuSplit | None = None

    @staticmethod
    def _read() -> tuple[dict[int, _Process], float] | None:
        if not os.path.isdir("/proc/self"):
            return None
        usage = os.times()
        return _process_table(), usage.user + usage.system

    def __enter__(self) -> CpuAccount:
        self._before = self._read()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        after = self._read()
        if self._before is None or after is None:
            return
        (before_table, before_client), (after_table, after_client) = self._before, after
        server = {pid for pid, process in after_table.items() if process.parent == self._server_pid}
        if self._server_pid in after_table:
            server.add(self._server_pid)
        database = {pid for pid, process in after_table.items() if process.name == self._database_process}
        self.spent = CpuSplit(
            server=_cpu_spent(before_table, after_table, server),
            database=_cpu_spent(before_table, after_table, database),
            client=after_client - before_client,
        )


def wait_until_quiet(*, max_load: float, timeout: float, report: Callable[[str], object]) -> float:
    """Wait (up to ``timeout`` s) until the 1-minute load average falls under ``max_load``.

    The machine is shared: other engineers' test runs use the same cores and the same disk, and a
    benchmark taken during one measures them too. Returns the load average when it stopped waiting.
    """
    deadline = time.monotonic() + timeout
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        report(f"waiting for a quiet machine: load average {load:.2f} >= {max_load}")
        time.sleep(15)
        load = os.getloadavg()[0]
    return load


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel picks it; tiny race until gunicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class GunicornServer:
    """``gunicorn convo.wsgi:application`` in its own session, stopped on exit whatever happened.

    A context manager so a Ctrl-C, a failed measurement or a SIGTERM to the benchmark (which the
    command turns into ``KeyboardInterrupt``) still stops the server: SIGTERM to the master (a
    graceful stop of every worker), then SIGKILL to its process group if it does not go in time.
    Its own session keeps a terminal's Ctrl-C away from it, so the stop happens in that order.
    """

    def __init__(
        self,
        *,
        cwd: Path,
        env: Mapping[str, str],
        workers: int,
        worker_class: str = "sync",
        threads: int = 1,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads
        self._cwd = cwd
        self._env = dict(env)
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "convo.wsgi:application",
            "--bind",
            f"{self.host}:{self.port}",
            "--workers",
            str(self.workers),
            "--worker-class",
            self.worker_class,
            "--threads",
            str(self.threads),
            "--timeout",
            "60",
            "--graceful-timeout",
            "10",
            "--log-level",
            "warning",
            # The default control socket is one fixed path per user: a second gunicorn (another
            # engineer's test, `make run`) would fight over it.
            "--no-control-socket",
        ]

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def __enter__(self) -> GunicornServer:
        log = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
                self.argv, cwd=self._cwd, env=self._env, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            if self._log_path:
                log.close()  # type: ignore[union-attr]
        try:
            self._wait_ready(timeout=60.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self, *, timeout: float) -> None:
        """Poll until an HTTP request gets any answer (a 401/404 proves Django is serving)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with status {self._process.returncode} before answering")
            try:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
                connection.request("GET", "/api/v1/conversations")
                connection.getresponse().read()
                connection.close()
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gunicorn did not answer on {self.host}:{self.port} in {timeout}s") from None
                time.sleep(0.1)
            else:
                return

    def stop(self, grace: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is only gunicorn's
            process.wait(timeout=10)


class JsonClient:
    """One keep-alive HTTP/1.1 connection posting pre-encoded JSON bodies.

    ``http.client`` reopens the connection by itself when the server answered ``Connection:
    close`` (gunicorn's sync workers always do), so the same client works for every worker class.
    """

    def __init__(self, host: str, port: int, *, api_key: str, timeout: float = 120.0) -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self._headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"}

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return self.send("POST", path, body)

    def send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self._connection.request(method, path, body=body, headers=self._headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed while idle: retry once on a new one.
                self._connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._connection.close()


@dataclass(frozen=True)
class LoadResult:
    """Per-request latencies (seconds), the wall time of the whole run and every response."""

    latencies: list[float]
    wall_seconds: float
    statuses: dict[int, int]
    bodies: list[bytes]


def drive_concurrently(
    *,
    clients: int,
    bodies: Sequence[bytes | None],
    path: str,
    connect: Callable[[], JsonClient],
    keep_bodies: bool = False,
    method: str = "POST",
) -> LoadResult:
    """Send every body in ``bodies`` to ``path`` from ``clients`` threads (closed loop: each
    client sends its next request as soon as the previous one is answered); a None body sends
    none (``method="GET"``).

    Bodies are encoded beforehand so the clients spend their CPU on sending, not on building JSON
    (on a 2-core machine the load generator competes with the server for the same cores). Client
    ``i`` sends bodies ``i, i + clients, …``. A Ctrl-C stops the clients at their next request.
    """
    stop = threading.Event()
    start = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    statuses: list[dict[int, int]] = [{} for _ in range(clients)]
    answers: list[list[bytes]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            session = connect()
            try:
                start.wait()
                for body in bodies[index::clients]:
                    if stop.is_set():
                        return
                    began = time.perf_counter()
                    status, answer = session.send(method, path, body)
                    latencies[index].append(time.perf_counter() - began)
                    statuses[index][status] = statuses[index].get(status, 0) + 1
                    if keep_bodies or status >= 300:
                        answers[index].append(answer)
            finally:
                session.close()
        except BaseException as exc:  # reported by the caller; the other clients are told to stop
            errors.append(exc)
            stop.set()
            start.abort()

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    try:
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # short joins keep the main thread responsive to Ctrl-C
        wall = time.perf_counter() - began
    except threading.BrokenBarrierError:
        wall = 0.0
    finally:
        stop.set()
    if errors:
        raise RuntimeError(f"a benchmark client failed: {errors[0]!r}") from errors[0]
    merged: dict[int, int] = {}
    for counts in statuses:
        for status, count in counts.items():
            merged[status] = merged.get(status, 0) + count
    return LoadResult(
        latencies=[value for values in latencies for value in values],
        wall_seconds=wall,
        statuses=merged,
        bodies=[body for values in answers for body in values],
    )


def render_lines(lines: Sequence[Sequence[str]], *, numeric: frozenset[int] | set[int] = frozenset()) -> str:
    """A plain-text table: the first line is the header; ``numeric`` columns are right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for number, line in enumerate(lines):
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(line)]
        out.append(" | ".join(cells).rstrip())
        if number == 0:
            out.append("-+-".join("-" * width for width in widths))
    return "\n" + "\n".join(out) + "\n"
