"""Unix seconds <-> civil UTC date and time, and the two text forms the gateway writes.

No `time` module: the ESP32's epoch and its localtime() differ between ports and builds, and
the core never reads a clock anyway.  Everything here is integer arithmetic on the proleptic
Gregorian calendar, so it gives the same answer on CPython and MicroPython for any int.

Contracts:
  - Times are int Unix seconds (negative before 1970).  Never floats: an ESP32 float has 24
    bits of mantissa and cannot hold a Unix time to the second.
  - `days_from_civil` / `civil_from_days` are exact inverses for every int; they follow the
    well-known era-based method (a 400-year era has exactly 146097 days, and a year counted
    from March puts the leap day last).
  - The text forms use four-digit years, so formatting and parsing accept years 1..9999 and
    raise ValueError outside; parsers are strict (exact layout, ranges checked) and raise
    ValueError on anything else.
  - `iso_utc(t)`    -> "2026-11-26T11:16:55Z"                (ISO 8601, UTC)
  - `ocmf_time(t, sync)` -> "2026-11-26T11:16:55,000+0000 S" (OCMF reading time TM)

OCMF time status (the letter after the space, OCMF spec table "Time Status"):
  S  synchronised: the clock was synchronised to a reliable source when the reading was taken
  U  unknown or unsynchronised: the clock has never been set, or its sync was lost
  I  informative: an info clock, set but without a legally traceable source
  R  relative: the start time was informative, the duration since was kept with a
     calibration-law-accurate clock (only a certified meter can claim this)
"""

SYNC_STATUSES = ("S", "U", "I", "R")

MIN_YEAR = 1
MAX_YEAR = 9999

_DAY_S = 86400
_DAYS_PER_ERA = 146097  # days in 400 Gregorian years
_EPOCH_SHIFT = 719468  # days from 0000-03-01 to 1970-01-01


def is_leap(year):
    """True for a Gregorian leap year."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year, month):
    """Number of days of `month` (1..12) in `year`."""
    if month == 2:
        return 29 if is_leap(year) else 28
    if month in (4, 6, 9, 11):
        return 30
    return 31


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of the date year-month-day (proleptic Gregorian).

    Only month is range-checked (1..12, ValueError otherwise); day is taken as given so that
    callers can validate first (see `check_date`).
    """
    if not 1 <= month <= 12:
        raise ValueError("month must be 1..12, got %r" % (month,))
    # Count years from March so that February, with the leap day, is the last month.
    y = year - 1 if month <= 2 else year
    era = y // 400  # floor division: correct for negative years
    yoe = y - era * 400  # year of era, 0..399
    mp = (month + 9) % 12  # March = 0 ... February = 11
    doy = (153 * mp + 2) // 5 + day - 1  # day of the year counted from March 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy  # day of era, 0..146096
    return era * _DAYS_PER_ERA + doe - _EPOCH_SHIFT


def civil_from_days(days):
    """(year, month, day) of the date `days` after 1970-01-01; inverse of days_from_civil."""
    z = days + _EPOCH_SHIFT
    era = z // _DAYS_PER_ERA
    doe = z - era * _DAYS_PER_ERA  # 0..146096
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365  # 0..399
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # 0..365
    mp = (5 * doy + 2) // 153  # 0..11, March = 0
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def check_date(year, month, day):
    """ValueError unless year-month-day is a real date with MIN_YEAR <= year <= MAX_YEAR."""
    if not (isinstance(year, int) and isinstance(month, int) and isinstance(day, int)):
        raise ValueError("date fields must be ints")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError("year must be %d..%d, got %d" % (MIN_YEAR, MAX_YEAR, year))
    if not 1 <= month <= 12:
        raise ValueError("month must be 1..12, got %d" % month)
    if not 1 <= day <= days_in_month(year, month):
        raise ValueError("day must be 1..%d for %04d-%02d, got %d" % (days_in_month(year, month), year, month, day))


def from_civil(year, month, day, hour=0, minute=0, second=0):
    """Unix seconds of a civil UTC date and time; ValueError for an impossible one.

    Leap seconds do not exist in Unix time: second must be 0..59.
    """
    check_date(year, month, day)
    if not (isinstance(hour, int) and isinstance(minute, int) and isinstance(second, int)):
        raise ValueError("time fields must be ints")
    if not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 59):
        raise ValueError("time %02d:%02d:%02d is out of range" % (hour, minute, second))
    return days_from_civil(year, month, day) * _DAY_S + hour * 3600 + minute * 60 + second


