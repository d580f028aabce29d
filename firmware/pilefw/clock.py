"""Wall-clock time for the ESP32 port: Unix seconds and how they are known (tsync).

MicroPython's `time.time()` counts from the port's epoch: 2000-01-01 on older ESP32 builds,
1970-01-01 on newer ones.  `epoch_offset(time.gmtime)` tells which from `gmtime(0)` and gives
the seconds to add.  Unix times are ints everywhere (an ESP32 float has 24 bits of mantissa).

tsync (docs/telemetry.md): "ntp" once `ntptime.settime()` succeeded, "platform" after a
`sync_time` command (an offset on top of the RTC), "none" before either.  A later NTP success
replaces a platform offset: NTP is the better source.
"""

UNIX_AT_2000 = 946684800


def epoch_offset(gmtime):
    """Seconds to add to the port's time.time() for Unix time: 0 or 946684800."""
    return UNIX_AT_2000 if gmtime(0)[0] == 2000 else 0


class WallClock:
    """`now()` in Unix seconds; `time_fn()` is the port's time.time(), `offset` its epoch."""

    def __init__(self, time_fn, offset=0):
        self.time_fn = time_fn
        self.offset = offset
        self.adjust = 0
        self.tsync = "none"

    def rtc(self):
        return int(self.time_fn()) + self.offset

    def now(self):
        return self.rtc() + self.adjust

    def ntp_synced(self):
        """The RTC was just set by NTP."""
        self.adjust = 0
        self.tsync = "ntp"

    def set_platform(self, t):
        """A verified sync_time command: keep `t` as the current time; returns the offset."""
        self.adjust = t - self.rtc()
        self.tsync = "platform"
        return self.adjust


class MonotonicMs:
    """A millisecond count that never wraps, from MicroPython's wrapping ticks_ms().

    The ESP32's ticks_ms() wraps after 2**30 ms (12.4 days); the core scheduler and the
    deadlines of the main loop compare plain ints, so the port hands them this count instead.
    It must be called at least once per wrap period (the main loop calls it every pass)."""

    def __init__(self, ticks_ms, ticks_diff):
        self.ticks_ms = ticks_ms
        self.ticks_diff = ticks_diff
        self.last = ticks_ms()
        self.total = 0

    def __call__(self):
        t = self.ticks_ms()
        self.total += self.ticks_diff(t, self.last)
        self.last = t
        return self.total
