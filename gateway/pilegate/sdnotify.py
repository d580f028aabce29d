"""systemd's notify protocol (sd_notify(3)), dependency-free: READY, the watchdog, STOPPING.

The unit (`pilegate install`, docs/install.md) is `Type=notify` with `WatchdogSec=`: systemd
starts counting the gateway as up when it says READY=1, and restarts it when WATCHDOG=1 pings
stop for longer than WatchdogSec (a hung event loop).  The gateway pings from its housekeeping
loop, which runs on the same asyncio loop as everything else, so a blocked loop stops the pings.

Outside systemd ($NOTIFY_SOCKET unset) every call is a cheap no-op returning False.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping


class Notifier:
    """Sends datagrams to $NOTIFY_SOCKET (a path, or '@name' in the abstract namespace)."""

    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._clock = clock
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields in one datagram; False when not under systemd or it fails."""
        if self.address is None:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), addr)
        except OSError:
            return False  # systemd went away or refuses: never crash the gateway over it
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *(["STATUS=" + status] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text)

    def ping(self) -> bool:
        """WATCHDOG=1, at most four times per watchdog interval (systemd recommends pinging at
        half the interval at least).  False when the watchdog is off or the ping was not due."""
        if self.watchdog_s is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_s / 4:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")