def to_civil(t):
    """(year, month, day, hour, minute, second) in UTC of int Unix seconds `t`."""
    if not isinstance(t, int) or isinstance(t, bool):
        raise ValueError("Unix time must be an int, got %r" % (t,))
    days = t // _DAY_S
    rem = t - days * _DAY_S  # 0..86399 even for negative t
    year, month, day = civil_from_days(days)
    return year, month, day, rem // 3600, rem // 60 % 60, rem % 60


def weekday(t):
    """Day of the week of Unix time `t` in UTC: Monday = 0 ... Sunday = 6."""
    return (t // _DAY_S + 3) % 7  # 1970-01-01 was a Thursday


def _fields(t):
    f = to_civil(t)
    if not MIN_YEAR <= f[0] <= MAX_YEAR:
        raise ValueError("year %d cannot be written with four digits" % f[0])
    return f


def iso_utc(t):
    """ISO 8601 UTC text of Unix time `t`: "2026-11-26T11:16:55Z"."""
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % _fields(t)


def sync_status(sync):
    """The OCMF time-status letter for `sync`: a letter of SYNC_STATUSES is kept, True gives
    "S" (synchronised), False and None give "U" (unsynchronised/unknown).  ValueError else."""
    if sync is True:
        return "S"
    if sync is False or sync is None:
        return "U"
    if sync in SYNC_STATUSES:
        return sync
    raise ValueError("time sync status must be one of %s or a bool, got %r" % (", ".join(SYNC_STATUSES), sync))


def ocmf_time(t, sync):
    """OCMF reading time (TM) of Unix time `t`: "2026-11-26T11:16:55,000+0000 S".

    Milliseconds are always ",000" (the core keeps whole seconds); the offset is always +0000
    (the gateway reports UTC); the last letter is `sync_status(sync)`.
    """
    f = _fields(t)
    return "%04d-%02d-%02dT%02d:%02d:%02d,000+0000 %s" % (f + (sync_status(sync),))


def _digits(s, start, n):
    """Int of the n ASCII digits at s[start:start + n]; ValueError if any is not a digit."""
    v = 0
    for i in range(start, start + n):
        c = s[i]
        if not "0" <= c <= "9":
            raise ValueError("expected a digit at position %d of %r" % (i, s))
        v = v * 10 + ord(c) - 48
    return v


def _parse_datetime(s):
    """Unix seconds of the "YYYY-MM-DDTHH:MM:SS" prefix of s (length already checked)."""
    for i, c in ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":")):
        if s[i] != c:
            raise ValueError("expected %r at position %d of %r" % (c, i, s))
    return from_civil(
        _digits(s, 0, 4), _digits(s, 5, 2), _digits(s, 8, 2), _digits(s, 11, 2), _digits(s, 14, 2), _digits(s, 17, 2)
    )


def parse_iso_utc(s):
    """Unix seconds of exactly "YYYY-MM-DDTHH:MM:SSZ" (what iso_utc writes); ValueError else."""
    if not isinstance(s, str) or len(s) != 20 or s[19] != "Z":
        raise ValueError("not an ISO 8601 UTC time YYYY-MM-DDTHH:MM:SSZ: %r" % (s,))
    return _parse_datetime(s)


def parse_ocmf_time(s):
    """(Unix seconds, status letter) of an OCMF time "YYYY-MM-DDTHH:MM:SS,mmm+HHMM X".

    Any offset -2359..+2359 is accepted and applied (the result is UTC).  Milliseconds are
    dropped (floored toward the earlier second).  The status letter must be one of
    SYNC_STATUSES.  ValueError for anything else.
    """
    if not isinstance(s, str) or len(s) != 30 or s[19] != "," or s[28] != " ":
        raise ValueError("not an OCMF time YYYY-MM-DDTHH:MM:SS,mmm+HHMM X: %r" % (s,))
    t = _parse_datetime(s)
    _digits(s, 20, 3)
    sign = s[23]
    if sign not in "+-":
        raise ValueError("expected a UTC offset sign at position 23 of %r" % (s,))
    oh = _digits(s, 24, 2)
    om = _digits(s, 26, 2)
    if oh > 23 or om > 59:
        raise ValueError("UTC offset out of range in %r" % (s,))
    offset = oh * 3600 + om * 60
    status = s[29]
    if status not in SYNC_STATUSES:
        raise ValueError("unknown OCMF time status %r in %r" % (status, s))
    # Local time = UTC + offset, so UTC = local - offset.
    return (t - offset if sign == "+" else t + offset), status
