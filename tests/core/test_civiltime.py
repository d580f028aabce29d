"""Civil UTC time from Unix seconds: fixed vectors, calendar walks, formats (CPython + MicroPython).

The vectors were taken from CPython's datetime; tests/gateway/test_civiltime_datetime.py
compares against datetime over the whole supported range.
"""

from mpytest import raises

from pilecore import civiltime as ct

# (Unix seconds, (year, month, day, hour, minute, second), weekday Monday=0)
VECTORS = [
    (0, (1970, 1, 1, 0, 0, 0), 3),
    (-1, (1969, 12, 31, 23, 59, 59), 2),
    (951782400, (2000, 2, 29, 0, 0, 0), 1),  # 2000 is a leap year (divisible by 400)
    (1709208000, (2024, 2, 29, 12, 0, 0), 3),
    (-2203891200, (1900, 3, 1, 0, 0, 0), 3),  # 1900 is not (divisible by 100)
    (4107542400, (2100, 3, 1, 0, 0, 0), 0),  # nor is 2100
    (1795691815, (2026, 11, 26, 11, 16, 55), 3),
    (2147483647, (2038, 1, 19, 3, 14, 7), 1),  # last second of signed 32-bit time_t
    (4294967295, (2106, 2, 7, 6, 28, 15), 6),  # last second of unsigned 32-bit
    (-62135596800, (1, 1, 1, 0, 0, 0), 0),
    (253402300799, (9999, 12, 31, 23, 59, 59), 4),
]


def test_vectors_both_ways():
    for t, fields, wd in VECTORS:
        assert ct.to_civil(t) == fields, (t, ct.to_civil(t))
        assert ct.from_civil(*fields) == t, fields
        assert ct.weekday(t) == wd, (t, ct.weekday(t))


def test_2038_rollover_is_a_plain_second():
    assert ct.to_civil(2147483648) == (2038, 1, 19, 3, 14, 8)
    assert ct.iso_utc(2147483647 + 86400) == "2038-01-20T03:14:07Z"


def _next_date(y, m, d):
    if d < ct.days_in_month(y, m):
        return y, m, d + 1
    if m < 12:
        return y, m + 1, 1
    return y + 1, 1, 1


def _walk(y0, m0, d0, days):
    """civil_from_days must step one calendar day at a time from y0-m0-d0 for `days` days."""
    z = ct.days_from_civil(y0, m0, d0)
    date = (y0, m0, d0)
    for i in range(days):
        assert ct.civil_from_days(z + i) == date, (z + i, date)
        assert ct.days_from_civil(*date) == z + i
        date = _next_date(*date)


def test_day_walk_across_leap_rules():
    _walk(1967, 12, 25, 800)  # 1968 leap, 1969, 1970 epoch
    _walk(1899, 12, 1, 500)  # 1900: no Feb 29
    _walk(1999, 12, 1, 500)  # 2000: Feb 29
    _walk(2099, 12, 1, 500)  # 2100: no Feb 29
    _walk(2037, 12, 1, 800)  # 2038 and after


def test_leap_years_and_month_lengths():
    assert ct.is_leap(2000) and ct.is_leap(2024) and ct.is_leap(2400)
    assert not ct.is_leap(1900) and not ct.is_leap(2100) and not ct.is_leap(2023)
    assert ct.days_in_month(2024, 2) == 29 and ct.days_in_month(2023, 2) == 28
    assert ct.days_in_month(2100, 2) == 28 and ct.days_in_month(2026, 4) == 30
    assert ct.days_in_month(2026, 12) == 31


def test_impossible_dates_and_times_are_refused():
    for args in [
        (2023, 2, 29),
        (1900, 2, 29),
        (2026, 4, 31),
        (2026, 13, 1),
        (2026, 0, 1),
        (2026, 1, 0),
        (0, 12, 31),
        (10000, 1, 1),
        (2026, 1, 1, 24),
        (2026, 1, 1, 0, 60),
        (2026, 1, 1, 0, 0, 60),
        (2026, 1, 1, -1),
    ]:
        with raises(ValueError):
            ct.from_civil(*args)
    assert ct.from_civil(2024, 2, 29) == 1709164800


def test_to_civil_wants_an_int():
    for bad in (1.5, "0", None, True):
        with raises(ValueError):
            ct.to_civil(bad)


def test_iso_utc():
    assert ct.iso_utc(1795691815) == "2026-11-26T11:16:55Z"
    assert ct.iso_utc(0) == "1970-01-01T00:00:00Z"
    assert ct.iso_utc(-62135596800) == "0001-01-01T00:00:00Z"
    with raises(ValueError):
        ct.iso_utc(253402300800)  # year 10000
    with raises(ValueError):
        ct.iso_utc(-62135596801)  # year 0


def test_ocmf_time_and_sync_letters():
    assert ct.ocmf_time(1795691815, "S") == "2026-11-26T11:16:55,000+0000 S"
    assert ct.ocmf_time(1795691815, True) == "2026-11-26T11:16:55,000+0000 S"
    assert ct.ocmf_time(1795691815, False) == "2026-11-26T11:16:55,000+0000 U"
    assert ct.ocmf_time(1795691815, None) == "2026-11-26T11:16:55,000+0000 U"
    for letter in ("U", "I", "R"):
        assert ct.ocmf_time(0, letter) == "1970-01-01T00:00:00,000+0000 " + letter
    for bad in ("X", "s", "", 1):
        with raises(ValueError):
            ct.ocmf_time(0, bad)


def test_parse_iso_utc_round_trip_and_strictness():
    for t, _f, _w in VECTORS:
        assert ct.parse_iso_utc(ct.iso_utc(t)) == t
    for bad in (
        "2026-11-26T11:16:55",
        "2026-11-26 11:16:55Z",
        "2026-11-26T11:16:5aZ",
        "2026-02-30T00:00:00Z",
        "2026-11-26T24:00:00Z",
        "26-11-26T11:16:55Z",
        None,
    ):
        with raises(ValueError):
            ct.parse_iso_utc(bad)


def test_parse_ocmf_time_offsets_and_status():
    for t, _f, _w in VECTORS:
        for s in ("S", "U", "I", "R"):
            assert ct.parse_ocmf_time(ct.ocmf_time(t, s)) == (t, s)
    # The OCMF spec's own example: 13:22:04 at +0200 is 11:22:04 UTC.
    t, st = ct.parse_ocmf_time("2018-07-24T13:22:04,000+0200 S")
    assert (ct.iso_utc(t), st) == ("2018-07-24T11:22:04Z", "S")
    t, st = ct.parse_ocmf_time("2018-07-24T01:22:04,999-0530 U")
    assert (ct.iso_utc(t), st) == ("2018-07-24T06:52:04Z", "U")
    for bad in (
        "2018-07-24T13:22:04,000+0200 Q",
        "2018-07-24T13:22:04.000+0200 S",
        "2018-07-24T13:22:04,000+02:00 S",
        "2018-07-24T13:22:04,000 0200 S",
        "2018-07-24T13:22:04,000+2400 S",
        "2018-07-24T13:22:04,0x0+0200 S",
        "2018-07-24T13:22:04,000+0200",
    ):
        with raises(ValueError):
            ct.parse_ocmf_time(bad)
