"""Text helpers every stage compares or matches with: light normalisation, dates, email addresses."""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})")


@functools.lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Light normalisation for comparisons: NFKC (full/half-width) and no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def normalise_date(text: str | None) -> str:
    """The first date in `text` as YYYY-MM-DD (2025年5月16日, 2025/5/16, 2025.05.16 10:30 ...); '' when none."""
    match = _DATE.search(text or "")
    if not match:
        return ""
    year, month, day = (int(g) for g in match.groups())
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return ""
