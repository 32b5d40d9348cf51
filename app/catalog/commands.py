"""Upserting a primitive as a command: it opens and owns its transaction and appends its audit entry
in it. GraphQL calls it through the unit-of-work runner (app/core/uow.py); `meterkit primitive
upsert` is a GraphQL call too (app/cli_client/catalog.py), so its entry names the key that made it."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.audit.service import Target, audited
from app.catalog import service
from app.catalog.models import Primitive
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work


def upsert_primitive(engine: Engine, clock: Clock, actor: Principal | None, data: service.PrimitiveInput) -> Primitive:
    """Add or edit a primitive (idempotent by key), with its price when one is given."""
    detail = {"credits": data.credits} if data.credits is not None else None
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "upsertPrimitive",
            Target("primitive", data.key),
            lambda: service.upsert_primitive(s, clock, data),
            detail=detail,
        )
