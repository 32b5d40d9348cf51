"""The attacker's side of `python -m bench.attack` (issue 17): its alert endpoints that poison and
hold (attack d), and the processes that flood websockets (b) and send large documents (c), each in
a process of its own so that the attack's client work never competes with the victim's load
generator for a GIL. Those processes run `python -m bench.attackers --role ...` (attacker())."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CREATE_ENDPOINT = """mutation($i: WebhookEndpointInput!) { createWebhookEndpoint(input: $i) { __typename
  ... on CreatedWebhookEndpoint { endpoint { id } } } }"""


# ---- attack d: endpoints that poison and hold ---------------------------------------------------


def queue_events(url: str, tenant_id: str, n: int) -> None:
    """`n` alert events of the attacker's, for the worker to fan out to its endpoints."""
    from datetime import UTC, datetime

    from app.alerts.emit import QUOTA_EVENT, emit
    from app.core.db import make_engine

    engine = make_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for i in range(n):
            emit(conn, tenant_id, QUOTA_EVENT, f"attack-{uuid.uuid4().hex}-{i}", {"threshold": 50, "n": i}, now)
    engine.dispose()


def poison(url: str, endpoint_id: str) -> None:
    """A URL stored before registration checked URLs (issue 17: a newline made every round fail)."""
    from sqlalchemy import text

    from app.core.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_endpoint SET url = :u WHERE id = :e"),
            {"u": "http://127.0.0.1:18450/poison\n", "e": endpoint_id},
        )
    engine.dispose()


class Trickler:
    """Reads the request, sends a status line, then one byte of a header every 5 s."""

    def __init__(self, every: float = 5.0) -> None:
        import socket

        self.every = every
        self.stop = threading.Event()
        self.opened = 0
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.srv.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _one(self, conn: Any) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stop.is_set():
                    conn.sendall(b"x")
                    self.stop.wait(self.every)
            except OSError:
                pass

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            self.opened += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.srv.close()


def arm_endpoints(url: str, base: str, attacker_tenant: dict[str, str], trickler: Trickler) -> dict[str, Any]:
    """The attacker's endpoints: one poisoned, 4 trickling; 60 events queued to every one."""
    made = []
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {attacker_tenant['key']}"}) as c:
        for n in range(5):
            variables = {"i": {"url": f"{trickler.url}/t{n}", "eventTypes": ["*"]}}
            r = c.post("/graphql", json={"query": CREATE_ENDPOINT, "variables": variables}).json()
            assert r["data"]["createWebhookEndpoint"]["__typename"] == "CreatedWebhookEndpoint", r
            made.append(r["data"]["createWebhookEndpoint"]["endpoint"]["id"])
        # Registration now refuses this URL: it is stored the way an older version stored it.
        poison(url, made[0])
    queue_events(url, attacker_tenant["tenant"], 60)
    return {"poisoned": 1, "trickling": 4, "events": 60}


# ---- the attackers' processes -------------------------------------------------------------------


def _flood(base: str, key: str, seconds: float) -> None:
    """3 sockets, each sending one large subscribe message after another (300 KB, 1 MB, 15 MB):
    counts the close codes the server answered with."""
    import logging

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # a refused send is what we count

    url = base.replace("http://", "ws://", 1) + "/graphql"
    sizes = [300_000, 1_000_000, 15_000_000]
    codes: dict[str, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds
    doc = "subscription { balanceChanged { balance } }\n# "
    messages = {
        size: json.dumps({"id": "1", "type": "subscribe", "payload": {"query": doc + "x" * size}}) for size in sizes
    }

    def one(n: int) -> None:
        i = n
        while time.monotonic() < end:
            size = sizes[i % len(sizes)]
            i += 1
            message = messages[size]
            try:
                # No compression: the attacker's cheapest way to push bytes (compressing 15 MB per send
                # cost this box's shared CPU more than the server's work).
                with connect(
                    url,
                    subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                    max_size=None,
                    open_timeout=10,
                    compression=None,
                ) as ws:
                    ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
                    ws.recv(timeout=10)
                    ws.send(message)
                    ws.recv(timeout=10)
                    what = "answered"
            except ConnectionClosed as exc:
                what = str(exc.rcvd.code) if exc.rcvd else "no close frame"
            except Exception as exc:  # noqa: BLE001 (a broken pipe mid-send is the server refusing)
                what = type(exc).__name__
            with lock:
                codes[f"{size // 1000} KB: {what}"] = codes.get(f"{size // 1000} KB: {what}", 0) + 1

    threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(codes), flush=True)


def _documents(base: str, key: str, seconds: float) -> None:
    """4 clients, each posting unique 780-operation and 1,300-alias documents one after another."""
    answers: dict[str, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def one(n: int) -> None:
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
            i = 0
            while time.monotonic() < end:
                i += 1
                nonce = f"{n}x{i}x{secrets.token_hex(4)}"
                if i % 2:
                    doc = " ".join(f"query Q{nonce}n{j} {{ __typename }}" for j in range(780))
                else:
                    doc = "{ " + " ".join(f"a{j}: __typename" for j in range(1300)) + " } # " + nonce
                try:
                    r = c.post("/graphql", json={"query": doc})
                    body = r.json()
                    code = (body.get("errors") or [{}])[0].get("extensions", {}).get("code") or str(r.status_code)
                except Exception as exc:  # noqa: BLE001
                    code = type(exc).__name__
                with lock:
                    answers[code] = answers.get(code, 0) + 1

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(answers), flush=True)


def lower_priority(pid: int) -> None:
    """The attacker's own client work at the lowest priority: on this one shared box its CPU would
    otherwise be taken from the server and the victim, which an attacker elsewhere does not do.
    What the server spends on the attack still competes with the victim, as it would."""
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, 19)


@contextmanager
def attacker(role: str, base: str, key: str, seconds: float) -> Iterator[dict[str, Any]]:
    """One of the attackers above in a process of its own; what it counted, once it ends."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.attackers",
            "--role",
            role,
            "--base",
            base,
            "--key",
            key,
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    lower_priority(proc.pid)
    out: dict[str, Any] = {"pid": proc.pid}
    try:
        yield out
    finally:
        try:
            stdout, _ = proc.communicate(timeout=seconds + 60)
            out.pop("pid", None)
            out.update(json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {})
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    """One attacker role, in the process attacker() started; what it counted, as JSON on stdout."""
    ap = argparse.ArgumentParser(prog="python -m bench.attackers")
    ap.add_argument("--role", choices=["flood", "documents"], required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args(argv)
    roles: dict[str, Callable[[str, str, float], None]] = {"flood": _flood, "documents": _documents}
    roles[args.role](args.base, args.key, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
