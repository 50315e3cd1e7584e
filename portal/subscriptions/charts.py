"""A daily usage chart as plain numbers for an SVG drawn by the template (no JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from portal.subscriptions.queries import UsageDay

WIDTH = 320
HEIGHT = 120
BASELINE = 104  # room under the bars for the first and last day's labels


@dataclass(frozen=True)
class Bar:
    day: date
    quantity: int
    x: float  # money-safe: pixels
    y: float  # money-safe: pixels
    width: float  # money-safe: pixels
    height: float  # money-safe: pixels
    is_future: bool


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    total: int
    width: int = WIDTH
    height: int = HEIGHT
    baseline: int = BASELINE


def usage_chart(days: Sequence[UsageDay], today: date) -> Chart:
    """Bars scaled to the busiest day; days still to come are drawn as empty slots."""
    peak = max((d.quantity for d in days), default=0)
    slot = WIDTH / max(len(days), 1)
    gap = min(2.0, slot / 4)  # money-safe: pixels
    bars = []
    for index, entry in enumerate(days):
        height = 0.0 if peak == 0 else (BASELINE - 4) * entry.quantity / peak  # money-safe
        if entry.quantity and height < 2:
            height = 2.0
        bars.append(
            Bar(
                day=entry.day,
                quantity=entry.quantity,
                x=round(index * slot + gap / 2, 2),
                y=round(BASELINE - height, 2),
                width=round(slot - gap, 2),
                height=round(height, 2),
                is_future=entry.day > today,
            )
        )
    return Chart(bars=bars, peak=peak, total=sum(d.quantity for d in days))
