"""Durations as people type them (`90s`, `10m`, `1.5h`, `1h30m`) and as the tool prints them.

A bare number is refused rather than guessed: `--max-time 9` could mean nine seconds or nine
hours, and a run that ends eight hours early (or late) is worse than one line asking for a unit.
"""
from __future__ import annotations

import math
import re

UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhms])")
EXAMPLES = "90s, 10m, 1.5h, 9h or 1h30m"


def parse_duration(text: str) -> float:
    """Seconds in `text`: one or more NUMBER+UNIT parts (d, h, m, s), largest unit first, each once.

    Raises ValueError saying what is wrong; the result is finite and above 0.
    """
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ValueError(f"empty; give a duration such as {EXAMPLES}")
    if _is_plain_number(compact):
        raise ValueError(f"has no unit; give a duration such as {EXAMPLES}")
    position, seconds, last_rank = 0, 0.0, -1
    order = list(UNITS)
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        rank = order.index(match.group(2))
        if rank <= last_rank:
            raise ValueError(f"units must go from the largest to the smallest, each once (e.g. {EXAMPLES})")
        last_rank, position = rank, match.end()
        seconds += float(match.group(1)) * UNITS[match.group(2)]
    if position != len(compact):
        raise ValueError(f"is not a duration; give e.g. {EXAMPLES}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"is not a duration above 0; give e.g. {EXAMPLES}")
    return seconds


def _is_plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_duration(seconds: float) -> str:
    """A short human form: `2.5s`, `10m`, `1h30m`, `9h`, `1d2h` (seconds shown below a minute only)."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 and seconds != int(seconds) else f"{int(round(seconds))}s"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    if total < 3600:
        parts.append((secs, "s"))
    return "".join(f"{value}{unit}" for value, unit in parts if value) or "0s"
