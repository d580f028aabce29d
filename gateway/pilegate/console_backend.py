"""What the technician console sees on the Pi: the running gateway's state, as plain data.

`GatewayBackend` implements the backend interface of pilecore.console over a running
`pilegate.runtime.Gateway`.  Reads are answered from the gateway's live state; mbread and scan
go through the bus schedulers as jobs (never around them); privileged actions change only the
operational settings listed in SETTINGS, and every one is audited by the console as a signed
event.  Meter-to-pile bindings are deliberately not settable here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import resource
import time
from typing import Any

from pilecore import civiltime, envelope, modbus
from pilecore.scheduler import PRIO_BACKGROUND
from pilegate import VERSION

SETTINGS = {
    "telemetry.interval_s": (int, 1, 3600, "seconds between telemetry messages"),
    "log.level": (str, None, None, "debug | info | warning | error"),
    "console.idle_logout_s": (int, 30, 86400, "idle privileged sessions log out after this"),
}


class LogRing(logging.Handler):
    """The last `size` log lines, for the console's `log` command."""

    def __init__(self, size: int = 200):
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class GatewayBackend:
    """See the module docstring."""

    def __init__(self, gw: Any, log_ring: LogRing | None = None):
        self.gw = gw
        self.ring = log_ring or LogRing()
        self._tasks: dict[int, asyncio.Task] = {}

    # ------------------------------------------------------------ read-only

    def status(self) -> dict[str, Any]:
        gw = self.gw
        now = gw.now()
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "gateway": gw.gw,
            "site": gw.site_id,
            "firmware": VERSION,
            "platform": "rpi",
            "board": gw.cfg["gateway"]["board"],
            "uptime_s": int(time.monotonic() - gw.started),
            "time": civiltime.iso_utc(now),
            "tsync": gw.tsync(),
            "memory_kb": rss_kb,
            "config_hash": gw.site.config_hash,
            "kid": gw.key.kid,
            "epoch": gw.epoch,
            "seq": gw.chain.seq,
        }

    def piles(self) -> list[dict[str, Any]]:
        out = []
        for p in self.gw.cfg["pile"]:
            st = self.gw.core.guard.status(p["id"])
            m = self.gw.metering.meters[p["id"]]
            r = m.reading or {}
            out.append(
                {
                    "pile": p["id"],
                    "meter": f"{m.bus}/{m.address} {p['meter']['profile']}",
                    "serial": st["serial"],
                    "metered": st["metered"],
                    "reasons": st["reasons"],
                    "energy_wh": r.get("energy_wh"),
                    "power_w": r.get("power_w"),
                    "last_reading": r.get("t"),
                    "error": m.error,
                    "interlock": p.get("interlock", "report"),
                }
            )
        return out

    def meter(self, pile: str) -> dict[str, Any] | None:
        m = self.gw.metering.meters.get(pile)
        if m is None:
            return None
        dev = self.gw.metering.scheds[m.bus].device(pile)
        return {
            "pile": pile,
            "bus": m.bus,
            "address": m.address,
            "profile": m.profile.get("id"),
            "identity": m.identity,
            "reading": m.reading,
            "error": m.error,
            "faults": m.faults,
            "reads": m.plan.reads,
            "unsupported": m.plan.unsupported,
            "stats": dev.stats() if dev else None,
            "polls": m.polls,
            "failures": m.failures,
        }

    def bays(self) -> list[dict[str, Any]]:
        now = self.gw.now()
        out = []
        for b in self.gw.cfg.get("bay", []):
            machine = self.gw.core.bays.get(b["id"])
            st = machine.status(now) if machine else {"state": "unmonitored"}
            out.append(dict(st, bay=b["id"], pile=b["pile"]))
        return out

    def bay(self, bay_id: str) -> dict[str, Any] | None:
        for b in self.bays():
            if b["bay"] == bay_id:
                return b
        return None

    def events(self, n: int) -> list[dict[str, Any]]:
        return list(self.gw.recent_events)[-n:]

    def mqtt(self) -> dict[str, Any]:
        link, ob = self.gw.link, self.gw.outbox
        oldest = ob.oldest()
        age = None
        if oldest is not None:
            msg = ob.get(oldest)
            if msg is not None:
                try:
                    _, payload, _, _ = envelope.split(msg[3].decode())
                    import json

                    age = self.gw.now() - json.loads(payload)["t"]
                except (ValueError, KeyError):
                    age = None
        return {
            "url": self.gw.cfg["mqtt"]["url"],
            "connected": link.connected.is_set(),
            "connects": link.connects,
            "last_error": link.last_error,
            "last_publish": civiltime.iso_utc(int(link.last_publish)) if link.last_publish else None,
            "published": link.published,
            "acked": link.acked,
            "in_flight": link.inflight(),
            "outbox_depth": ob.depth(),
            "oldest_unsent_seq": oldest,
            "oldest_unsent_age_s": age,
            "outbox_bytes": ob.bytes_used(),
            "last_seq": self.gw.chain.seq,
        }

    def bus(self) -> dict[str, Any]:
        return {name: s.snapshot() for name, s in self.gw.metering.scheds.items()}

    def log(self, level: str | None = None) -> list[str]:
        if level:
            logging.getLogger("pilegate").setLevel(level.upper())
        return list(self.ring.lines)[-40:]

    def selftest(self) -> list[tuple[str, bool, str]]:
        gw = self.gw
        out = []
        msg = b"pilegate selftest"
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            pub = serialization.load_der_public_key(gw.key.spki_der)
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

    # ------------------------------------------------------------ privileged

    def settings(self) -> dict[str, Any]:
        return {
            "telemetry.interval_s": self.gw.interval_s,
            "log.level": logging.getLevelName(logging.getLogger("pilegate").getEffectiveLevel()).lower(),
            "console.idle_logout_s": self.gw.cfg.get("console", {}).get("idle_logout_s", 600),
        }

    def set_setting(self, key: str, value: str) -> tuple[bool, str]:
        if key not in SETTINGS:
            return False, f"{key} is not an operational setting; settable: {', '.join(sorted(SETTINGS))}"
        typ, lo, hi, _ = SETTINGS[key]
        if typ is int:
            if not value.isdigit() or not lo <= int(value) <= hi:
                return False, f"{key} must be a whole number {lo}-{hi}"
            v: Any = int(value)
        else:
            if value not in ("debug", "info", "warning", "error"):
                return False, "log.level must be debug, info, warning or error"
            v = value
        if key == "telemetry.interval_s":
            self.gw.interval_s = v
            self.gw.outbox.kv_put("interval_s", v)
        elif key == "log.level":
            logging.getLogger("pilegate").setLevel(v.upper())
        elif key == "console.idle_logout_s":
            self.gw.cfg.setdefault("console", {})["idle_logout_s"] = v
        return True, f"{key} = {v}"

    def interlock(self, pile: str, mode: str) -> tuple[bool, str]:
        guard = self.gw.core.guard
        if pile not in guard.piles:
            return False, f"no pile {pile}"
        if guard.interlock_mode.get(pile) != "relay":
            return False, f'pile {pile} has interlock = "report": there is nothing to switch'
        if mode == "auto":
            guard.overrides.pop(pile, None)
            return True, f"{pile}: interlock follows metering again"
        guard.overrides[pile] = mode == "on"
        return True, f"{pile}: interlock forced {mode} until 'interlock {pile} auto'"

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
