"""The victim's side of `python -m bench.attack` (issue 17): its charges (an open loop, through
bench/subs.py), the alert another tenant sets off and the endpoint that receives it, /healthz's
answer time, and the CPU the server, the attacker and the machine spend meanwhile."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


class Receiver:
    """The alert victims' endpoint: the time each tenant's first POST arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.arrived.setdefault(self.path.rsplit("/", 1)[-1], time.monotonic())
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- measuring ----------------------------------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine: every process, the other helpers' included."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class Healthz:
    """GET /healthz every 0.2 s; the slowest answer (or failure) while it runs."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.worst = 0.0
        self.failures = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Healthz:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.done.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            while not self.done.wait(0.2):
                started = time.monotonic()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.monotonic() - started)
                self.failures += not ok


@dataclass
class Alert:
    """One tenant's first charge; the time until its endpoint received the alert it set off."""

    base: str
    tenant: dict[str, str]
    receiver: Receiver
    after: float = 1.0
    latency: float | None = None
    charged: str = ""
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Alert:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        time.sleep(self.after)
        headers = {"Authorization": f"Bearer {self.tenant['key']}"}
        variables = {"i": {"primitive": "email.send", "idempotencyKey": f"alert-{secrets.token_hex(4)}"}}
        query = "mutation($i: MeterInput!) { charge(input: $i) { __typename } }"
        r = httpx.post(
            f"{self.base}/graphql", json={"query": query, "variables": variables}, headers=headers, timeout=30
        )
        charged_at = time.monotonic()
        self.charged = r.json()["data"]["charge"]["__typename"]
        deadline = charged_at + 90
        while time.monotonic() < deadline:
            arrived = self.receiver.arrived.get(self.tenant["tenant"])
            if arrived is not None:
                self.latency = arrived - charged_at
                return
            time.sleep(0.02)

    def wait(self) -> float | None:
        assert self._thread is not None
        self._thread.join(timeout=120)
        return self.latency


def victim(port: int, key: str, rate: float, seconds: float) -> Any:
    from bench.subs import victim as charges

    return charges(port, key, rate, seconds, grace=30)


def summary(runs: list[Any]) -> dict[str, Any]:
    from bench.openloop import percentile

    latencies = [x for r in runs for x in r.latencies]
    return {
        "completed": sum(r.completed for r in runs),
        "errors": sum(r.errors + r.unfinished for r in runs),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
    }
