"""Plan-months: the one calendar that allotments, upgrade proration and the daily job share.

A subscription period is cut into plan-months anchored on the period start: month ``k`` starts at
``add_months(start, k)`` — the same day of the month ``k`` months later, clamped to the last day of a
shorter month — and ends where month ``k + 1`` starts (or at the period end, if that comes first).
Every month is computed from the anchor, never from the month before it, so a period starting on
Jan 31 has months starting Feb 28 (29 in a leap year), Mar 31, Apr 30 — stepping month to month
would drift to Mar 28, Apr 28. Stripe's own billing dates follow the same rule ("a monthly
subscription with a billing cycle anchor date of January 31 bills … February 28 (or February 29 in
a leap year), then March 31, April 30", docs.stripe.com/billing/subscriptions/billing-cycle).

A monthly plan's period is one plan-month; an annual plan's period has twelve.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

MICROSECOND = timedelta(microseconds=1)


def add_months(moment: datetime, months: int) -> datetime:
    """Same day-of-month ``months`` later, clamped to the month's last day."""
    year, month = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + year, month + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    # A plain datetime, not ``moment.replace``: Firestore's DatetimeWithNanoseconds.replace returns an
    # instance without its nanoseconds that the client then cannot write.
    return datetime(year, month, day, moment.hour, moment.minute, moment.second, moment.microsecond, moment.tzinfo)


@dataclass(frozen=True)
class PlanMonth:
    """Month ``index`` of the period that starts at ``anchor``: ``[start, end)``."""

    anchor: datetime
    index: int
    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def share_after(self, moment: datetime) -> Fraction:
        """The exact part of this month that lies after ``moment`` (1 before the month, 0 after it)."""
        if moment <= self.start:
            return Fraction(1)
        if moment >= self.end:
            return Fraction(0)
        # Whole microseconds on both sides: timedelta // timedelta is an exact integer division.
        return Fraction((self.end - moment) // MICROSECOND, self.length // MICROSECOND)


def plan_month(anchor: datetime, index: int, period_end: datetime | None = None) -> PlanMonth:
    """Month ``index`` of the period starting at ``anchor`` (cut short by ``period_end``)."""
    start = add_months(anchor, index)
    end = add_months(anchor, index + 1)
    if period_end is not None and period_end < end:
        end = period_end
    return PlanMonth(anchor=anchor, index=index, start=start, end=end)


def month_at(anchor: datetime, period_end: datetime, moment: datetime) -> PlanMonth | None:
    """The plan-month of the period ``[anchor, period_end)`` that contains ``moment``; month 0 for a
    moment before the period (clock skew), ``None`` at or after its end."""
    if moment >= period_end or period_end <= anchor:
        return None
    if moment <= anchor:
        return plan_month(anchor, 0, period_end)
    # A first guess from the calendar months between them, corrected by at most one either way
    # (a clamped day can put the anchor's "same day" after ``moment``'s day).
    index = max(0, (moment.year - anchor.year) * 12 + moment.month - anchor.month)
    while index > 0 and add_months(anchor, index) > moment:
        index -= 1
    while add_months(anchor, index + 1) <= moment:
        index += 1
    return plan_month(anchor, index, period_end)


def months_started(anchor: datetime, period_end: datetime, now: datetime) -> list[PlanMonth]:
    """Every plan-month of the period ``[anchor, period_end)`` that has started by ``now``, in order."""
    if now < anchor or period_end <= anchor:
        return []
    current = month_at(anchor, period_end, now)
    last = current.index if current is not None else _last_index(anchor, period_end)
    return [plan_month(anchor, index, period_end) for index in range(last + 1)]


def _last_index(anchor: datetime, period_end: datetime) -> int:
    if period_end <= anchor:
        return -1
    found = month_at(anchor, period_end, period_end - MICROSECOND)
    return found.index if found is not None else -1


def is_whole_period(start: datetime, end: datetime, months: int) -> bool:
    """Whether ``[start, end)`` is exactly ``months`` plan-months from ``start`` (a full billing
    period, as opposed to the part of one a proration covers)."""
    return add_months(start, months) == end
