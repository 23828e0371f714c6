"""What a video is made of and what it costs: the clips (Veo makes 4, 6 or 8 s at a time) whose lengths
add up to the length asked for, at the lowest price of the price list, and the item's price by
operation. Pure functions: the same price list gives the same plan on the API and in the quote."""

from __future__ import annotations

from functools import cache

from shared.engines.video import CLIP_SECONDS
from shared.ledger.pricing import PriceList

SLACK_SECONDS = 3  # a plan may run this much longer than asked (odd lengths, a cheaper combination): cut after


def video_operation(quality: str) -> str:
    """The price list's operation of a clip: ``video`` (the fast model) or ``video_quality``."""
    return "video_quality" if quality == "quality" else "video"


def clip_variant(resolution: str, seconds: int) -> str:
    """The price list's variant of a clip: ``720p_8s``."""
    return f"{resolution}_{seconds}s"


def clip_price(prices: PriceList, quality: str, resolution: str, seconds: int) -> int:
    return prices.price(video_operation(quality), clip_variant(resolution, seconds))


def plan_clips(duration: int, unit_prices: dict[int, int]) -> list[int]:
    """The clips of a ``duration``-second video, longest first: of every combination of clip lengths
    adding up to ``duration`` .. ``duration + SLACK_SECONDS``, the cheapest, then the shortest, then
    the one with the fewest clips. E.g. at 8/12/15 credits for 4/6/8 s: 8 -> [8], 5 -> [6], 20 -> [8, 8, 4],
    30 -> [8, 8, 8, 6]."""
    if duration < min(CLIP_SECONDS):
        raise ValueError(f"a video is at least {min(CLIP_SECONDS)} s long")
    best: tuple[int, int, int, tuple[int, ...]] | None = None
    for total in range(duration, duration + SLACK_SECONDS + 1):
        found = _cheapest(total, tuple(sorted(unit_prices.items())))
        if found is None:
            continue
        cost, clips = found
        candidate = (cost, total, len(clips), clips)
        if best is None or candidate < best:
            best = candidate
    if best is None:  # pragma: no cover - 4 and 6 make every even length from 4, and the slack covers odd ones
        raise ValueError(f"no clips add up to {duration} s")
    return sorted(best[3], reverse=True)


@cache
def _cheapest(total: int, prices: tuple[tuple[int, int], ...]) -> tuple[int, tuple[int, ...]] | None:
    """(cost, clips) of the cheapest clips adding up to exactly ``total`` seconds (fewest clips on a tie)."""
    if total == 0:
        return 0, ()
    best: tuple[int, tuple[int, ...]] | None = None
    for seconds, price in prices:
        if seconds > total:
            continue
        rest = _cheapest(total - seconds, prices)
        if rest is None:
            continue
        candidate = (rest[0] + price, tuple(sorted((*rest[1], seconds), reverse=True)))
        if best is None or (candidate[0], len(candidate[1])) < (best[0], len(best[1])):
            best = candidate
    return best


def item_costs(
    prices: PriceList, *, quality: str, resolution: str, clips: list[int], voiceover: bool
) -> dict[str, int]:
    """One video's price by operation: its clips (``video`` or ``video_quality``), and its voiceover."""
    costs = {video_operation(quality): sum(clip_price(prices, quality, resolution, seconds) for seconds in clips)}
    if voiceover:
        costs["voiceover"] = prices.price("voiceover", None)
    return costs


def clip_prices(prices: PriceList, quality: str, resolution: str) -> dict[int, int]:
    """Each clip length's price at this quality and resolution."""
    return {seconds: clip_price(prices, quality, resolution, seconds) for seconds in CLIP_SECONDS}
