"""Opening hours of a hot folder (`schedule.hours`): outside them its files wait in the inbox.

A window is "HH:MM-HH:MM" (or with seconds) in the machine's local time; several are
separated by commas; a window whose end is before its start runs past midnight
("22:00-06:00"). Equal start and end means all day.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time as dtime, timedelta
from typing import Optional

_TIME = r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?"
_WINDOW = re.compile(rf"\s*{_TIME}\s*-\s*{_TIME}\s*\Z")


@dataclass(frozen=True)
class Window:
    """One daily window [start, end) in local time; crosses midnight when end < start."""

    start: dtime
    end: dtime

    def contains(self, t: dtime) -> bool:
        """True when the time of day `t` is inside the window."""
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


@dataclass(frozen=True)
class Hours:
    """The windows of one `schedule.hours` value; open when any of them is."""

    windows: tuple[Window, ...]
    text: str

    def is_open(self, now: datetime) -> bool:
        """True when files may be processed at local time `now`."""
        t = now.time()
        return any(w.contains(t) for w in self.windows)

    def next_opening(self, now: datetime) -> Optional[datetime]:
        """When the next window opens after `now` (None if one is open now)."""
        if self.is_open(now):
            return None
        candidates = []
        for w in self.windows:
            at = datetime.combine(now.date(), w.start, tzinfo=now.tzinfo)
            if at <= now:
                at += timedelta(days=1)
            candidates.append(at)
        return min(candidates)


def parse_hours(text: str) -> Hours:
    """'22:00-06:00' or '08:00-12:00, 13:00-17:30' -> Hours; ValueError naming what is wrong."""
    windows = []
    for part in text.split(","):
        match = _WINDOW.match(part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a window like \"22:00-06:00\" (24-hour HH:MM-HH:MM, local time)")
        g = match.groups()
        start = dtime(int(g[0]), int(g[1]), int(g[2] or 0))
        end = dtime(int(g[3]), int(g[4]), int(g[5] or 0))
        windows.append(Window(start, end))
    return Hours(tuple(windows), text)
