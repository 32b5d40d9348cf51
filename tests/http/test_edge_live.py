"""Issue 12, point 3, on a real `meterkit serve` (uvicorn) subprocess: hostile documents sent
with and without a key never stall the process (/healthz answers meanwhile), and SIGTERM
finishes in-flight work and exits within the configured grace even when a client stalls."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.live import free_port, wait_healthy
from tests.paths import ROOT

METERKIT = str(Path(sys.executable).with_name("meterkit"))


def fan_out_chain(levels: int) -> str:
    frags = [f"fragment F{i} on Query{{...F{i + 1} ...F{i + 1}}}" for i in range(levels)]
    return " ".join(["query{...F0}", *frags, f"fragment F{levels} on Query{{__typename}}"])


@contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    key = "mk_op_" + secrets.token_urlsafe(32)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    full_env.update(
        {
            "METERKIT_DATABASE_URL": f"sqlite:///{tmp_path / 'live.db'}",
            "METERKIT_ENV": "production",
            "METERKIT_OPERATOR_KEY": key,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
    )
    cmd = [METERKIT, "serve", "--no-demo", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, base, 60, log.read_text)
        yield proc, base, key
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hostile_documents_do_not_stall_healthz(tmp_path: Path) -> None:
    with serve(tmp_path) as (_, base, key):
        probes: list[float] = []
        answers: list[tuple[str, int, float, Any]] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                while not done.is_set():
                    started = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    probes.append(time.perf_counter() - started)
                    time.sleep(0.01)

        def hostile(label: str, doc: str, headers: dict[str, str]) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                started = time.perf_counter()
                r = c.post("/graphql", json={"query": doc}, headers=headers)
                answers.append((label, r.status_code, time.perf_counter() - started, r.json()))

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.1)
        auth = {"Authorization": f"Bearer {key}"}
        attackers = [
            threading.Thread(target=hostile, args=(f"{lv} levels, {who}", fan_out_chain(lv), h))
            for lv in (21, 40)
            for who, h in (("no key", {}), ("operator key", auth))
            for _ in range(3)
        ]
        for t in attackers:
            t.start()
        for t in attackers:
            t.join(timeout=60)
        time.sleep(0.1)
        done.set()
        prober.join(timeout=30)

    assert len(answers) == 12
    for label, status, elapsed, body in answers:
        assert elapsed < 1.0, (label, elapsed)
        if "no key" in label:
            # Refused before any parsing, in the edge's JSON shape.
            assert status == 401 and body["error"]["code"] == "unauthenticated", (label, body)
        else:
            assert status == 200, (label, body)
            (err,) = body["errors"]
            assert err["extensions"]["code"] == "QUERY_TOO_COMPLEX", (label, body)
    assert len(probes) >= 5 and max(probes) < 1.0, probes


def _partial_post(base: str, key: str, body: bytes, sent: int) -> socket.socket:
    """A POST /graphql whose body is only partly sent: a request in flight for as long as we like."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:sent])
    return sock


def _read_response(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_sigterm_finishes_in_flight_work_and_exits_within_the_grace(tmp_path: Path) -> None:
    grace = 2
    with serve(tmp_path, METERKIT_SHUTDOWN_GRACE_SECONDS=str(grace)) as (proc, base, key):
        body = json.dumps({"query": "{ __typename }"}).encode()
        finishing = _partial_post(base, key, body, 5)
        stalled = _partial_post(base, key, body, 5)  # never completes: only the grace ends it
        time.sleep(0.3)  # both requests are in the app, reading their bodies
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        finishing.sendall(body[5:])
        answer = _read_response(finishing)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'{"data":{"__typename":"Query"}}' in answer
        proc.wait(timeout=grace + 10)
        elapsed = time.monotonic() - started
        stalled.close()
        finishing.close()
    # The stalled client held shutdown for the grace, and no longer.
    assert grace - 0.5 <= elapsed < grace + 5, elapsed
