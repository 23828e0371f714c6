"""Credits derived from money or from time: exact arithmetic, one rounding rule each.

Integers and :class:`fractions.Fraction` only — never floats (``int(100 * (435 / 1500))`` is 28, not
29). Every other place credits are computed is an integer product or sum (listed in
``docs/billing.md``, "Money arithmetic").
"""

from __future__ import annotations

import math
from datetime import datetime

from shared.billing.calendar import PlanMonth


def refund_target(credits: int, amount: int, amount_refunded: int) -> int:
    """The credits a pack of ``credits`` bought for ``amount`` (smallest currency unit) gives back once
    ``amount_refunded`` of it is refunded in total (Stripe's cumulative ``amount_refunded``).

    Rounding: down — floor(credits * amount_refunded / amount) — so a partial refund never takes a
    credit more than its share; a full refund takes the whole pack. A free pack (amount 0) refunded at
    all gives everything back.
    """
    if credits <= 0 or amount_refunded <= 0:
        return 0
    if amount <= 0 or amount_refunded >= amount:
        return credits
    return credits * amount_refunded // amount  # integer floor division: exact


def prorated_credits(difference: int, month: PlanMonth, changed_at: datetime) -> int:
    """An upgrade's extra credits for the part of ``month`` after ``changed_at``: the monthly
    ``difference`` between the plans times that share of the month.

    Rounding: down — floor(difference * (month end - changed_at) / month length), on whole
    microseconds — so the prorated credits never exceed the difference, and the grants for the parts
    of a month split at one moment add up to the difference or one credit less.
    """
    if difference <= 0:
        return 0
    return math.floor(difference * month.share_after(changed_at))
