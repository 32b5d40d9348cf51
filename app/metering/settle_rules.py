"""`settle` under the same rules as `charge` (issue 17, item 4): what a settle may charge.

The rule (one, for every limit): **a settle charges at most what the limits admit; the rest is cut,
named in the answer, and the hold is closed all the same.**

Why cut and close rather than refuse and keep the hold open: a settle is for work already done (the
LLM tokens are spent, the images rendered). Refusing it would not undo the work; it would only leave
the hold open until the caller settles again with a smaller actual, or releases it, or lets it
expire, and each of those charges *less* than what the limits admit (a release or an expiry charges
nothing) while the hold keeps credits and key budget back in the meantime. Capping charges exactly
what the limits admit, in the one transaction that closes the hold, so nothing leaks and a retry
with the same hold replays the same answer. It is how the balance floor already treated a settle
(capped at the buffer), now applied to every limit; and it is what peers do with work already done:
Stripe never captures more than was authorized and frees the rest, usage-based billers (OpenMeter,
Lago) record what the entitlement admits and report the excess instead of failing the event.

Each limit caps the dimension it measures, in the order charge() checks them:
- quantity limits cap the quantity counted, and the credits shrink with it by the same share:
  the kit's `maxQuantityPerCall` (on the call's units: quantity, numImages, video seconds; see
  call_units), the plan's quota when the plan refuses overage (a plan that allows overage counts it
  as overage, as charge does), and the settling key's quantity budget for the primitive;
- credit limits cap the credits: the settling key's credit budget, then the balance floor
  (available + the hold's amount down to -negative_buffer, as before) when the end user pays, then
  the organization's per-end-user credit cap and the paying organization's balance floor when the
  organization pays (app/metering/payer.py).
The admitted share s of the actual is the smallest share any quantity limit leaves; the quantity
counted is ceil(quantity x s) (never past a limit: each limit L is an integer >= quantity x s) and
the credits floor(price x s) (never more than the share), then cut to each credit limit in turn.
An answer that was cut carries a SettleCut: the code of the first limit that cut it (the code a
charge of the rest would be refused with), every limit that did, and the requested and charged
quantity and credits. Nothing is cut when the whole actual fits: then the settle is exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from app.budgets.enforce import TOTAL, KeySpend

# Limit names (as LimitExceeded.limit and the budget's fields say them) and the refusal codes a
# charge of the cut part would get.
PER_CALL = "maxQuantityPerCall"
QUOTA = "quota"
KEY_QUANTITY = "keyQuantityBudget"
KEY_CREDITS = "keyCreditBudget"
FLOOR = "balanceFloor"
CAP = "endUserCreditCap"  # the organization's cap on what one end user may cost it per period
ORG_FLOOR = "organizationBalanceFloor"  # the paying organization's balance floor
CODES = {
    PER_CALL: "LIMIT_EXCEEDED",
    QUOTA: "QUOTA_EXCEEDED",
    KEY_QUANTITY: "BUDGET_EXCEEDED",
    KEY_CREDITS: "BUDGET_EXCEEDED",
    FLOOR: "INSUFFICIENT_CREDITS",
    CAP: "END_USER_CREDIT_CAP",
    ORG_FLOOR: "ORGANIZATION_CREDITS_EXHAUSTED",
}


def call_units(quantity: int, num_images: int | None, duration_seconds: Decimal | None) -> int:
    """What `maxQuantityPerCall` bounds: the call's quantity, and its images and video seconds
    (a started second counts), whichever is largest. An image call priced by numImages (or a video by
    its duration) would otherwise pass any per-call limit with quantity 1."""
    units = quantity
    if num_images is not None:
        units = max(units, num_images)
    if duration_seconds is not None:
        units = max(units, math.ceil(duration_seconds))
    return units


@dataclass(frozen=True)
class SettleCut:
    """What a settle did not charge, and the limits that cut it."""

    code: str  # the refusal code of the first limit that cut (LIMIT_EXCEEDED, QUOTA_EXCEEDED, ...)
    limits: tuple[str, ...]  # every limit that cut, in the order they were applied
    requested_quantity: int
    charged_quantity: int
    requested_credits: int
    charged_credits: int

    @property
    def message(self) -> str:
        return f"settle cut to what the limits admit ({', '.join(self.limits)})"

    def stored(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "limits": list(self.limits),
            "requestedQuantity": self.requested_quantity,
            "chargedQuantity": self.charged_quantity,
            "requestedCredits": self.requested_credits,
            "chargedCredits": self.charged_credits,
        }

    @classmethod
    def from_stored(cls, data: dict[str, Any] | None) -> SettleCut | None:
        if not data:
            return None
        return cls(
            code=data["code"],
            limits=tuple(data["limits"]),
            requested_quantity=int(data["requestedQuantity"]),
            charged_quantity=int(data["chargedQuantity"]),
            requested_credits=int(data["requestedCredits"]),
            charged_credits=int(data["chargedCredits"]),
        )


@dataclass(frozen=True)
class Admitted:
    quantity: int
    credits: int
    cut: SettleCut | None


def admit(
    *,
    primitive: str,
    quantity: int,
    units: int,
    price: int,
    per_call: int | None,
    quota: int | None,
    used: int,
    overage: str,
    spend: KeySpend | None,
    room: int | None,
    cap_room: int | None = None,
    org_room: int | None = None,
) -> Admitted:
    """The part of a settle's actual the limits admit (see the module docstring). `used`: the
    period's count before this settle; `spend`: the settling key's spend with the settled hold
    already given back; `room`: the credits the balance floor still admits (None: the end user pays
    nothing); `cap_room`, `org_room`: what the end user's cap and the paying organization's floor
    still admit (None: no such limit). Pure arithmetic."""
    share = Fraction(1)
    limits: list[str] = []

    def cap(limit: str, admitted: Fraction) -> None:
        nonlocal share
        if admitted < share:
            share = max(admitted, Fraction(0))
            limits.append(limit)

    if per_call is not None and units > per_call:
        cap(PER_CALL, Fraction(per_call, units))
    if quota is not None and overage != "allow" and used + quantity > quota:
        cap(QUOTA, Fraction(max(quota - used, 0), quantity))
    budget = spend.terms if spend is not None else None
    if spend is not None and budget is not None:
        limit = budget.quantity_limits.get(primitive)
        if limit is not None:
            spent = spend.quantity.get(primitive, 0) + spend.held_quantity.get(primitive, 0)
            if spent + quantity > int(limit):
                cap(KEY_QUANTITY, Fraction(max(int(limit) - spent, 0), quantity))
    charged_qty = math.ceil(quantity * share)
    credits = math.floor(price * share)
    if spend is not None and budget is not None and budget.credit_limit is not None:
        left = budget.credit_limit - spend.credits.get(TOTAL, 0) - spend.held_credits.get(TOTAL, 0)
        if credits > left:
            credits = max(left, 0)
            limits.append(KEY_CREDITS)
    for limit, bound in ((FLOOR, room), (CAP, cap_room), (ORG_FLOOR, org_room)):
        if bound is not None and credits > bound:
            credits = max(bound, 0)
            limits.append(limit)
    if not limits:
        return Admitted(quantity, price, None)
    cut = SettleCut(CODES[limits[0]], tuple(limits), quantity, charged_qty, price, credits)
    return Admitted(charged_qty, credits, cut)
