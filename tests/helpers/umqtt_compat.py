"""Run micropython-lib's umqtt.simple on CPython, against a real broker.

umqtt.simple imports `usocket`, `ustruct` and `ubinascii` and uses MicroPython's stream API on
its socket: `read(n)` returns exactly n bytes (fewer only at end of stream; None when a
non-blocking socket has nothing), `write(buf, n)` sends the first n bytes.  This module maps
those names onto CPython's real sockets; nothing about MQTT is faked (the broker is mosquitto).

umqtt's code is not part of this repository: `make setup` downloads the pinned sdist of
micropython-umqtt.simple 1.3.4 into build/deps/umqtt/ (scripts/setup.sh).  `load()` imports it
from there, or returns None with the reason when it is missing.
"""

from __future__ import annotations

import binascii
import importlib
import os
import socket as _socket
import struct
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UMQTT_DIR = ROOT / "build" / "deps" / "umqtt"


class Socket:
    """A CPython socket with MicroPython's stream methods (read/write) on top."""

    def __init__(self, *args: object) -> None:
        self._s = _socket.socket(*args)  # type: ignore[arg-type]

    def connect(self, addr: object) -> None:
        self._s.connect(addr)  # type: ignore[arg-type]

    def read(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._s.recv(n - len(buf))
            except BlockingIOError:  # non-blocking and nothing (more) yet
                return bytes(buf) if buf else None
            if not chunk:  # end of stream
                break
            buf += chunk
        return bytes(buf)

    def write(self, buf: bytes | bytearray | str, n: int | None = None) -> int:
        data = buf.encode() if isinstance(buf, str) else bytes(buf)
        if n is not None:
            data = data[:n]
        self._s.sendall(data)
        return len(data)

    def setblocking(self, flag: bool) -> None:
        self._s.setblocking(flag)

    def settimeout(self, t: float | None) -> None:
        self._s.settimeout(t)

    def close(self) -> None:
        self._s.close()

    def fileno(self) -> int:
        return self._s.fileno()


def _usocket() -> types.ModuleType:
    mod = types.ModuleType("usocket")
    mod.socket = Socket  # type: ignore[attr-defined]
    mod.getaddrinfo = _socket.getaddrinfo  # type: ignore[attr-defined]
    return mod


def missing_reason() -> str | None:
    if not (UMQTT_DIR / "umqtt" / "simple.py").exists():
        return f"umqtt.simple is not in {UMQTT_DIR}: run 'make setup' (it fetches the pinned sdist)"
    return None


def load(connect_timeout_s: float = 2.0) -> types.ModuleType | None:
    """Install the MicroPython module names and import umqtt.simple; None if it is missing.

    As on the device (pilefw.hw), umqtt's sockets start with a timeout (pilefw.mqtt.TimedSockets)
    so the TCP connect and the CONNACK wait are bounded."""
    if missing_reason():
        return None
    sys.modules.setdefault("usocket", _usocket())
    sys.modules.setdefault("ustruct", struct)
    sys.modules.setdefault("ubinascii", binascii)
    if str(UMQTT_DIR) not in sys.path:
        sys.path.insert(0, str(UMQTT_DIR))
    simple = importlib.import_module("umqtt.simple")
    from pilefw.mqtt import TimedSockets

    if not isinstance(simple.socket, TimedSockets):
        simple.socket = TimedSockets(simple.socket, connect_timeout_s)
    return simple


def require() -> types.ModuleType:
    """umqtt.simple, or skip the calling test module (fail in CI, where setup must have run)."""
    import pytest

    mod = load()
    if mod is None:
        if os.environ.get("CI"):
            raise RuntimeError(missing_reason())
        pytest.skip(missing_reason() or "", allow_module_level=True)
    return mod
