"""`pilegate commission`: from an unknown bus to proven bindings and a signed record.

Steps (docs/install.md walks an installer through them):

1. **scan** each bus at the line settings meters ship with and addresses 1-247 (both options,
   so a test or a careful installer can narrow them), with progress and the time left;
   devices that answer, devices at another line setting than the bus's, and collisions
   (two devices on one address give garbled replies);
2. **identify** each device with the profiles' `[recognize]` recipes (model and confidence)
   and read its serial number;
3. **prove the wiring** by a load test: per pile, the installer plugs a load in (or, with
   `--yes`, the tool switches every other interlocked pile off); the meter whose current rises
   measures that pile.  Crossed, shared and missing wiring are named in an electrician's words;
4. **write** the proven bindings into site.toml (tomlkit keeps comments and layout) after
   showing the diff and asking;
5. **test** each interlock (off: the pile's power must fall to the idle level) and read every
   bound meter once more;
6. **record**: a JSON record signed as a JWS with the gateway's device key (pilecore.envelope,
   the same signer as the telemetry), stored, optionally published on the `commissioning`
   topic, verified by `pilegate verify --record`; plus an HTML/SVG/PDF report.

Everything that waits (settling after a switch) goes through an injected `wait(seconds)`, so
tests drive a simulated site on a manual clock.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilecore import envelope, modbus
from pilecore import metering as core_metering
from pilecore import profile as core_profile

from .rtulink import FACTORY_LINES, Line, LinkError, Outcome, RtuLink

RECORD_KIND = "commissioning"
RECORD_VERSION = 1


# ------------------------------------------------------------------------------- answers


class NoAnswer(Exception):
    """A question the plan file does not answer (unattended runs never guess)."""


class Prompter:
    """Asks the installer; `--yes` and a plan file answer instead.

    Every question has a key (e.g. `load.P03`, `write`); a plan file is a TOML table of those
    keys (docs/install.md lists them).  `--yes` answers every confirmation with yes and uses
    the interlocks for the load test."""

    def __init__(
        self,
        yes: bool = False,
        plan: dict[str, Any] | None = None,
        ask: Callable[[str], str] | None = None,
        out: Any = None,
    ) -> None:
        self.yes = yes
        self.plan = plan or {}
        self._ask = ask
        self.out = out or sys.stdout

    @property
    def interactive(self) -> bool:
        return self._ask is not None and not self.yes and not self.plan

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def confirm(self, key: str, question: str) -> bool:
        if key in self.plan:
            return bool(self.plan[key])
        if self.yes:
            self.say(f"{question} [y/N] y  (--yes)")
            return True
        if self._ask is None:
            raise NoAnswer(key)
        return self._ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    def load_method(self, pile: str, has_interlock: bool) -> str:
        """How to load-test `pile`: "interlock", "installer" (plugged in by hand) or "skip"."""
        key = f"load.{pile}"
        if key in self.plan:
            return str(self.plan[key])
        if self.yes or (self.plan and has_interlock):
            return "interlock" if has_interlock else "skip"
        if self._ask is None:
            return "interlock" if has_interlock else "skip"
        return "installer"

    def wait_for(self, key: str, instruction: str) -> None:
        """Show an instruction and wait for Enter (a plan's `true` stands for Enter)."""
        if key in self.plan or self.yes:
            self.say(instruction)
            return
        if self._ask is None:
            raise NoAnswer(key)
        self._ask(instruction + "  [Enter when done] ")


# ------------------------------------------------------------------------------- findings


@dataclass
class Device:
    """A device that answered during the scan."""

    bus: str
    address: Any  # 1..247 (Modbus) or a 12-digit string (DL/T 645)
    line: Line
    garbled: int = 0  # garbled replies seen (two devices on one address)
    answers: int = 0
    profile: str | None = None
    confidence: str = "none"  # high | medium | low | none
    candidates: list[str] = field(default_factory=list)
    ties: list[str] = field(default_factory=list)  # equally good fits (low confidence)
    serial: str = ""
    reading: dict[str, Any] = field(default_factory=dict)
    protocol: str = "modbus"

    @property
    def collision(self) -> bool:
        """Garbled more than once: two devices on one address garble every reply they share;
        one garbled reply alone is a late answer or noise."""
        return self.garbled >= 2

    def where(self) -> str:
        return f"{self.bus} address {self.address}"


@dataclass
class Fault:
    code: str
    text: str
    pile: str | None = None


@dataclass
class PileResult:
    pile: str
    expected: dict[str, Any]
    meter: Device | None = None
    method: str = "none"  # interlock | installer | skip
    moved: list[tuple[str, int]] = field(default_factory=list)
    rise_a: float | None = None
    others_max_rise_a: float | None = None
    baseline_a: float | None = None
    loaded_a: float | None = None
    verdict: str = "not proven"
    interlock: str = "none"  # pass | fail | error | not tested | none
    interlock_detail: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    own_base_a: float | None = None  # the pile's own meter during the baseline (pile off)


# ------------------------------------------------------------------------------- reading


def _read_value(
    link: RtuLink, address: int, prof: dict[str, Any], name: str, garbled: list[int] | None = None
) -> list[float] | None:
    """The value(s) of canonical `name` (one per phase for voltage/current), or None.
    A garbled reply is counted in `garbled[0]` (two devices on one address)."""
    spec = prof.get("values", {}).get(name)
    if spec is None:
        return None
    out = []
    for function, reg, typ in core_profile.value_registers(prof, name):
        res = link.read(address, function, reg, core_profile.type_width(typ), retries=1, patient=True)
        if res.kind == "garbled" and garbled is not None:
            garbled[0] += 1
        if res.kind != "ok":
            return None
        try:
            out.append(
                modbus.decode_scaled(res.registers, 0, typ, spec["scale"], prof["byte_order"], prof["word_order"])
            )
        except ValueError:
            return None
    return out


def _read_dlt_value(link: RtuLink, address: str, prof: dict[str, Any], name: str) -> list[float] | None:
    """A DL/T 645 profile's value: one item per phase (`di` a list) or one; BCD, `decimals`,
    `signed`, times `scale`."""
    from pilecore import dlt645

    spec = prof.get("values", {}).get(name)
    if spec is None:
        return None
    dis = spec["di"] if isinstance(spec["di"], list) else [spec["di"]]
    out = []
    for di in dis:
        res = link.dlt_read(address, di, spec["bytes"])
        if res.kind != "ok":
            return None
        try:
            raw = dlt645.decode_bcd(res.data, bool(spec.get("signed", False)))
        except ValueError:
            return None
        out.append(raw / 10 ** int(spec["decimals"]) * float(spec.get("scale", 1)))
    return out


def read_meter(link: RtuLink, address: Any, prof: dict[str, Any]) -> dict[str, Any]:
    """Every value the profile defines, in canonical units; `current_a` = sum of phases."""
    out: dict[str, Any] = {}
    dlt = prof.get("protocol") == "dlt645"
    for name in core_profile.value_names():
        v = _read_dlt_value(link, str(address), prof, name) if dlt else _read_value(link, address, prof, name)
        if v is None:
            continue
        out[name] = [round(x, 3) for x in v] if core_profile.is_per_phase(name) else round(v[0], 3)
    if "current" in out:
        out["current_a"] = round(sum(out["current"]), 3)
    return out


def read_serial(link: RtuLink, address: Any, prof: dict[str, Any]) -> str:
    """The factory serial number by the profile's identity ("" when it has none or it fails)."""
    if prof.get("protocol") == "dlt645":
        ident = prof.get("identity", {})
        res = link.dlt_read(str(address), ident.get("di", 0x04000402), ident.get("bytes"))
        try:
            return core_metering.decode_identity(ident, list(res.data)) if res.kind == "ok" else ""
        except ValueError:
            return ""
    spec = core_metering.identity_read(prof.get("identity"))
    if spec is None:
        return ""
    function, reg, count = spec
    res = link.read(address, function, reg, count, retries=1, patient=True)
    if res.kind != "ok":
        return ""
    try:
        return core_metering.decode_identity(prof["identity"], res.registers)
    except ValueError:
        return ""


def _check_passes(link: RtuLink, address: int, prof: dict[str, Any], chk: dict[str, Any]) -> tuple[bool, bool]:
    """(passed, garbled) for one recognize check."""
    lo, hi = chk.get("min"), chk.get("max")
    if "value" in chk:
        garbled = [0]
        vals = _read_value(link, address, prof, chk["value"], garbled)
        if vals is None:
            return False, garbled[0] > 0
        if "phase" in chk:
            vals = vals[chk["phase"] - 1 : chk["phase"]]
        ok = all((lo is None or v >= lo) and (hi is None or v <= hi) for v in vals)
        return ok, False
    typ = chk["type"]
    res: Outcome = link.read(
        address, chk.get("function", 3), chk["register"], core_profile.type_width(typ), patient=True
    )
    if res.kind != "ok":
        return False, res.kind == "garbled"
    try:
        v = modbus.decode_raw(res.registers, 0, typ, prof["byte_order"], prof["word_order"])
    except ValueError:
        return False, False
    if "equals" in chk:
        return v == chk["equals"], False
    return (lo is None or v >= lo) and (hi is None or v <= hi), False


def identify(link: RtuLink, dev: Device, profiles: dict[str, dict[str, Any]]) -> None:
    """Run every profile's recipe on `dev`; set profile, confidence, candidates, serial.

    A recipe fits when all its checks pass.  The fitting recipe with a passed `equals` check
    (a model register) wins with high confidence; otherwise the one with the most checks
    (three phase voltages say more than one) with medium confidence; a tie is low confidence
    and names every candidate."""
    scores: list[tuple[tuple[int, int], str]] = []
    for pid in sorted(profiles):
        prof = profiles[pid]
        rec = prof.get("recognize")
        if not rec or prof.get("protocol", "modbus") != "modbus":
            continue  # no recipe, or a DL/T 645 meter (not found by a Modbus scan)
        checks = rec["checks"]
        passed = 0
        strong = 0
        for chk in checks:
            ok, garbled = _check_passes(link, dev.address, prof, chk)
            dev.garbled += garbled
            if not ok:
                break
            passed += 1
            strong += "equals" in chk
        if passed == len(checks):
            scores.append(((strong, passed), pid))
    if not scores:
        return
    scores.sort(reverse=True)
    best = scores[0][0]
    top = [pid for score, pid in scores if score == best]
    dev.candidates = [pid for _, pid in scores]
    dev.ties = top
    dev.profile = top[0]
    dev.confidence = "low" if len(top) > 1 else ("high" if best[0] else "medium")
    dev.serial = read_serial(link, dev.address, profiles[dev.profile])


# ------------------------------------------------------------------------------- scanning


def _fmt_s(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class Progress:
    """A one-line progress bar with the time left, on a terminal; quiet lines otherwise."""

    def __init__(self, out: Any, label: str, total: int) -> None:
        self.out = out
        self.label = label
        self.total = max(total, 1)
        self.t0 = time.monotonic()
        self.tty = hasattr(out, "isatty") and out.isatty()
        self._last_pct = -1

    def update(self, done: int, note: str = "") -> None:
        pct = 100 * done // self.total
        elapsed = time.monotonic() - self.t0
        left = elapsed / done * (self.total - done) if done else 0.0
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        text = f"{self.label} [{bar}] {done}/{self.total}  about {_fmt_s(left)} left {note}"
        if self.tty:
            print("\r" + text.ljust(100), end="", file=self.out, flush=True)
        elif pct // 25 != self._last_pct // 25 or done == self.total:
            print(text, file=self.out, flush=True)
        self._last_pct = pct

    def done(self) -> None:
        if self.tty:
            print(file=self.out, flush=True)


def scan_bus(
    link: RtuLink, bus: str, lines: Iterable[Line], addresses: Iterable[int], out: Any
) -> tuple[list[Device], list[str]]:
    """Probe every address at every line; returns the devices and notes (lines the port refused).

    The probe is a read of one holding register at 0: any answer, an exception included,
    proves a device.  A garbled reply is asked twice more: two devices on one address garble
    every reply they give together."""
    lines = list(lines)
    addresses = list(addresses)
    devices: list[Device] = []
    notes: list[str] = []
    prog = Progress(out, f"scan {bus}", len(lines) * len(addresses))
    done = 0
    for line in lines:
        try:
            link.set_line(line)
        except LinkError as exc:
            notes.append(f"{line}: skipped: {exc}")
            done += len(addresses)
            continue
        for addr in addresses:
            res = link.read(addr, 3, 0, 1)
            if res.kind != "silent":
                dev = Device(bus, addr, line)
                tries = [res]
                if res.kind == "garbled":  # ask twice more, after the line has gone quiet
                    link.drain()
                    tries += [link.read(addr, 3, 0, 1), link.read(addr, 3, 0, 1)]
                dev.garbled = sum(r.kind == "garbled" for r in tries)
                dev.answers = sum(r.answered for r in tries)
                devices.append(dev)
            done += 1
            prog.update(done, f"at {line}, {len(devices)} found")
    prog.done()
    return devices, notes


def parse_addresses(text: str) -> list[int]:
    """'1-247', '1-8,31-38', '5' -> sorted addresses; ValueError outside 1..247."""
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        lo, hi = int(a), int(b or a)
        if not (1 <= lo <= hi <= 247):
            raise ValueError(f"address range {part.strip()!r} must lie within 1-247")
        out.update(range(lo, hi + 1))
    return sorted(out)


# ------------------------------------------------------------------------------- interlocks


class Interlocks:
    """Switches piles off and on: Modbus enable coils over the bus links, board relays
    through `relays` (pilegate.gpio's BoardGpio on a Pi; None on a laptop)."""

    def __init__(self, cfg: dict[str, Any], links: dict[str, RtuLink], lines: dict[str, Line], relays: Any = None):
        self.piles = {p["id"]: p for p in cfg["pile"]}
        self.links = links
        self.lines = lines
        self.relays = relays

    def has(self, pile: str) -> bool:
        p = self.piles[pile]
        if p.get("coil"):
            return p["coil"]["bus"] in self.links
        return bool(p.get("relay")) and self.relays is not None

    def describe(self, pile: str) -> str:
        p = self.piles[pile]
        if p.get("coil"):
            c = p["coil"]
            return f"enable coil {c['coil']} of the pile controller at {c['bus']} address {c['address']}"
        return f"relay {p.get('relay')}"

    def set(self, pile: str, on: bool) -> str | None:
        """Switch; returns None, or what went wrong in words."""
        p = self.piles[pile]
        if p.get("coil"):
            c = p["coil"]
            link = self.links[c["bus"]]
            link.set_line(self.lines[c["bus"]])
            res = link.write_coil(c["address"], c["coil"], on)
            if res.kind == "ok":
                return None
            if res.kind == "exception":
                return f"the pile controller refused ({modbus.describe(modbus.E_EXCEPTION, res.code)})"
            return "the pile controller did not answer" if res.kind == "silent" else "garbled reply"
        try:
            self.relays.set(p["relay"], on)
        except Exception as exc:  # the GPIO layer's errors are reported, never raised at an installer
            return f"relay {p['relay']}: {exc}"
        return None


# ------------------------------------------------------------------------------- the job


@dataclass
class Options:
    lines: list[Line] | None = None  # None: FACTORY_LINES (the bus's own first)
    addresses: list[int] = field(default_factory=lambda: list(range(1, 248)))
    threshold_a: float = 1.0  # a rise of at least this current proves a pile's meter
    settle_s: float = 5.0
    idle_w: float | None = None  # interlock test: power at or below this is "off"
    who: str = ""


class Commissioning:
    """One commissioning run over a compiled site config and a link per bus."""

    def __init__(
        self,
        cfg: dict[str, Any],
        links: dict[str, RtuLink],
        prompter: Prompter,
        wait: Callable[[float], None],
        options: Options | None = None,
        relays: Any = None,
        out: Any = None,
    ) -> None:
        self.cfg = cfg
        self.links = links
        self.prompter = prompter
        self.wait = wait
        self.opt = options or Options()
        self.out = out or sys.stdout
        self.profiles = _all_profiles(cfg)
        self.bus_lines = {b["name"]: Line(b["baud"], b["parity"], b["stopbits"]) for b in cfg["bus"]}
        self.interlocks = Interlocks(cfg, links, self.bus_lines, relays)
        self.devices: list[Device] = []
        self.notes: list[str] = []
        self.faults: list[Fault] = []
        on_links = [p for p in cfg["pile"] if p["meter"]["bus"] in links]
        # DL/T 645 meters are not found by a Modbus scan: they are read at the site file's
        # 12-digit address (the broadcast address read needs a meter alone on the line).
        self.dlt645 = {p["id"] for p in on_links if self._protocol(p) == "dlt645"}
        self.piles = {p["id"]: PileResult(p["id"], dict(p["meter"])) for p in on_links}
        self.by_addr: dict[tuple[str, int], Device] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def fault(self, code: str, text: str, pile: str | None = None) -> None:
        self.faults.append(Fault(code, text, pile))
        self.say(f"  FAULT {text}")

    # -- 1 and 2: scan and identify
    def _protocol(self, pile: dict[str, Any]) -> str:
        return str(self.profiles.get(pile["meter"]["profile"], {}).get("protocol", "modbus"))

    def scan(self) -> None:
        for bus, link in self.links.items():
            own = self.bus_lines[bus]
            lines = self.opt.lines or [own] + [ln for ln in FACTORY_LINES if ln != own]
            self.say(
                f"scanning {bus} ({link.port}): {len(lines)} line setting(s) x {len(self.opt.addresses)} addresses"
            )
            found, notes = scan_bus(link, bus, lines, self.opt.addresses, self.out)
            found += self._second_look(link, bus, own, found)
            self.notes += [f"{bus}: {n}" for n in notes]
            for n in notes:
                self.say(f"  note: {n}")
            for dev in found:
                link.set_line(dev.line)
                if not dev.collision:
                    identify(link, dev, self.profiles)
                    if dev.profile and not dev.collision:
                        dev.reading = read_meter(link, dev.address, self.profiles[dev.profile])
                self.devices.append(dev)
                self.say("  " + self.describe(dev))
            for dev in self._dlt_look(link, bus, own):
                self.devices.append(dev)
                self.say("  " + self.describe(dev))
            self._dlt_broadcast(link, bus, own, lines)
        self._judge_scan()

    def _dlt_broadcast(self, link: RtuLink, bus: str, own: Line, lines: list[Line]) -> None:
        """At each scanned line that is a DL/T 645 line (the standard's 2400 8E1, or the bus's
        own when the site has DL/T 645 meters on it), send the broadcast address read and list
        what answered in the scan's notes: one meter's address, or a collision (several meters
        answer at once: a shared bus, or a meter to isolate before its address can be learnt)."""
        from pilecore import dlt645

        std = Line(dlt645.DEFAULT_BAUD, dlt645.DEFAULT_PARITY, dlt645.DEFAULT_STOPBITS)
        has_dlt = any(self.piles[pid].expected["bus"] == bus for pid in self.dlt645)
        for line in dict.fromkeys(ln for ln in lines if ln == std or (has_dlt and ln == own)):
            try:
                link.set_line(line)
            except LinkError:
                continue  # scan_bus already noted the refused line
            res = link.dlt_read_address()
            # Colliding replies may garble or cancel to silence: silence while two or more of
            # the site's DL/T 645 meters answered at their own addresses at this line is a collision.
            here = [d for d in self.devices if d.bus == bus and d.protocol == "dlt645" and d.answers and d.line == line]
            if res.kind == "silent" and len(here) >= 2:
                res = Outcome("garbled")
            if res.kind == "ok":
                note = (
                    f"{bus} at {line}: a DL/T 645 meter answered the broadcast address read: "
                    f"address {res.data.decode()}"
                )
            elif res.kind == "garbled":
                note = (
                    f"{bus} at {line}: more than one DL/T 645 meter answered the broadcast address read "
                    "(their replies collide); to learn one meter's address, connect that meter alone"
                )
            else:
                continue
            self.notes.append(note)
            self.say("  " + note)

    def _dlt_look(self, link: RtuLink, bus: str, own: Line) -> list[Device]:
        """The site's DL/T 645 meters on this bus, read at their own 12-digit addresses: the
        meter number (serial), whether phase B has a voltage (three-phase), a full reading.
        Tried at the bus's line, then at the standard's 2400 8E1."""
        from pilecore import dlt645

        found = []
        for pid in sorted(self.dlt645):
            exp = self.piles[pid].expected
            if exp["bus"] != bus:
                continue
            addr = str(exp["address"])
            prof = self.profiles.get(exp["profile"], {})
            ident = prof.get("identity", {})
            for line in dict.fromkeys([own, Line(dlt645.DEFAULT_BAUD, dlt645.DEFAULT_PARITY, dlt645.DEFAULT_STOPBITS)]):
                try:
                    link.set_line(line)
                except LinkError as exc:
                    self.notes.append(f"{bus}: {line}: skipped for DL/T 645: {exc}")
                    continue
                res = link.dlt_read(addr, ident.get("di", dlt645.DI_METER_NUMBER), ident.get("bytes"))
                if res.kind == "silent":
                    continue
                dev = Device(bus, addr, line, garbled=2 * (res.kind == "garbled"), answers=int(res.answered))
                dev.protocol = "dlt645"
                if res.kind == "ok":
                    try:
                        dev.serial = core_metering.decode_identity(ident, list(res.data))
                    except ValueError:
                        dev.serial = ""
                    phase_b = link.dlt_read(addr, 0x02010200, 2)
                    phases = 3 if phase_b.kind == "ok" else 1
                    fits = sorted(
                        pid2
                        for pid2, p2 in self.profiles.items()
                        if p2.get("protocol") == "dlt645" and int(p2.get("phases", 1)) == phases
                    )
                    dev.ties = fits
                    dev.candidates = fits
                    if exp["profile"] in fits:
                        dev.profile = exp["profile"]
                        dev.confidence = "medium" if len(fits) == 1 else "low"
                    elif fits:
                        dev.profile, dev.confidence = fits[0], "low"
                    if dev.profile:
                        dev.reading = read_meter(link, addr, self.profiles[dev.profile])
                found.append(dev)
                break
        return found

    def _second_look(self, link: RtuLink, bus: str, own: Line, found: list[Device]) -> list[Device]:
        """Meters the site file expects that the quick probe missed get one patient probe at
        the bus's own line: a slow meter or a busy converter is not a missing meter."""
        seen = {d.address for d in found}
        more = []
        for pr in self.piles.values():
            addr = pr.expected["address"]
            if pr.expected["bus"] != bus or isinstance(addr, str) or addr in seen or addr not in self.opt.addresses:
                continue
            link.set_line(own)
            res = link.read(addr, 3, 0, 1, patient=True)
            if res.kind != "silent":
                more.append(Device(bus, addr, own, garbled=res.kind == "garbled", answers=int(res.answered)))
                seen.add(addr)
        return more

    def describe(self, dev: Device) -> str:
        if dev.collision:
            return f"{dev.where()} at {dev.line}: garbled replies ({dev.garbled} CRC errors): two devices?"
        if not dev.profile:
            return f"{dev.where()} at {dev.line}: answers, matches no meter profile"
        extra = f" or {', '.join(t for t in dev.ties if t != dev.profile)}" if dev.confidence == "low" else ""
        serial = f", serial {dev.serial}" if dev.serial else ", no serial register"
        return f"{dev.where()} at {dev.line}: {dev.profile}{extra} ({dev.confidence} confidence){serial}"

    def _known_devices(self) -> set[tuple[str, int]]:
        """Addresses the site file gives to something other than a pile meter."""
        known = set()
        mm = self.cfg.get("main_meter")
        if mm:
            known.add((mm["bus"], mm["address"]))
        for p in self.cfg["pile"]:
            if p.get("coil"):
                known.add((p["coil"]["bus"], p["coil"]["address"]))
        for b in self.cfg.get("bay", []):
            for pr in b.get("presence", []):
                if pr.get("type") == "modbus":
                    known.add((pr["bus"], pr["address"]))
            plug = b.get("plug") or {}
            if plug.get("source") == "modbus":
                known.add((plug["bus"], plug["address"]))
        return known

    def _judge_scan(self) -> None:
        """Compare what answered with what the site file expects."""
        known = self._known_devices()
        for dev in self.devices:
            if dev.collision:
                self.fault(
                    "collision",
                    f"{dev.where()}: two devices answer at once (garbled replies, {dev.garbled} CRC errors). "
                    f"Two meters are set to address {dev.address}: give each its own address in its menu "
                    "and commission again.",
                )
        for pr in self.piles.values():
            exp = pr.expected
            at = [d for d in self.devices if (d.bus, d.address) == (exp["bus"], exp["address"])]
            own = self.bus_lines[exp["bus"]]
            if not at:
                tried = ", ".join(str(ln) for ln in (self.opt.lines or [own, *FACTORY_LINES]))
                self.fault(
                    "missing",
                    f"{pr.pile}: no meter answers at {exp['bus']} address {exp['address']} at any line setting "
                    f"tried ({tried}). Check that the meter has power (its display is on), that the A and B "
                    f"wires reach it (A to A, B to B) and that its address menu shows {exp['address']}.",
                    pr.pile,
                )
                continue
            dev = next((d for d in at if d.line == own), at[0])
            if dev.confidence == "low" and exp["profile"] in dev.ties and dev.profile != exp["profile"]:
                # equally good fits and the site file names one of them: the installer's word decides
                dev.profile = exp["profile"]
                self.links[dev.bus].set_line(dev.line)
                dev.serial = read_serial(self.links[dev.bus], dev.address, self.profiles[dev.profile])
                self.notes.append(
                    f"{dev.where()}: the recipes of {' and '.join(dev.ties)} fit equally; the site file's "
                    f"{exp['profile']} is kept"
                )
            pr.meter = dev
            self.by_addr[(dev.bus, dev.address)] = dev
            if dev.collision:
                continue
            if dev.line != own:
                prof = self.profiles.get(dev.profile or exp["profile"], {})
                factory = prof.get("serial", {})
                why = (
                    f" ({prof.get('maker', '')} {prof.get('model', '')} meters leave the factory at "
                    f"{Line(factory['baud'], factory['parity'], factory['stopbits'])})"
                    if factory
                    else ""
                )
                self.fault(
                    "wrong_line",
                    f"{pr.pile}: the meter at {dev.where()} talks at {dev.line}, the bus runs at {own}. In the "
                    f"meter's menu set the communication to {own.baud} baud, parity "
                    f"{_parity_word(own.parity)}, {own.stopbits} stop bit{'s' if own.stopbits > 1 else ''}{why}.",
                    pr.pile,
                )
            if not dev.profile:
                self.fault(
                    "unknown_model",
                    f"{pr.pile}: the device at {dev.where()} answers but matches no meter profile (tried "
                    f"{', '.join(sorted(p for p in self.profiles if self.profiles[p].get('recognize')))}). "
                    "Compare the meter's model with docs/meters.md: pilegate cannot bill from a model it has "
                    "no profile for.",
                    pr.pile,
                )
            elif dev.profile != exp["profile"] and dev.confidence != "low":
                self.fault(
                    "wrong_model",
                    f"{pr.pile}: the site file says {exp['profile']}, but the meter at {dev.where()} is "
                    f"recognised as {dev.profile} ({dev.confidence} confidence). Check the model printed on "
                    "the meter.",
                    pr.pile,
                )
        piles_at = {(p.expected["bus"], p.expected["address"]) for p in self.piles.values()}
        for dev in self.devices:
            key = (dev.bus, dev.address)
            if key not in piles_at and key not in known and not dev.collision:
                self.notes.append(f"{dev.where()} at {dev.line}: not in the site file ({self.describe(dev)})")

    # -- 3: prove the wiring
    def _meters_for_test(self) -> list[Device]:
        return [d for d in self.devices if d.profile and not d.collision]

    def _currents(self, meters: list[Device]) -> dict[tuple[str, int], float | None]:
        out: dict[tuple[str, int], float | None] = {}
        for d in meters:
            link = self.links[d.bus]
            link.set_line(d.line)
            vals = read_meter(link, d.address, self.profiles[d.profile or ""])
            cur = vals.get("current_a")
            if cur is None and "power" in vals:  # a meter without current registers: from power
                cur = abs(vals["power"]) / 230.0
            out[(d.bus, d.address)] = cur
        return out

    def prove(self) -> None:
        meters = self._meters_for_test()
        if not meters:
            self.say("load test: no readable meter; nothing to prove")
            return
        methods = {pid: self.prompter.load_method(pid, self.interlocks.has(pid)) for pid in self.piles}
        switched = [pid for pid, m in methods.items() if m == "interlock"]
        for pid in switched:  # everything we can switch is off for the baseline
            self._switch(pid, False)
        try:
            for pid, pr in self.piles.items():
                pr.method = methods[pid]
                if pr.method == "skip":
                    self.fault(
                        "not_proven",
                        f"{pid}: not load-tested: it has no interlock the tool can switch, and no one plugged "
                        "a load in. Run without --yes and plug a test load in when asked, or list "
                        f'load.{pid} = "installer" in a plan file.',
                        pid,
                    )
                    continue
                self.wait(self.opt.settle_s)
                base = self._currents(meters)
                if pr.method == "interlock":
                    self.say(f"load test {pid}: switching it on ({self.interlocks.describe(pid)}), the others off")
                    err = self._switch(pid, True)
                    if err:
                        self.fault("interlock_error", f"{pid}: cannot switch its interlock on: {err}.", pid)
                        continue
                else:
                    self.prompter.wait_for(
                        f"load.{pid}", f"Plug the test load (or a car) into {pid} and start charging."
                    )
                self.wait(self.opt.settle_s)
                loaded = self._currents(meters)
                if pr.method == "interlock":
                    self._switch(pid, False)
                else:
                    self.prompter.wait_for(f"unload.{pid}", f"Unplug the load from {pid}.")
                self._judge_pile(pr, base, loaded)
        finally:
            for pid in switched:
                self._switch(pid, True)
        self._judge_wiring()

    def _switch(self, pid: str, on: bool) -> str | None:
        return self.interlocks.set(pid, on)

    def _judge_pile(
        self, pr: PileResult, base: dict[tuple[str, int], float | None], loaded: dict[tuple[str, int], float | None]
    ) -> None:
        rises = {k: (loaded[k] or 0.0) - (base[k] or 0.0) for k in loaded if loaded[k] is not None}
        pr.moved = sorted((k for k, r in rises.items() if r >= self.opt.threshold_a), key=_addr_key)
        if pr.moved:
            k = max(pr.moved, key=lambda k: rises[k])
            pr.rise_a = round(rises[k], 2)
            pr.baseline_a = round(base[k] or 0.0, 2)
            pr.loaded_a = round(loaded[k] or 0.0, 2)
            others = [r for kk, r in rises.items() if kk != k]
            pr.others_max_rise_a = round(max(others), 2) if others else 0.0
        exp = (pr.expected["bus"], pr.expected["address"])
        pr.own_base_a = base.get(exp)  # its own meter with the pile switched off
        moved = ", ".join(f"{b} address {a}" for b, a in pr.moved) or "no meter"
        self.say(f"  {pr.pile}: current rose on {moved}")

    def _judge_wiring(self) -> None:
        """Turn the load test into verdicts and faults, in an electrician's words."""
        owner = {(p.expected["bus"], p.expected["address"]): pid for pid, p in self.piles.items()}
        movers: dict[tuple[str, int], list[str]] = {}
        for pid, pr in self.piles.items():
            for k in pr.moved:
                movers.setdefault(k, []).append(pid)
        for pid, pr in self.piles.items():
            if pr.method == "skip" or (pr.method == "interlock" and not self.interlocks.has(pid)):
                continue
            exp = (pr.expected["bus"], pr.expected["address"])
            own = self.by_addr.get(exp)
            if not pr.moved and own is not None and (own.collision or not own.profile):
                pr.verdict = "not proven"  # its meter cannot be read: the scan fault says why
                continue
            if not pr.moved and pr.method == "interlock" and (pr.own_base_a or 0.0) >= self.opt.threshold_a:
                pr.verdict = "not proven"
                self.fault(
                    "interlock_fail",
                    f"{pid}: with its {self.interlocks.describe(pid)} off, its meter ({exp[0]} address "
                    f"{exp[1]}) still showed {pr.own_base_a:.1f} A, and switching it on changed nothing: the "
                    "interlock does not switch this pile's supply. Check its wiring to the pile's contactor, "
                    "then commission again.",
                    pid,
                )
                continue
            if not pr.moved:
                pr.verdict = "unmetered"
                self.fault(
                    "unmetered",
                    f"{pid}: its load moved no meter. The pile's supply does not run through any meter on the "
                    f"bus, or its meter ({exp[0]} address {exp[1]}) is missing or silent. Check that the pile's "
                    "live and neutral pass through the meter's terminals.",
                    pid,
                )
                continue
            if len(pr.moved) > 1:
                pr.verdict = "several meters"
                where = " and ".join(f"{b} address {a}" for b, a in pr.moved)
                self.fault(
                    "several_meters",
                    f"{pid}: its load shows on {len(pr.moved)} meters ({where}): the pile's supply runs "
                    "through more than one meter, or two meters are wired in series.",
                    pid,
                )
                continue
            k = pr.moved[0]
            if len(movers[k]) > 1:
                pr.verdict = "shared meter"
                continue  # reported once per meter below
            dev = self.by_addr.get(k) or next(d for d in self.devices if (d.bus, d.address) == k)
            pr.meter = dev
            if k != exp:
                pr.verdict = "wrong meter"
                other = owner.get(k)
                whose = f"which the site file gives to {other}" if other else "which the site file gives to no pile"
                self.fault(
                    "wrong_meter",
                    f"{pid}: its load shows on the meter at {k[0]} address {k[1]}, {whose}: {pid}'s supply "
                    f"runs through {other + chr(39) + 's' if other else 'that'} meter. Either the cables to the "
                    "two meters are crossed or the meters' addresses are swapped; fix the wiring, or accept the "
                    "proven binding below.",
                    pid,
                )
            else:
                pr.verdict = "proven"
        for k, pids in movers.items():
            if len(pids) > 1:
                self.fault(
                    "shared_meter",
                    f"The meter at {k[0]} address {k[1]} measures {' and '.join(pids)}: these piles run through "
                    "one meter, which breaks one pile, one meter (一桩一表). Wire each pile through its own meter.",
                )
        for k, pid in owner.items():
            owned = self.by_addr.get(k)
            if (
                owned
                and owned.profile
                and k not in movers
                and self.piles[pid].method != "skip"
                and (
                    self.piles[pid].verdict != "not proven"  # its own fault already says why
                )
            ):
                self.fault(
                    "idle_meter",
                    f"The meter at {k[0]} address {k[1]} ({pid}'s in the site file) measured no pile's load: "
                    "it is not in any tested pile's supply.",
                    pid,
                )

    # -- 4: write bindings
    def bindings(self) -> dict[str, dict[str, Any]]:
        """Proven bindings: pile -> {bus, address, profile, serial}."""
        out = {}
        for pid, pr in self.piles.items():
            if pr.verdict in ("proven", "wrong meter") and pr.meter and pr.meter.profile:
                d = pr.meter
                out[pid] = {"bus": d.bus, "address": d.address, "profile": d.profile, "serial": d.serial}
        return out

    def write_site(self, path: Path) -> bool:
        """Show the diff of the proven bindings and write them after asking. True if written."""
        binds = self.bindings()
        if not binds:
            self.say("no proven bindings to write")
            return False
        old = path.read_text(encoding="utf-8")
        new = apply_bindings(old, binds)
        if new == old:
            self.say(f"{path}: already holds the proven bindings")
            return False
        diff = "".join(
            difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(path), str(path) + " (new)")
        )
        self.say(diff.rstrip("\n"))
        if not self.prompter.confirm("write", f"Write these bindings into {path}?"):
            self.say(f"{path}: not changed")
            return False
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, path)
        self.say(f"{path}: bindings written")
        return True

    # -- 5: interlocks and final readings
    def test_interlocks(self) -> None:
        idle = self.opt.idle_w
        if idle is None:
            idle = float(self.cfg.get("metering", {}).get("idle_power_w", 50.0))
        for pid, pr in self.piles.items():
            if not self.interlocks.has(pid):
                pr.interlock = "none"
                continue
            dev = pr.meter if pr.verdict in ("proven", "wrong meter") else None
            if dev is None or not dev.profile:
                pr.interlock = "not tested"
                pr.interlock_detail = "no proven meter to watch"
                continue
            link = self.links[dev.bus]
            prof = self.profiles[dev.profile]
            link.set_line(dev.line)
            before = read_meter(link, dev.address, prof).get("power")
            err = self._switch(pid, False)
            if err:
                pr.interlock, pr.interlock_detail = "error", err
                self.fault("interlock_error", f"{pid}: cannot switch its interlock off: {err}.", pid)
                continue
            self.wait(self.opt.settle_s)
            link.set_line(dev.line)
            after = read_meter(link, dev.address, prof).get("power")
            self._switch(pid, True)
            if before is None or after is None:
                pr.interlock, pr.interlock_detail = "not tested", "the meter's power could not be read"
            elif abs(before) <= idle:
                pr.interlock = "not tested"
                pr.interlock_detail = f"the pile drew only {before:.0f} W: plug a load in to test the interlock"
            elif abs(after) <= idle:
                pr.interlock = "pass"
                pr.interlock_detail = f"{before:.0f} W -> {after:.0f} W"
            else:
                pr.interlock = "fail"
                pr.interlock_detail = f"{before:.0f} W -> {after:.0f} W"
                self.fault(
                    "interlock_fail",
                    f"{pid}: with its {self.interlocks.describe(pid)} off the pile still drew {after:.0f} W: "
                    "the interlock does not switch this pile's supply. Check its wiring to the pile's contactor.",
                    pid,
                )
            self.say(f"interlock {pid}: {pr.interlock} ({pr.interlock_detail})")

    def final_readings(self) -> None:
        for pr in self.piles.values():
            d = pr.meter
            if d is None or not d.profile or d.collision:
                continue
            link = self.links[d.bus]
            link.set_line(d.line)
            pr.final = read_meter(link, d.address, self.profiles[d.profile])
            if "energy_import" not in pr.final:
                self.fault(
                    "read_failed", f"{pr.pile}: the meter at {d.where()} did not answer the final reading.", pr.pile
                )

    @property
    def verdict(self) -> str:
        return "pass" if not self.faults else "fail"

    def run(self, site_path: Path | None = None) -> None:
        self.scan()
        self.prove()
        if site_path is not None:
            self.write_site(site_path)
        self.test_interlocks()
        self.final_readings()


