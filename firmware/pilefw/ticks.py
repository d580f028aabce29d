"""MicroPython's tick functions, with a CPython stand-in so the port's code runs in tests.

On the ESP32 these are the `time` module's own; on CPython (tests driving the firmware code
against the simulator through the fake `machine`) they are built on time.monotonic_ns with the
same wrap-free semantics.
"""

try:
    from time import sleep_ms, sleep_us, ticks_add, ticks_diff, ticks_ms, ticks_us
except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        return _time.monotonic_ns() // 1000000

    def ticks_us():
        return _time.monotonic_ns() // 1000

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

    def sleep_ms(ms):
        _time.sleep(ms / 1000)

    def sleep_us(us):
        _time.sleep(us / 1000000)


__all__ = ["sleep_ms", "sleep_us", "ticks_add", "ticks_diff", "ticks_ms", "ticks_us"]
