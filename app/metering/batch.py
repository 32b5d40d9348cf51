"""A batch of one tenant's charges, set-based (charging.charge_batch calls it per tenant, in lock
order): the same rules as Meter.charge item by item, with one key lookup, one quota read per
primitive, one sweep, and each bucket, counter and the account written once. The organization that
pays (app/metering/payer.py) is locked after the tenant, checked item by item against its running
balance, and debited once for the batch's accepted items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.errors import DomainError
from app.core.sql import read_json, run, run_many, to_json, ts
from app.credits import ledger
from app.live import notify as live
from app.metering import payer
from app.metering.charge_repository import (
    BUMP_COUNTER,
    BUMP_RATE_BY,
    BUMP_ROLLUP,
    EVENT_CHUNK,
    STORED_MANY,
    event_params,
    insert_events,
    key_list,
)
from app.metering.errors import IdempotencyConflict
from app.metering.meter import Meter, _Running
from app.metering.types import Charged, MeterRequest, Usage


class _Pending:
    pass


@dataclass
class _Replay:
    index: int


class BatchMeter(Meter):
    def charge_many(self, reqs: list[MeterRequest]) -> list[Charged | DomainError]:
        """Charges of one tenant, set-based: the same rules as charge() item by item, with one
        key lookup, one quota read per primitive, one sweep, and each bucket, counter and the
        account written once. A refused item writes nothing of its own."""
        out: list[Any] = [None] * len(reqs)  # Charged, DomainError, or a placeholder while deciding
        self._paid_by_org: dict[str, int] = {}  # primitive -> what the organization paid (the counters)
        stored = self._stored_events([r.idempotency_key for r in reqs])
        first_in_batch: dict[str, int] = {}
        per_primitive: dict[str, _Running] = {}
        self.sweep()
        available = self.state.available
        spend = self.key_spend()
        t = self.terms
        org = self.organization_account()  # locked after this tenant's row (app/metering/payer.py)
        # The end user's cap (its rows: read before the organization's is locked), kept running.
        cap_used = self.cap_used(self.period()) if org is not None else None
        org_available = org.available() if org is not None else 0
        org_debits: list[tuple[int, str, str | None]] = []
        accepted: list[tuple[int, MeterRequest, int, _Running, int]] = []
        # (primitive, connection) pairs the kit admits whatever the quantity (no per-call limit):
        # decided once per batch, not once per item.
        entitled: set[tuple[str, str | None]] = set()
        for i, req in enumerate(reqs):
            try:
                key, fp = req.idempotency_key, req.fingerprint()
                if key in stored:
                    event_id, request_hash, result = stored[key]
                    if request_hash != fp:
                        raise IdempotencyConflict(key)
                    out[i] = Charged.from_stored(event_id, read_json(result))
                    continue
                if key in first_in_batch and isinstance(out[first_in_batch[key]], _Pending):
                    if reqs[first_in_batch[key]].fingerprint() != fp:
                        raise IdempotencyConflict(key)
                    out[i] = _Replay(first_in_batch[key])
                    continue
                run_ = per_primitive.get(req.primitive)
                if run_ is None:
                    run_ = per_primitive[req.primitive] = self._running(req.primitive)
                if (req.primitive, req.connection) not in entitled:
                    self.entitle(req)
                    if "max_quantity_per_call" not in (t.kit_limits.get(req.primitive) or {}):
                        entitled.add((req.primitive, req.connection))
                price = self._check_and_price(req, run_, count=True)
                amount = price if t.tenant_pays else 0  # what this tenant's own ledger pays
                if t.tenant_pays and available - amount < self.floor:
                    raise self.insufficient(amount, available)
                if org is not None and price:
                    if cap_used is not None and t.credit_cap is not None:
                        payer.check_cap(t.credit_cap, cap_used, price, run_.period)
                    org.check(price, org_available, precheck=False, period_start=run_.period.start)
                if spend is not None:
                    spend.check(req.primitive, req.quantity, price)
                    spend.add(req.primitive, req.quantity, price)  # written once, with the batch
                if org is not None and price:
                    org_available -= price
                    cap_used = cap_used + price if cap_used is not None else None
                    self._paid_by_org[req.primitive] = self._paid_by_org.get(req.primitive, 0) + price
                    org_debits.append((price, req.primitive, self.scope.tenant_id))
                available -= amount
                run_.used += req.quantity
                run_.calls += 1
                run_.count += 1
                run_.quantity += req.quantity
                accepted.append((i, req, amount, run_, run_.used))
                first_in_batch.setdefault(key, i)
                out[i] = _Pending()
            except DomainError as exc:
                out[i] = exc
        if accepted:
            self._record_many(accepted, out)
        if org is not None and org_debits:
            org.debit_many(org_debits)
        for i, r in enumerate(out):
            if isinstance(r, _Replay):
                first = out[r.index]
                assert isinstance(first, Charged)
                out[i] = Charged(first.event_id, first.credits_used, first.credits_remaining, first.usage, True)
        return out

    def _stored_events(self, keys: list[str]) -> dict[str, tuple[int, str, Any]]:
        rows = run(self.conn, STORED_MANY, {"tid": self.scope.tenant_id, "keys": key_list(self.conn, keys)}).all()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def _record_many(self, accepted: list[tuple[int, MeterRequest, int, _Running, int]], out: list[Any]) -> None:
        conn, tid, now = self.conn, self.scope.tenant_id, ts(self.conn, self.now)
        live.publish(conn, live.charged(tid))  # at commit, never on rollback (app/live)
        start_available = self.state.available
        balance = ledger.debit_many(
            conn,
            self.scope,
            self.now,
            self.state,
            self._live or [],
            [(amount, req.primitive, req.reference) for _, req, amount, _, _ in accepted],
        )
        self._live = None
        self.state = ledger.AccountState(balance, self.state.reserved)
        spent = 0
        rows: list[tuple[int, MeterRequest, int, _Running, Charged]] = []
        for i, req, amount, run_, used in accepted:
            spent += amount
            quota = run_.quota
            usage = Usage(req.primitive, used, quota, max(used - quota, 0) if quota is not None else 0)
            result = Charged(0, amount, start_available - spent, usage)
            rows.append((i, req, amount, run_, result))
            out[i] = result
        # All events in one multi-row INSERT per chunk. Accepted keys are unique within a batch (a
        # repeat is a replay), so ids are matched by key: RETURNING's row order is not promised.
        starts = {id(r): ts(conn, r.period.start) for r in {id(r): r for _, _, _, r, _ in rows}.values()}
        for c in range(0, len(rows), EVENT_CHUNK):
            chunk = rows[c : c + EVENT_CHUNK]
            params: dict[str, Any] = {"tid": tid, "now": now, "kind": "charge"}
            for names, (_, req, amount, run_, result) in zip(event_params(len(chunk)), chunk, strict=True):
                k, h, p, q, c_, ps, r, cn, res, ki = names
                params[k] = req.idempotency_key
                params[h] = req.fingerprint()
                params[p] = req.primitive
                params[q] = req.quantity
                params[c_] = amount
                params[ps] = starts[id(run_)]
                params[r] = req.reference
                params[cn] = req.connection
                params[res] = to_json(result.stored())
                params[ki] = req.api_key_id
            ids = dict(run(conn, insert_events(len(chunk)), params).all())
            for _, req, _, _, result in chunk:
                result.event_id = int(ids[req.idempotency_key])
        # Totals per primitive (counters) and per (primitive, key) (rollups): each row written once.
        credits_of: dict[str, int] = {}
        rollups: dict[tuple[str, str | None], list[int]] = {}
        for _, req, amount, _, _ in accepted:
            credits_of[req.primitive] = credits_of.get(req.primitive, 0) + amount
            total = rollups.setdefault((req.primitive, req.api_key_id), [0, 0, 0])
            total[0] += req.quantity
            total[1] += amount
            total[2] += 1
        for primitive, run_ in {req.primitive: r for _, req, _, r, _ in accepted}.items():
            overage = max(run_.used - run_.quota, 0) if run_.quota is not None else 0
            run(
                conn,
                BUMP_COUNTER,  # the same upsert adds a batch's total quantity
                {
                    "tid": tid,
                    "ps": ts(conn, run_.period.start),
                    "p": primitive,
                    "pe": ts(conn, run_.period.end),
                    "qty": run_.quantity,
                    "overage": overage,
                    "credits": credits_of[primitive],
                    "payer": self._paid_by_org.get(primitive, 0),
                },
            )
            if run_.window is not None:
                run(conn, BUMP_RATE_BY, {"tid": tid, "p": primitive, "win": ts(conn, run_.window), "n": run_.count})
            self._alerts(primitive, run_.quota, run_.used - run_.quantity, run_.used, run_.period, None)
        # The tenant's account lock already serializes writers of these rows; one statement, many rows.
        rollup_rows = [self._rollup_row(p, k, q, c, n) for (p, k), (q, c, n) in rollups.items()]
        run_many(conn, BUMP_ROLLUP, rollup_rows)
        if accepted:
            self._alerts(None, None, 0, 0, accepted[0][3].period, start_available)
        if self._spend is not None:
            self._spend.flush()