def _addr_key(k: tuple[str, Any]) -> tuple[str, int, str]:
    """Sort key for (bus, address) with Modbus (int) and DL/T 645 (str) addresses mixed."""
    return (k[0], isinstance(k[1], str), str(k[1]).zfill(12))


def _parity_word(p: str) -> str:
    return {"N": "none", "E": "even", "O": "odd"}[p]


def _all_profiles(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every meter profile pilegate ships (the scan may find models the site does not use)."""
    from pilegate import siteconfig

    profiles, _ = siteconfig.load_profiles()
    profiles.update(cfg.get("profiles", {}))
    return profiles


# ------------------------------------------------------------------------------- site file


def apply_bindings(text: str, binds: dict[str, dict[str, Any]]) -> str:
    """The site file text with each bound pile's meter set (tomlkit keeps everything else)."""
    import tomlkit

    doc = tomlkit.parse(text)
    for pile in doc.get("pile", []):
        b = binds.get(pile.get("id"))
        if b is None:
            continue
        meter = pile["meter"]
        for key in ("bus", "address", "profile", "serial"):
            if meter.get(key) != b[key]:
                meter[key] = b[key]
    return tomlkit.dumps(doc)


# ------------------------------------------------------------------------------- the record


def record_data(c: Commissioning, site_path: Path | None, gateway: dict[str, Any], kid: str, t: int) -> dict[str, Any]:
    """The commissioning record (docs/install.md "The commissioning record")."""
    piles = []
    for pr in c.piles.values():
        d = pr.meter
        piles.append(
            {
                "pile": pr.pile,
                "verdict": pr.verdict,
                "meter": None
                if d is None
                else {
                    "bus": d.bus,
                    "address": d.address,
                    "line": str(d.line),
                    "profile": d.profile,
                    "confidence": d.confidence,
                    "serial": d.serial,
                },
                "evidence": {
                    "method": pr.method,
                    "moved": [{"bus": b, "address": a} for b, a in pr.moved],
                    "baseline_a": pr.baseline_a,
                    "loaded_a": pr.loaded_a,
                    "rise_a": pr.rise_a,
                    "others_max_rise_a": pr.others_max_rise_a,
                    "threshold_a": c.opt.threshold_a,
                },
                "interlock": {"result": pr.interlock, "detail": pr.interlock_detail},
                "reading": pr.final,
            }
        )
    buses = []
    for name, link in c.links.items():
        buses.append(
            {
                "bus": name,
                "port": link.port,
                "line": str(c.bus_lines[name]),
                "devices": [
                    {
                        "address": d.address,
                        "line": str(d.line),
                        "profile": d.profile,
                        "confidence": d.confidence,
                        "serial": d.serial,
                        "collision": d.collision,
                    }
                    for d in c.devices
                    if d.bus == name
                ],
                "stats": link.stats.as_dict(),
            }
        )
    data: dict[str, Any] = {
        "v": RECORD_VERSION,
        "by": c.opt.who,
        "t": t,
        "gateway": gateway["id"],
        "site": gateway["site"],
        "kid": kid,
        "verdict": c.verdict,
        "piles": piles,
        "faults": [dataclasses.asdict(f) for f in c.faults],
        "notes": c.notes,
        "buses": buses,
    }
    if site_path is not None and site_path.exists():
        data["site_file_sha256"] = envelope.sha256_hex(site_path.read_bytes())
    return data


def _json_safe(obj: Any) -> Any:
    """Floats are kept as decimal text-safe numbers; everything else JSON already."""
    return json.loads(json.dumps(obj, ensure_ascii=False))


def sign_record(data: dict[str, Any], gw: str, site: str, key: Any, t: int, tsync: str) -> str:
    """The record as a JWS with the device key: the telemetry envelope, unchained (no seq,
    no prev: commissioning happens before or beside the gateway's chain), kind
    `commissioning`, epoch 0."""
    body = {
        "v": envelope.PAYLOAD_VERSION,
        "gw": gw,
        "site": site,
        "epoch": 0,
        "t": t,
        "tsync": tsync,
        "kind": RECORD_KIND,
        "data": _json_safe(data),
    }
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    jws, _ = envelope.sign_compact(envelope.header_b64(key.kid), payload, key.sign_raw)
    return jws


def _tsync() -> str:
    return "ntp" if Path("/run/systemd/timesync/synchronized").exists() else "none"


def topic(cfg: dict[str, Any]) -> str:
    gw = cfg["gateway"]
    return f"{cfg['mqtt'].get('prefix', 'pilegate/v1')}/{gw['site']}/{gw['id']}/{RECORD_KIND}"


# ------------------------------------------------------------------------------- CLI


def _parse_bus_ports(items: list[str], cfg: dict[str, Any]) -> dict[str, str]:
    """--bus-port PORT (the only bus) or NAME=PORT (repeatable); default: the site's ports."""
    names = [b["name"] for b in cfg["bus"]]
    out: dict[str, str] = {}
    for item in items:
        name, eq, port = item.partition("=")
        if not eq:
            if len(names) != 1:
                raise ValueError(
                    f"--bus-port {item}: the site has {len(names)} buses ({', '.join(names)}); write NAME=PORT"
                )
            name, port = names[0], item
        if name not in names:
            raise ValueError(f"--bus-port {item}: no bus {name!r} in the site (buses: {', '.join(names)})")
        out[name] = port
    if not out:
        out = {b["name"]: b["port"] for b in cfg["bus"]}
    for name, port in list(out.items()):
        if port.startswith("tcp://"):
            raise ValueError(
                f"bus {name}: {port} is Modbus TCP; commissioning scans RS-485 directly: plug a USB-RS-485 "
                "adapter into the bus and pass --bus-port NAME=/dev/ttyUSB0 (or rtu+tcp:// for a transparent "
                "converter)"
            )
        if port.startswith("rtu+tcp://"):
            out[name] = "socket://" + port[len("rtu+tcp://") :]
    return out


def main(args: Any, ask: Callable[[str], str] | None = input, wait: Callable[[float], None] = time.sleep) -> int:
    import tomllib

    from pilegate import keys, siteconfig

    site_path = Path(args.site)
    site, problems = siteconfig.load_site(site_path)
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{site_path}: {len(problems)} problem(s); run 'pilegate check {site_path}'", file=sys.stderr)
        return 2
    cfg = site.config
    try:
        ports = _parse_bus_ports(args.bus_port or [], cfg)
        opts = Options(
            lines=[Line.parse(x) for x in args.lines.split(",")] if args.lines else None,
            addresses=parse_addresses(args.addresses),
            threshold_a=args.threshold,
            settle_s=args.settle,
            who=args.by or getpass.getuser(),
        )
    except ValueError as exc:
        print(f"pilegate commission: {exc}", file=sys.stderr)
        return 2
    plan = None
    if args.plan:
        try:
            plan = _flatten(tomllib.loads(Path(args.plan).read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            print(f"{args.plan}: cannot read the plan file: {exc}", file=sys.stderr)
            return 2
    data_dir = Path(args.data_dir or cfg["gateway"]["data_dir"])
    try:
        key, _ = keys.load_or_create(data_dir)
    except (keys.KeyFileError, OSError) as exc:
        print(f"pilegate commission: the device key in {data_dir}: {exc}", file=sys.stderr)
        return 2
    links = {
        name: RtuLink(port, timeout_s=args.timeout_ms / 1000, patient_timeout_s=args.answer_timeout_ms / 1000)
        for name, port in ports.items()
    }
    prompter = Prompter(yes=args.yes, plan=plan, ask=None if (args.yes or plan) else ask)
    relays = _board_relays(cfg)
    c = Commissioning(cfg, links, prompter, wait, opts, relays=relays)
    try:
        c.run(site_path if not args.no_write else None)
    except LinkError as exc:
        print(f"pilegate commission: {exc}", file=sys.stderr)
        return 2
    except NoAnswer as exc:
        print(f"pilegate commission: the plan file has no answer for {exc.args[0]!r}", file=sys.stderr)
        return 2
    finally:
        for link in links.values():
            link.close()
    t = int(time.time())
    data = record_data(c, site_path, cfg["gateway"], key.kid, t)
    jws = sign_record(data, cfg["gateway"]["id"], cfg["gateway"]["site"], key, t, _tsync())
    out_dir = Path(args.out or f"commissioning-{cfg['gateway']['id']}-{time.strftime('%Y%m%d-%H%M%S')}")
    from . import commission_report

    paths = store(out_dir, data_dir, jws, data)
    paths += commission_report.write_all(out_dir, data)
    print(f"verdict: {c.verdict.upper()} ({len(c.faults)} fault(s))")
    for f in c.faults:
        print(f"  - {f.text}")
    print("record and report:")
    for path in paths:
        print(f"  {path}")
    if args.publish:
        err = publish(cfg, jws)
        print(f"published on {topic(cfg)}" if err is None else f"not published: {err}")
    return 0 if c.verdict == "pass" else 1


def _board_relays(cfg: dict[str, Any]) -> Any:
    """The board's relay outputs when a pile is interlocked by one and this is the gateway
    (pilegate.gpio on a Pi), else None: on a laptop the relay piles are load-tested by hand.
    Every relay pile is switched on first, so a pile tested by hand has power."""
    from pilegate import gpio

    users = [p for p in cfg["pile"] if p.get("relay") and not p.get("coil")]
    board = cfg.get("board_def") or {}
    if not users or not board.get("relay"):
        return None
    try:
        relays = gpio.BoardGpio(board)
    except gpio.GpioUnavailable as exc:
        print(f"note: the board's relays are not reachable here ({exc}): relay piles are tested by hand")
        return None
    except OSError as exc:  # lines held by a running gateway: stop it first
        print(f"note: the board's relays are busy ({exc}); stop the gateway (systemctl stop pilegate) to use them")
        return None
    for p in users:
        relays.set(p["relay"], True)
    return relays


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def store(out_dir: Path, data_dir: Path, jws: str, data: dict[str, Any]) -> list[Path]:
    """Keep the signed record next to the report and in the gateway's data dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = out_dir / "record.jws"
    rec.write_text(jws + "\n", encoding="ascii")
    js = out_dir / "record.json"
    js.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    kept = Path(data_dir) / "commissioning.jws"
    kept.write_text(jws + "\n", encoding="ascii")
    return [rec, js, kept]


def publish(cfg: dict[str, Any], jws: str, timeout_s: float = 10.0) -> str | None:
    """Publish the record on its topic (QoS 1, retained) with the site's MQTT settings."""
    import ssl
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    m = cfg["mqtt"]
    url = urlparse(m["url"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg['gateway']['id']}-commission")
    if url.scheme == "mqtts":
        ctx = ssl.create_default_context(cafile=m.get("ca_file") or None)
        if m.get("cert_file"):
            ctx.load_cert_chain(m["cert_file"], m.get("key_file"))
        if not m.get("tls_verify", True):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        client.tls_set_context(ctx)
    try:
        client.connect(url.hostname or "localhost", url.port or (8883 if url.scheme == "mqtts" else 1883))
        client.loop_start()
        info = client.publish(topic(cfg), jws.encode(), qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        ok = info.is_published()
    except (OSError, ValueError, RuntimeError, ssl.SSLError) as exc:
        return f"{m['url']}: {exc}"
    finally:
        client.loop_stop()
        client.disconnect()
    return None if ok else f"{m['url']}: no acknowledgement within {timeout_s:.0f} s"


# ------------------------------------------------------------------------------- verify


def verify_record(text: str, keys_path: Path) -> tuple[bool, list[str]]:
    """Check a record JWS against a key register: signature, kind, gateway, fields.

    Returns (valid, lines to print)."""
    from .receiver import KeyRegister, b64url_decode

    try:
        register = KeyRegister.load(keys_path)
    except (OSError, ValueError, KeyError) as exc:
        return False, [f"{keys_path}: cannot load the key register: {exc}"]
    jws = text.strip()
    try:
        h, p, s = jws.split(".")
        header = json.loads(b64url_decode(h))
        body = json.loads(b64url_decode(p))
        sig = b64url_decode(s)
    except ValueError as exc:
        return False, [f"not a JWS compact serialization: {exc}"]
    if header.get("alg") != "ES256":
        return False, [f"header alg {header.get('alg')!r}: only ES256 is accepted"]
    if not register.verify(header.get("kid"), body.get("gw"), (h + "." + p).encode(), sig):
        return False, [
            f"bad signature: kid {header.get('kid')} is not registered for gateway {body.get('gw')!r}, "
            "or the record was altered"
        ]
    if body.get("kind") != RECORD_KIND:
        return False, [f"kind {body.get('kind')!r}: not a commissioning record"]
    data = body.get("data") or {}
    missing = [k for k in ("by", "t", "gateway", "kid", "verdict", "piles", "buses") if k not in data]
    if missing or data.get("gateway") != body.get("gw") or data.get("kid") != header.get("kid"):
        return False, [f"signed, but malformed: missing {missing}" if missing else "signed, but gateway/kid disagree"]
    lines = [
        f"commissioning record of gateway {body['gw']} (site {body['site']}): signature valid, "
        f"kid {header['kid'][:16]}...",
        f"by {data['by']} at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(data['t']))}: verdict "
        f"{str(data['verdict']).upper()}",
    ]
    for p in data["piles"]:
        m = p.get("meter") or {}
        lines.append(
            f"  {p['pile']}: {p['verdict']}; meter {m.get('bus')} address {m.get('address')} {m.get('profile')} "
            f"serial {m.get('serial') or '-'}; interlock {p['interlock']['result']}"
        )
    for f in data.get("faults", []):
        lines.append(f"  fault: {f['text']}")
    return True, lines
