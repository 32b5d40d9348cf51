"""Kits' SQL. A kit is named by (organization, key): every lookup takes the organization, which the
caller takes from its scope (the key's organization, or the tenant's), never from input."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from app.account_kits.models import AccountKit

OrgKey = tuple[str, str]  # (organization_id, key)


class AccountKitRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, organization_id: str, key: str) -> AccountKit | None:
        return self.s.get(AccountKit, (organization_id, key))

    def get_many(self, keys: Sequence[OrgKey]) -> dict[OrgKey, AccountKit]:
        wanted = set(keys)
        if not wanted:
            return {}
        orgs = {o for o, _ in wanted}
        rows = self.s.exec(
            select(AccountKit).where(
                col(AccountKit.organization_id).in_(orgs), col(AccountKit.key).in_({k for _, k in wanted})
            )
        ).all()
        return {(r.organization_id, r.key): r for r in rows if (r.organization_id, r.key) in wanted}

    def all(self, organization_id: str | None = None) -> list[AccountKit]:
        """Every kit (the platform's view), or one organization's."""
        q = select(AccountKit).order_by(col(AccountKit.key), col(AccountKit.organization_id))
        if organization_id is not None:
            q = q.where(AccountKit.organization_id == organization_id)
        return list(self.s.exec(q).all())

    def save(self, kit: AccountKit) -> AccountKit:
        self.s.add(kit)
        self.s.flush()
        return kit
