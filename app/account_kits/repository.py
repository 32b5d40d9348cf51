from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from app.account_kits.models import AccountKit


class AccountKitRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, key: str) -> AccountKit | None:
        return self.s.get(AccountKit, key)

    def get_many(self, keys: Sequence[str]) -> dict[str, AccountKit]:
        rows = self.s.exec(select(AccountKit).where(col(AccountKit.key).in_(list(keys)))).all()
        return {r.key: r for r in rows}

    def all(self, organization_id: str | None = None) -> list[AccountKit]:
        """Every kit, or one organization's."""
        q = select(AccountKit).order_by(col(AccountKit.key))
        if organization_id is not None:
            q = q.where(AccountKit.organization_id == organization_id)
        return list(self.s.exec(q).all())

    def save(self, kit: AccountKit) -> AccountKit:
        self.s.add(kit)
        self.s.flush()
        return kit
