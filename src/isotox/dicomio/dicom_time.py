"""DICOM date and time parsing (DA, TM, DT) into naive datetimes, tolerant of the usual variants."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta


def parse_da(text: str) -> date:
    text = str(text).strip().replace(".", "")
    return datetime.strptime(text[:8], "%Y%m%d").date()


def parse_tm(text: str) -> time:
    """HHMMSS.ffffff, HHMMSS, HHMM, HH or the old HH:MM:SS form."""
    text = str(text).strip().replace(":", "")
    main, _, frac = text.partition(".")
    main = main.ljust(6, "0")
    micro = int((frac + "000000")[:6]) if frac else 0
    return time(int(main[0:2]), int(main[2:4]), int(main[4:6]), micro)


def parse_dt(text: str) -> datetime:
    """YYYYMMDDHHMMSS.ffffff (a time-zone suffix is ignored: all times of one study share it)."""
    text = str(text).strip()
    for sign in ("+", "-"):
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return datetime.combine(parse_da(text[:8]), parse_tm(text[8:] or "000000"))


def combine(day: str, clock: str) -> datetime:
    return datetime.combine(parse_da(day), parse_tm(clock))


def seconds_between(start: datetime, end: datetime) -> float:
    return (end - start) / timedelta(seconds=1)
