"""The console backend of the Pi gateway: a thin adapter from the running `Gateway` to the core.

What the console shows and may change is decided once, for both ports, by
`pilecore.console_views.ViewBackend`; this adapter only says where the Pi's facts are (the
port-neutral interface documented there) and carries out what only the Pi can do: self tests,
reboot, factory reset, and raw reads and scans that go through the bus schedulers as jobs
(never around them).  Every privileged action is audited by the console as a signed event.
Meter-to-pile bindings are deliberately not settable here.

`log` only reads: the lines the `LogRing` kept, filtered by the core.  Changing what is kept is
the privileged, audited `set log.level`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any

from pilecore import modbus
from pilecore.console_views import ViewBackend
from pilecore.scheduler import PRIO_BACKGROUND
from pilegate import VERSION

_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "error", "CRITICAL": "error"}
_SAVED = "console_settings"  # outbox key-value entry: the settings the console changed


class LogRing(logging.Handler):
    """The last `size` log records as {"t", "level", "msg"}, for the console's `log` command."""

    def __init__(self, size: int = 200):
        super().__init__()
        self.lines: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        level = _LEVELS.get(record.levelname, "error")
        self.lines.append({"t": int(record.created), "level": level, "msg": self.format(record)})


def _meminfo() -> tuple[int | None, int | None]:
    """(available, total) bytes of the system's memory, from /proc/meminfo."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemAvailable", "MemTotal"):
                    found[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None, None
    return found.get("MemAvailable"), found.get("MemTotal")


class GatewayBackend(ViewBackend):
    """See the module docstring."""

    def __init__(self, gw: Any, log_ring: LogRing | None = None):
        self.gw = gw
        self.cfg = gw.cfg
        self.core = gw.core
        self.ring = log_ring or LogRing()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        saved = gw.outbox.kv_get(_SAVED) or {}
        if isinstance(saved.get("metering.poll_s"), int):
            self.set_meter_poll_s(saved["metering.poll_s"])
        if saved.get("log.level") in _LEVELS.values():
            logging.getLogger("pilegate").setLevel(saved["log.level"].upper())

    # ------------------------------------------------------------ the port-neutral interface

    def now(self) -> int:
        return int(self.gw.now())

    def port_status(self) -> dict[str, Any]:
        gw = self.gw
        free, total = _meminfo()
        return {
            "firmware": VERSION,
            "platform": gw.cfg.get("board_def", {}).get("platform", "rpi"),
            "uptime_s": int(time.monotonic() - gw.started),
            "time_sync": gw.tsync(),
            "mem_free": free,
            "mem_total": total,
            "kid": gw.key.kid,
            "config_hash": gw.site.config_hash,
            "epoch": gw.epoch,
            "seq": gw.chain.seq,
        }

    def storage_status(self) -> dict[str, Any]:
        return dict(self.gw.driver.storage)

    def meter_state(self, pile: str) -> Any:
        return self.gw.metering.meters.get(pile)

    def schedulers(self) -> dict[str, Any]:
        return dict(self.gw.metering.scheds)

    def link_status(self) -> dict[str, Any]:
        link = self.gw.link
        return {
            "connected": link.connected.is_set(),
            "connects": link.connects,
            "last_error": link.last_error,
            "last_publish_t": int(link.last_publish) if link.last_publish else None,
            "outbox": self.gw.outbox.depth(),
        }

    def oldest_unsent(self) -> tuple[int, str, str, bytes] | None:
        ob = self.gw.outbox
        seq = ob.oldest()
        return ob.get(seq) if seq is not None else None

    def log_lines(self) -> list[dict[str, Any]]:
        return list(self.ring.lines)

    def recent_events(self) -> list[dict[str, Any]]:
        return list(self.gw.recent_events)

    def setting_values(self) -> dict[str, Any]:
        level = logging.getLevelName(logging.getLogger("pilegate").getEffectiveLevel())
        poll_ms = self.gw.metering.poll_ms
        for p in self.cfg["pile"]:
            dev = self.gw.metering.scheds[p["meter"]["bus"]].device(p["id"])
            if dev is not None:
                poll_ms = dev.poll_ms
                break
        return {
            "console.idle_logout_s": self._console_auth_idle(),
            "log.level": _LEVELS.get(level, "info"),
            "metering.poll_s": max(1, (poll_ms + 999) // 1000),  # a sub-second --poll shows as 1
            "telemetry.interval_s": self.gw.interval_s,
        }

    def _console_auth_idle(self) -> int:
        server = getattr(self.gw, "console", None)
        if server is not None:
            return int(server.auth.idle_logout_s)
        return int(self.cfg.get("console", {}).get("idle_logout_s", 600))

    def apply_setting(self, key: str, value: Any) -> None:
        gw = self.gw
        if key == "telemetry.interval_s":
            gw.driver.set_interval(value)  # applied and persisted by the core
            return
        if key == "console.idle_logout_s":
            return  # the console itself applies it to every session (AuthState), until restart
        if key == "metering.poll_s":
            self.set_meter_poll_s(value)
        elif key == "log.level":
            logging.getLogger("pilegate").setLevel(value.upper())
        saved = dict(gw.outbox.kv_get(_SAVED) or {})
        saved[key] = value
        gw.outbox.kv_put(_SAVED, saved)

    def interlocks_changed(self) -> None:
        # The core drives the relays and coils at once, as on the ESP32.
        self.gw.driver.apply_interlocks(self.gw.now())

    # ------------------------------------------------------------ what only the Pi does

    def selftest(self) -> list[tuple[str, bool, str]]:
        gw = self.gw
        out = []
        msg = b"pilegate selftest"
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            pub = serialization.load_der_public_key(gw.key.spki_der)
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                raise ValueError("the device key is not an EC key")
            pub.verify(gw.key.sign_der(msg), msg, ec.ECDSA(hashes.SHA256()))
            out.append(("device key signs and verifies", True, gw.key.kid[:16]))
        except Exception as exc:
            out.append(("device key signs and verifies", False, str(exc)))
        try:
            gw.outbox.kv_put("selftest", int(time.time()))
            out.append(("outbox database writable", True, str(gw.outbox.path)))
        except Exception as exc:
            out.append(("outbox database writable", False, str(exc)))
        for name, port in gw.metering.ports.items():
            out.append((f"bus {name} open", port.connected, gw.metering.buses[name]["port"]))
        out.append(("MQTT connected", gw.link.connected.is_set(), gw.link.last_error or gw.cfg["mqtt"]["url"]))
        out.append(("clock synchronised", gw.tsync() != "none", gw.tsync()))
        metered = [p for p in gw.cfg["pile"] if gw.core.guard.piles[p["id"]].metered]
        out.append(
            ("every pile metered", len(metered) == len(gw.cfg["pile"]), f"{len(metered)} of {len(gw.cfg['pile'])}")
        )
        return out

    def keys(self) -> dict[str, str]:
        return {"kid": self.gw.key.kid, "pem": self.gw.key.public_pem}

    def reboot(self) -> None:
        self.gw.request_stop(reboot=True)

    def factory_reset(self) -> None:
        self.gw.factory_reset()

    def audit(self, event: dict[str, Any]) -> None:
        ev = dict(event)
        ev["t"] = self.gw.now()
        self.gw.events.append(ev)

    # ------------------------------------------------------------ bus I/O through the scheduler

    def mbread(self, d: Any) -> None:
        _, bus, addr, fc, reg, count = d.request
        if bus not in self.gw.metering.scheds:
            raise ValueError(f"no bus {bus!r}; buses: {', '.join(self.gw.metering.scheds)}")

        async def run() -> None:
            code, payload = await self.gw.metering.request(bus, addr, fc, reg, count)
            if code == modbus.OK:
                d.complete({"values": payload})
            else:
                d.complete({"error": modbus.describe(code, payload)})

        self._spawn(d, run())

    def scan(self, d: Any) -> None:
        _, bus, first, last = d.request
        if bus not in self.gw.metering.scheds:
            raise ValueError(f"no bus {bus!r}; buses: {', '.join(self.gw.metering.scheds)}")

        async def run() -> None:
            found = []
            for addr in range(first, last + 1):
                if d.cancelled:
                    return
                code, _ = await self.gw.metering.request(bus, addr, 3, 0, 1, PRIO_BACKGROUND, tag="scan")
                answered = code in (modbus.OK, modbus.E_EXCEPTION)
                if answered:
                    found.append(addr)
                d.progress({"addr": addr, "answered": answered})
            d.complete({"found": found})

        self._spawn(d, run())

    def cancel(self, d: Any) -> None:
        task = self._tasks.pop(d.token, None)
        if task is not None:
            task.cancel()

    def _spawn(self, d: Any, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[d.token] = task
        task.add_done_callback(lambda _t: self._tasks.pop(d.token, None))


def load_pin_record(data_dir: Any) -> str | None:
    path = os.path.join(str(data_dir), "console-pin")
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
