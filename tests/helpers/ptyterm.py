"""The technician's end of a console pseudo-terminal, driven as a person at a terminal would."""

from __future__ import annotations

import contextlib
import os
import re
import select
import time
import tty


class Terminal:
    """The technician's end of the console pseudo-terminal."""

    def __init__(self):
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the pty survives until the gateway opens it
        self.buf = b""

    def send(self, text: str | bytes) -> None:
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def read_until(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            text = self.buf.decode(errors="replace")
            m = rx.search(text)
            if m:
                self.buf = self.buf[len(text[: m.end()].encode()) :]
                return text[: m.end()]
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:
                    break
        raise AssertionError(f"no {pattern!r} within {timeout} s; got {self.buf[-800:]!r}")

    def command(self, line: str, timeout: float = 15.0) -> str:
        self.send(line + "\r")
        out = self.read_until(r"pilegate[>#] $", timeout)
        return out

    def drain(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                os.read(self.master, 65536)
            except OSError:
                return
        self.buf = b""

    def close(self) -> None:
        """Close both ends (the pty's number is free again for the next test)."""
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
