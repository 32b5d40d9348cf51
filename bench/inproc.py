"""Requests through the ASGI app in-process, for instruction counts (callgrind) and profiles.

No sockets, no HTTP parser, no client library: a hand-made ASGI scope per request, the body
in one receive message, the response collected from send. What is left is meterkit's own
path (middleware, auth, the GraphQL view, resolvers, SQL), so a change shows up in the
instruction count of a run, and the count of a run is stable on a busy machine where
requests/s are not.

    # per-request instructions = (Ir at N) - (Ir at 0), divided by N
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python -m bench.inproc floor 2000
    .venv/bin/python -m bench.inproc charge 2000 --time   # wall clock, for a rough figure

Scenarios: floor (`{ __typename }` with auth), charge (GraphQL charge), charge-persisted (the same
charge sent by its SHA-256, registered once in the warmup: app/graphql/persisted.py), check
(GraphQL check), plain (REST `POST /v1/charge`, the same key and primitive as charge), batch
(chargeBatch of 50: divide its per-request count by 50 for a batch item), all on a SQLite file
seeded like `make bench` (bench/run.py seed()).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CHARGE_QUERY, PRIMITIVE, seed

CHECK_QUERY = (
    '{ check(primitive: "email.send") { __typename ... on CheckResult { allowed remaining availableCredits } } }'
)


BATCH_QUERY = (
    "mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename ... on Charged { eventId } } }"
)


CHARGE_HASH = hashlib.sha256(CHARGE_QUERY.encode()).hexdigest()


def body_for(scenario: str, i: int) -> bytes:
    if scenario == "floor":
        return b'{"query":"{ __typename }"}'
    if scenario == "check":
        return json.dumps({"query": CHECK_QUERY}).encode()
    if scenario == "charge":
        variables = {"i": {"primitive": PRIMITIVE, "idempotencyKey": f"inproc-{os.getpid()}-{i}"}}
        return json.dumps({"query": CHARGE_QUERY, "variables": variables}).encode()
    if scenario == "plain":
        return json.dumps({"primitive": PRIMITIVE, "idempotency_key": f"plain-{os.getpid()}-{i}"}).encode()
    if scenario in ("charge-persisted", "charge-register"):  # the hash alone; the text too to register it
        variables = {"i": {"primitive": PRIMITIVE, "idempotencyKey": f"inproc-{os.getpid()}-{i}"}}
        data: dict[str, Any] = {"variables": variables}
        data["extensions"] = {"persistedQuery": {"version": 1, "sha256Hash": CHARGE_HASH}}
        if scenario == "charge-register":
            data["query"] = CHARGE_QUERY
        return json.dumps(data).encode()
    if scenario == "batch":  # chargeBatch of 50, as bench/wrk.lua's batch mode
        items = [{"item": {"primitive": PRIMITIVE, "idempotencyKey": f"b{i}-{j}"}} for j in range(50)]
        return json.dumps({"query": BATCH_QUERY, "variables": {"items": items}}).encode()
    raise SystemExit(f"unknown scenario {scenario}")


def expect(scenario: str, status: int, body: bytes) -> None:
    ok = status == 200 and b'"errors"' not in body
    if scenario == "floor":
        ok = ok and b'"__typename":"Query"' in body.replace(b" ", b"")
    elif scenario == "check":
        ok = ok and b'"allowed":true' in body.replace(b" ", b"")
    elif scenario == "batch":
        if status != 200 or body.count(b'"Charged"') != 50:
            raise SystemExit(f"batch: unexpected answer {status}: {body[:400]!r}")
    elif scenario in ("charge", "charge-persisted", "charge-register"):
        ok = ok and b'"__typename":"Charged"' in body.replace(b" ", b"")
    elif scenario == "plain":
        ok = ok and b'"replayed":false' in body
    if not ok:
        raise SystemExit(f"{scenario}: unexpected answer {status}: {body[:400]!r}")


async def request(app: Any, key: str, body: bytes, path: str = "/graphql") -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a disconnect never comes while the app answers
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def drive(app: Any, key: str, scenario: str, n: int, start: int) -> None:
    path = "/v1/charge" if scenario == "plain" else "/graphql"
    for i in range(start, start + n):
        status, body = await request(app, key, body_for(scenario, i), path)
        expect(scenario, status, body)


def garbage(n: int) -> None:
    """Objects only the cyclic collector can free (reference cycles), per request, by type: the
    work of every full collection, and so of the longest pauses under load."""
    from collections import Counter

    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    print(f"cyclic garbage: {found} objects, {found / max(n, 1):.1f} per request", file=sys.stderr)
    for name, count in kinds.most_common(25):
        print(f"  {count / max(n, 1):8.1f}  {name}", file=sys.stderr)
    gc.set_debug(0)
    gc.garbage.clear()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc")
    ap.add_argument("scenario", choices=["floor", "charge", "charge-persisted", "check", "batch", "plain"])
    ap.add_argument("n", type=int, help="measured requests (after the warmup)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--time", action="store_true", help="print wall-clock requests/s of the measured part")
    ap.add_argument(
        "--seeded",
        type=Path,
        help="a directory with a seeded bench.db and ids.json, copied before use (made on first use), so "
        "runs under callgrind skip the migrations and start from the same data",
    )
    ap.add_argument(
        "--garbage",
        action="store_true",
        help="count the cyclic garbage the measured requests leave (what the collector must find), by type",
    )
    args = ap.parse_args(argv)

    os.environ.setdefault("METERKIT_ENV", "production")
    os.environ["METERKIT_WEBHOOK_WORKER_SECONDS"] = "0"
    tmp = Path(tempfile.mkdtemp(prefix="meterkit-inproc-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    if args.seeded is not None:
        if not (args.seeded / "ids.json").exists():
            args.seeded.mkdir(parents=True, exist_ok=True)
            ids = seed(f"sqlite:///{args.seeded / 'bench.db'}")
            (args.seeded / "ids.json").write_text(json.dumps(ids))
        shutil.copy(args.seeded / "bench.db", tmp / "bench.db")
        ids = json.loads((args.seeded / "ids.json").read_text())
    else:
        ids = seed(url)
    os.environ["METERKIT_DATABASE_URL"] = url

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings())
    key = ids["load_key"]

    loop = asyncio.new_event_loop()
    # Charges in the warmup too, so a check sees a tenant with a recorded period and a counter.
    loop.run_until_complete(drive(app, key, "charge", 20, 10_000_000))
    if args.scenario == "charge-persisted":
        loop.run_until_complete(drive(app, key, "charge-register", 1, 30_000_000))
    loop.run_until_complete(drive(app, key, args.scenario, args.warmup, 20_000_000))
    gc.collect()
    gc.freeze()  # as the server does after startup (app/main.py lifespan)
    if args.garbage:
        gc.disable()
    t0, c0 = time.perf_counter(), time.process_time()
    loop.run_until_complete(drive(app, key, args.scenario, args.n, 0))
    if args.garbage:
        garbage(args.n)
    for handler in logging.getLogger().handlers:
        handler.flush()  # the log lines of these requests written (a writer thread: app/observability/logs.py)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.time and args.n:
        print(
            f"{args.scenario}: {args.n} requests in {took:.3f} s, {args.n / took:,.0f}/s; "
            f"CPU (every thread) {cpu / args.n * 1e6:,.1f} us per request",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
