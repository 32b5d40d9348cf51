"""Organizations' SQL."""

from __future__ import annotations

from sqlmodel import Session, col, select

from app.organizations.models import Organization


class OrganizationRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, organization_id: str) -> Organization | None:
        return self.s.get(Organization, organization_id)

    def by_external_id(self, external_id: str) -> Organization | None:
        return self.s.exec(select(Organization).where(Organization.external_id == external_id)).first()

    def page(self, first: int, after: str | None) -> list[Organization]:
        """Oldest first by id order of creation; `after` is the last id of the previous page."""
        q = select(Organization).order_by(col(Organization.created_at), col(Organization.id)).limit(first)
        if after is not None:
            q = q.where(col(Organization.id) > after)
        return list(self.s.exec(q).all())

    def count(self) -> int:
        return len(self.s.exec(select(Organization.id).limit(2)).all())

    def add(self, org: Organization) -> Organization:
        self.s.add(org)
        self.s.flush()
        return org
