"""DICOM date/time helpers for the synthetic studies (all times local, no time zones)."""

from __future__ import annotations

from datetime import datetime, timedelta


def da(moment: datetime) -> str:
    """DICOM DA (YYYYMMDD)."""
    return moment.strftime("%Y%m%d")


def tm(moment: datetime) -> str:
    """DICOM TM (HHMMSS.ffffff)."""
    return moment.strftime("%H%M%S.%f")


def dt(moment: datetime) -> str:
    """DICOM DT (YYYYMMDDHHMMSS.ffffff)."""
    return moment.strftime("%Y%m%d%H%M%S.%f")


def at(day: datetime, hour: int, minute: int, second: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second, microsecond=0)


def plus(moment: datetime, seconds: float) -> datetime:
    return moment + timedelta(seconds=seconds)
