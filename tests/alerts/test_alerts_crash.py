"""Issue 17, item 8 (alert delivery): two delivery worker processes (`meterkit webhooks work`),
one stopped mid-batch with POSTs in flight until its leases expire and the other has taken the
deliveries over and recorded them, then resumed; another SIGKILLed mid-batch. Nothing is
half-applied (every delivery's attempts equal its attempt rows, exactly one success each), no
outcome is recorded twice, and nothing is sent again after its success was recorded. A local
receiver counts webhook-ids with the wall time each one arrived."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.alerts.emit import emit
from app.core import public_ids
from app.core.clock import as_utc
from app.core.db import connection_of_work
from app.settings import Settings
from tests.conftest import Api, Database
from tests.paths import ROOT

LEASE, DEADLINE, HOLD = 3, 2, 0.4  # seconds: the receiver answers after HOLD, within the deadline


@pytest.fixture
def settings() -> Settings:
    return Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, webhook_allow_private=True)


def _open_files(pid: int) -> set[str]:
    """What a process's descriptors point at ("socket:[inode]" for a socket); a descriptor closed
    while read is skipped, a process gone gives nothing."""
    out: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                out.add(os.readlink(fd))
    return out


def _sender_pid(client_port: int, candidates: list[int]) -> int | None:
    """Which of the worker processes owns the client end of a loopback connection (Linux /proc):
    the socket whose local port is the client's, then the candidate holding that socket."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == client_port:
            inodes.add(f"socket:[{fields[9]}]")
    return next((pid for pid in candidates if inodes & _open_files(pid)), None)


