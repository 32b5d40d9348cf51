"""All SQL of the primitive catalog."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from app.catalog.models import Primitive
from app.core.errors import ValidationFailed

PRIMITIVE: Any = Primitive.__table__  # type: ignore[attr-defined]


def known_keys(conn: Connection) -> set[str]:
    """Every key in the catalog, active or retired: what kits, quotas and prices may name."""
    return set(conn.execute(select(PRIMITIVE.c.key)).scalars())


def require_known(conn: Connection, primitive: str) -> None:
    """A history or series filter naming a primitive the catalog lacks: the lists' one
    VALIDATION_FAILED answer (field primitive), read only when a filter names one."""
    if conn.execute(select(PRIMITIVE.c.key).where(PRIMITIVE.c.key == primitive)).first() is None:
        raise ValidationFailed(f"unknown primitive {primitive!r}", field="primitive")


class PrimitiveRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, key: str) -> Primitive | None:
        return self.s.get(Primitive, key)

    def all(self, *, include_retired: bool) -> list[Primitive]:
        q = sm_select(Primitive).order_by(col(Primitive.category), col(Primitive.key))
        if not include_retired:
            q = q.where(col(Primitive.active).is_(True))
        return list(self.s.exec(q).all())

    def save(self, row: Primitive) -> Primitive:
        self.s.add(row)
        self.s.flush()
        return row
