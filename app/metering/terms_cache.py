"""A process's copy of each tenant's terms (issue 24): the charge's first statement reads the
tenant's and its organization's terms versions (migration 0025's triggers change them with every
term), and while both are the versions a copy was read under, the charge skips the terms' nine
joins. Nothing stale can be applied, whichever process changed a term: the versions are read in
the statement that locks the account, so a change committed before the lock is seen.

A copy also holds only while the recorded billing period it carries holds (the terms' one input
that moves with time). Plain values, no SQL: app/metering/charge_repository.py reads and validates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.metering.types import TenantTerms

MAX_ENTRIES = 4096  # tenants x keys kept; past it the copy starts again (a miss costs one statement)

# (tenant id, api key id) -> (tenant version, organization version, terms)
_KNOWN: dict[tuple[str, str | None], tuple[Any, Any, TenantTerms]] = {}


def known(tenant_id: str, api_key_id: str | None, now: datetime) -> tuple[Any, Any, TenantTerms] | None:
    """The copy for this tenant and key, if its period holds at `now`; the caller checks its versions."""
    entry = _KNOWN.get((tenant_id, api_key_id))
    if entry is None:
        return None
    recorded = entry[2].recorded
    if recorded is None or not recorded.start <= now < recorded.end:
        return None
    return entry


def keep(tenant_id: str, api_key_id: str | None, versions: tuple[Any, Any], terms: TenantTerms) -> None:
    """Remember terms read under these versions. Only terms with a recorded period: the roll sets
    `recorded` on the object (Meter.period), and nothing changes a kept one."""
    if terms.recorded is None:
        return
    if len(_KNOWN) >= MAX_ENTRIES:
        _KNOWN.clear()
    _KNOWN[(tenant_id, api_key_id)] = (versions[0], versions[1], terms)


def forget() -> None:
    """Every copy dropped (tests that measure the miss)."""
    _KNOWN.clear()
