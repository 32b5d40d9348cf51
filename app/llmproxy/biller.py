"""Finished LLM calls billed off the request's path, many in one transaction.

Billing a call is a charge and its llm_call row. Done inside the request (a Starlette background
task) it held the caller's connection until committed: a client's next call on that keep-alive
connection waited for it, and every call paid a transaction of its own. Here the edge hands the
finished call to the process's one Biller and returns: its worker takes every call waiting at that
moment and bills them together (app/llm/billing.py bill_many: the metering batch charge, the same
rules item by item), so under load a commit carries many calls and at rest a call is billed as
soon as the loop is free. A stream that must not end before its bill is committed (app/llmproxy/
relay.py) awaits its call's future.

A call is billed exactly once (the upstream generation id is the idempotency key); shutdown bills
what is waiting before the process exits (app/main.py lifespan). A process killed between an
answer and its bill loses that bill, as it did when billing ran after the answer was sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from app.core.errors import DomainError, Unavailable
from app.core.uow import Runner
from app.llm import billing
from app.llm.billing import Finished
from app.metering.types import Charged

log = logging.getLogger("meterkit.llmproxy")

# Calls billed in one transaction at most: a batch holds the tenant's row (PostgreSQL) for its
# whole length, so a larger one delays other writers of the same tenant more than it saves.
MAX_BATCH = 64


class Biller:
    def __init__(self, uow: Runner, bill_many: Callable[[list[Finished]], list[Any]]) -> None:
        self._uow, self._bill_many = uow, bill_many
        self._waiting: list[tuple[Finished, asyncio.Future[Charged | None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def submit(self, call: Finished) -> asyncio.Future[Charged | None]:
        """Queue a finished call; its future resolves once it is billed (None: not billed, logged)."""
        future: asyncio.Future[Charged | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="meterkit-llm-biller")
        return future

    async def aclose(self) -> None:
        """Bill what is waiting, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                outcomes = await self._uow.call(self._bill_many, [c for c, _ in batch], retry=True)
            except Exception as exc:  # noqa: BLE001  (the worker outlives any one batch; each call is logged)
                outcomes = [exc] * len(batch)
            for (call, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    _unbilled(call, outcome)
                    outcome = None
                if not future.done():
                    future.set_result(outcome)


def _unbilled(call: Finished, exc: Exception) -> None:
    # The work is done and was admitted by the pre-check; a concurrent call took what was left
    # (quota, key budget, rate), or the database was out of reach. Logged for the operator, with
    # what it would need to bill it by hand.
    code = exc.code if isinstance(exc, DomainError | Unavailable) else type(exc).__name__
    log.error(
        "LLM call not billed (%s): tenant %s, %s generation %s, usage %s",
        code,
        call.scope.tenant_id,
        call.facts.provider,
        call.usage.generation_id,
        call.usage,
        exc_info=None if isinstance(exc, DomainError | Unavailable) else exc,
    )


def biller_for(uow: Runner, engine: Any, clock: Any, negative_buffer: int) -> Biller:
    def bill_many(calls: list[Finished]) -> list[Any]:
        return billing.bill_many(engine, clock, calls, negative_buffer=negative_buffer)

    return Biller(uow, bill_many)