class Counting:
    """Answers 200 to every POST after HOLD seconds; remembers each webhook-id's arrival times,
    which worker process sent it (of those in `workers`), and which ids are in flight (received,
    not yet answered)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []
        self.senders: list[int | None] = []  # per arrival, the sending worker's pid
        self.workers: list[int] = []
        self.in_flight: set[str] = set()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers["content-length"]))
                wid = self.headers["webhook-id"]
                at = time.time()
                sender = _sender_pid(self.client_address[1], list(owner.workers))
                with owner._lock:
                    owner.arrivals.append((wid, at))
                    owner.senders.append(sender)
                    owner.in_flight.add(wid)
                time.sleep(HOLD)
                with owner._lock:
                    owner.in_flight.discard(wid)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def flying(self) -> set[str]:
        with self._lock:
            return set(self.in_flight)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(w for w, _ in self.arrivals)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_worker(db: Database) -> subprocess.Popen[bytes]:
    log = tempfile.NamedTemporaryFile(prefix="meterkit-worker-", suffix=".log", delete=False)  # noqa: SIM115
    env = {
        **os.environ,
        "METERKIT_DATABASE_URL": db.url,
        "METERKIT_ENV": "test",
        "METERKIT_WEBHOOK_ALLOW_PRIVATE": "true",
        "METERKIT_WEBHOOK_LEASE_SECONDS": str(LEASE),
        "METERKIT_WEBHOOK_DEADLINE_SECONDS": str(DEADLINE),
        "METERKIT_WEBHOOK_CONCURRENCY": "4",
        "METERKIT_WEBHOOK_PER_ENDPOINT": "4",
        "METERKIT_WEBHOOK_WORKER_SECONDS": "0.1",
        "METERKIT_HOLD_SWEEP_SECONDS": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "webhooks", "work"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def _emit(db: Database, n: int, tag: str) -> None:
    with connection_of_work(db.engine) as conn:
        for i in range(n):
            emit(conn, None, "quota.threshold", f"{tag}:{i}", {"n": i}, datetime.now(UTC))


def _deliveries(db: Database) -> list[tuple[int, str, int, int, int, float | None]]:
    """(id, status, attempts, attempt rows, 2xx attempt rows, delivered_at) of every delivery."""
    with db.engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT d.id, d.status, d.attempts, count(a.id), "
                "sum(CASE WHEN a.status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END), d.delivered_at "
                "FROM webhook_delivery d LEFT JOIN webhook_attempt a ON a.delivery_id = d.id "
                "GROUP BY d.id, d.status, d.attempts, d.delivered_at ORDER BY d.id"
            )
        ).all()
    return [(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4] or 0), _stamp(r[5])) for r in rows]


def _stamp(at: Any) -> float | None:
    """A raw timestamp column as epoch seconds (SQLite: naive UTC text; PostgreSQL: aware)."""
    if at is None:
        return None
    at = datetime.fromisoformat(at) if isinstance(at, str) else at
    return float(as_utc(at).timestamp())


def _event_ids(db: Database) -> dict[int, str]:
    with db.engine.connect() as c:
        rows = c.execute(text("SELECT id, event_id FROM webhook_delivery")).all()
    ids = public_ids.codec(db.engine)
    return {int(d): ids.encode(public_ids.ALERT, int(e)) for d, e in rows}


def _all_delivered(db: Database, n: int) -> bool:
    rows = _deliveries(db)
    return len(rows) == n and all(r[1] == "delivered" for r in rows)


def _wait(cond: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def _no_open_transaction(db: Database) -> bool:
    """Nobody else (the stopped worker) is inside a transaction: it holds no lock that would keep
    the other worker from the rows (PostgreSQL) or from writing at all (SQLite)."""
    if db.backend == "sqlite":
        conn = sqlite3.connect(db.engine.url.database or "", timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    with db.engine.connect() as c:
        busy = c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state IS NOT NULL AND state <> 'idle'"
            )
        ).scalar_one()
    return int(busy) == 0


def _stop_mid_post(proc: subprocess.Popen[bytes], receiver: Counting, db: Database) -> set[str]:
    """SIGSTOP the worker at a moment it has POSTs in flight and no transaction open; the ids in
    flight."""
    for _ in range(400):
        if receiver.flying():
            os.kill(proc.pid, signal.SIGSTOP)
            flying = receiver.flying()
            if flying and _no_open_transaction(db):
                return flying
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"never caught the worker mid-POST:\n{output(proc)}")


def _assert_exactly_once_recorded(
    db: Database, receiver: Counting, total: int, resumed_at: float, stopped_pid: int
) -> None:
    rows = _deliveries(db)
    assert len(rows) == total
    for did, status, attempts, attempt_rows, successes, _ in rows:
        # Nothing half-applied and nothing recorded twice: the counter and the log agree, and
        # exactly one success was recorded.
        assert (status, successes) == ("delivered", 1), (did, status, attempts, attempt_rows, successes)
        assert attempts == attempt_rows, (did, attempts, attempt_rows)
    events = _event_ids(db)
    arrivals = list(zip(receiver.arrivals, receiver.senders, strict=True))
    seen = {w for (w, _), _ in arrivals}
    assert seen == set(events.values())  # every delivery reached the receiver
    assert None not in receiver.senders  # and each arrival was told to one of the workers
    delivered_at = {events[did]: at for did, *_, at in rows}
    late = [(w, t, at, pid) for (w, t), pid in arrivals if (at := delivered_at[w]) is not None and t > at]
    # Never sent again once its success was recorded: no claim takes a delivered row, and a write
    # that starts past the lease is refused. The one exception is physical: a worker frozen in
    # the microseconds of writing its request (after the check) completes that write when it
    # resumes. So an arrival after the recorded success is allowed only from the stopped worker
    # (told by the process that owns the connection, not by the clock: a slow machine can take
    # seconds to finish that write), after its resumption and within its send deadline's reach,
    # at most its batch of 4; never from another worker.
    resumed = [x for x in late if x[3] == stopped_pid and resumed_at <= x[1] <= resumed_at + DEADLINE + 3]
    assert late == resumed and len(resumed) <= 4, (late, resumed_at, stopped_pid)


@pytest.mark.timeout(240)
def test_two_workers_a_lease_lost_mid_post_and_a_sigkill_send_nothing_twice(api: Api, db: Database) -> None:
    receiver = Counting()
    made = api(
        """mutation($u: String!) { createWebhookEndpoint(input: {url: $u, eventTypes: ["*"]}) { __typename } }""",
        {"u": receiver.url},
    )
    assert made["createWebhookEndpoint"]["__typename"] == "CreatedWebhookEndpoint"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # 1. Worker A is stopped with POSTs in flight; its leases expire; B takes them over.
        _emit(db, 24, "one")
        a = start_worker(db)
        procs.append(a)
        receiver.workers.append(a.pid)
        flying = _stop_mid_post(a, receiver, db)
        b = start_worker(db)
        procs.append(b)
        receiver.workers.append(b.pid)
        assert _wait(lambda: _all_delivered(db, 24), 90), output(b)
        counts = receiver.counts()
        assert all(counts[w] == 2 for w in flying), (flying, counts)  # A's POST, and B's after the lease
        # A wakes up, reads its answers (or hits its deadline) and tries to record: fenced out.
        resumed_at = time.time()
        os.kill(a.pid, signal.SIGCONT)
        fenced = _wait(lambda: output(a).count("lease lost while sending") >= len(flying), 10)
        time.sleep(DEADLINE + 0.5)  # whatever A was going to record, it has by now
        _assert_exactly_once_recorded(db, receiver, 24, resumed_at, a.pid)
        assert fenced, output(a)  # and A did try: its records were refused by the fence
        # The only ids sent twice are A's batch (at most its 4 slots): the at-least-once of a lost
        # lease, with the same webhook-id, and never after a recorded success (checked above).
        twice = {w for w, n in receiver.counts().items() if n == 2}
        assert flying <= twice and len(twice) <= 4 and max(receiver.counts().values()) == 2

        # 2. A stops cleanly (SIGTERM); B, alone, is SIGKILLed mid-batch; a fresh C finishes the work.
        a.terminate()
        assert a.wait(timeout=DEADLINE + 15) == 0, output(a)
        _emit(db, 16, "two")
        assert _wait(lambda: bool(receiver.flying() - set(counts)), 30), output(b)
        os.kill(b.pid, signal.SIGKILL)
        killed = receiver.flying() - set(counts)  # unanswered when B died: B recorded none of them
        b.wait(timeout=10)
        assert killed
        c = start_worker(db)
        procs.append(c)
        receiver.workers.append(c.pid)
        assert _wait(lambda: _all_delivered(db, 40), 90), output(c)
        time.sleep(1)
        _assert_exactly_once_recorded(db, receiver, 40, resumed_at, a.pid)
        counts = receiver.counts()
        assert all(counts[w] == 2 for w in killed), (killed, counts)  # B's POST, and C's after the lease
        assert all(n <= 2 for n in counts.values())
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(timeout=DEADLINE + 10)
                except subprocess.TimeoutExpired:
                    p.kill()
        receiver.close()
