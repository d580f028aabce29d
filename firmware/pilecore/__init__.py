"""pilecore: the portable core of pilegate.

The core decides; the ports do I/O.  Every module here takes readings, samples and the
current time as arguments and returns records, events and actions.  Nothing in this package
sleeps, reads a clock, opens a file or a port.  It runs unchanged on CPython (the Raspberry Pi
port, the simulators, the tests) and on MicroPython (the ESP32 port), so it keeps to the
subset both share: no dataclasses, enum, abc, typing at run time, no large tables at import.
"""

VERSION = "0.1.0"
