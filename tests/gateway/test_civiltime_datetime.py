"""pilecore.civiltime against CPython's datetime over the whole four-digit-year range."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pilecore import civiltime as ct

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T_MIN = ct.from_civil(1, 1, 1)
T_MAX = ct.from_civil(9999, 12, 31, 23, 59, 59)


def _reference(t: int) -> datetime:
    return EPOCH + timedelta(seconds=t)


@given(st.integers(min_value=T_MIN, max_value=T_MAX))
def test_matches_datetime(t: int) -> None:
    d = _reference(t)
    assert ct.to_civil(t) == (d.year, d.month, d.day, d.hour, d.minute, d.second)
    assert ct.weekday(t) == d.weekday()
    assert ct.iso_utc(t) == d.isoformat().replace("+00:00", "Z")
    ms = d.isoformat(timespec="milliseconds")
    assert ct.ocmf_time(t, "S") == ms.replace(".", ",").replace("+00:00", "+0000") + " S"
    assert ct.from_civil(d.year, d.month, d.day, d.hour, d.minute, d.second) == t
    assert ct.parse_iso_utc(ct.iso_utc(t)) == t


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_days_round_trip_beyond_the_text_range(days: int) -> None:
    assert ct.days_from_civil(*ct.civil_from_days(days)) == days


def test_every_day_from_1900_to_2200() -> None:
    z0 = ct.days_from_civil(1900, 1, 1)
    z1 = ct.days_from_civil(2200, 12, 31)
    d = datetime(1900, 1, 1, tzinfo=UTC)
    for z in range(z0, z1 + 1):
        assert ct.civil_from_days(z) == (d.year, d.month, d.day)
        d += timedelta(days=1)


def test_parse_ocmf_time_matches_fromisoformat() -> None:
    for text in ("2018-07-24T13:22:04,000+0200 S", "2026-01-01T00:30:00,000-0130 I", "2038-01-19T03:14:08,000+0000 U"):
        t, status = ct.parse_ocmf_time(text)
        ref = datetime.fromisoformat(text[:-2].replace(",", "."))
        assert t == int((ref - EPOCH).total_seconds())
        assert status == text[-1]
