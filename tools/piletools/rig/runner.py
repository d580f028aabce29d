"""Run one HIL scenario against one DUT and collect what the platform saw (docs/hil.md).

`run(scenario, dut, workdir, broker_url=None)` builds the simulated site on the scenario's site
file (meters, bay sensors, pile controllers, vehicles), a private mosquitto (or uses the given
broker), the reference verifier (piletools.receiver: signatures, chain, seq), prepares and starts
the DUT on the shared site clock, drives the timeline, lets the site settle, stops everything
and returns a `Run`: every accepted message, the truth sampled from the simulator (pile power,
bay presence, charging), the console transcripts, the DUT's log.  Expectations are judged by
piletools.rig.expect; the report is drawn by piletools.rig.report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilecore import commands, envelope
from pilegate import siteconfig
from pilegate.keys import DeviceKey
from pilehil import sitesim
from pilehil.bays import Vehicle
from pilehil.broker import Broker
from pilehil.clock import SiteClock
from pilehil.load import ConstantLoad
from pilehil.scenario import Scenario, for_real_board, hms
from piletools.receiver import KeyRegister, Receiver, Verdict
from piletools.rig.duts import Dut, DutContext, DutError
from piletools.verify import Subscriber

LEAD_S = 300  # site seconds between the DUT's start and 00:00:00: boot, first reads, bindings
SAMPLE_S = 30  # truth sampling period, site seconds


class SkipScenario(Exception):
    """The scenario cannot run with this DUT or rig (the reason says why); not a failure."""


class BusDisturbed(Exception):
    """No meter answered the DUT before 00:00:00: the simulated bus is not the DUT's alone."""


class RigClock:
    """Frozen at `at` while the site is built (so vehicle seconds are whole), then a SiteClock."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.site: SiteClock | None = None

    def __call__(self) -> float:
        return self.site() if self.site is not None else float(self.at)

    def go(self, speed: float) -> SiteClock:
        self.site = SiteClock(self.at, speed)
        return self.site


class Switched:
    """A load that is `before` until `at_ms` and `after` from then on, its energy continuous:
    rewiring at a moment changes what a meter measures from then, not its history."""

    def __init__(self, before: Any, after: Any, at_ms: int) -> None:
        self.before, self.after, self.at_ms = before, after, at_ms

    def power_w(self, t_ms: int) -> int:
        return int((self.before if t_ms < self.at_ms else self.after).power_w(t_ms))

    def phases_at(self, t_ms: int) -> int:
        return int((self.before if t_ms < self.at_ms else self.after).phases_at(t_ms))

    def energy_mj(self, t0_ms: int, t1_ms: int) -> int:
        if t1_ms <= self.at_ms:
            return int(self.before.energy_mj(t0_ms, t1_ms))
        if t0_ms >= self.at_ms:
            return int(self.after.energy_mj(t0_ms, t1_ms))
        return int(self.before.energy_mj(t0_ms, self.at_ms) + self.after.energy_mj(self.at_ms, t1_ms))


@dataclass
class Message:
    """One message the verifier accepted (or refused), with the site time it arrived."""

    arrived: float
    status: str
    kind: str | None
    seq: int | None
    body: dict[str, Any] | None
    problems: list[str]


@dataclass
class Run:
    scenario: Scenario
    dut: str
    workdir: Path
    speed: float = 1.0
    messages: list[Message] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # truth, every SAMPLE_S
    actions: list[tuple[int, str, str]] = field(default_factory=list)  # (rel s, action, note)
    consoles: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    truth: list[dict[str, Any]] = field(default_factory=list)
    receiver_report: str = ""
    receiver_clean: bool = False
    gaps: list[tuple[int, int]] = field(default_factory=list)
    broken_links: list[int] = field(default_factory=list)
    bad_signatures: int = 0
    dut_log: str = ""
    device_pem: str = ""
    wall_s: float = 0.0
    error: str = ""

    def rel(self, t: float) -> float:
        return t - self.scenario.start

    def accepted(self, kind: str | None = None) -> list[Message]:
        return [m for m in list(self.messages) if m.status == "accepted" and (kind is None or m.kind == kind)]

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in self.accepted("event"):
            out += (m.body or {}).get("data", {}).get("events", [])
        return out

    def occupancy(self) -> list[dict[str, Any]]:
        """Occupancy records: billing messages of type "occupancy" (docs/telemetry.md)."""
        return [b for b in self.billing() if b.get("type") == "occupancy"]

    def billing(self) -> list[dict[str, Any]]:
        return [(m.body or {}).get("data", {}) for m in self.accepted("billing")]

    def acks(self) -> list[dict[str, Any]]:
        return [(m.body or {}).get("data", {}) for m in self.accepted("ack")]

    def telemetry(self) -> list[dict[str, Any]]:
        return [(m.body or {}) for m in self.accepted("telemetry")]


class Platform:
    """The platform side: a command key, the reference verifier, a command sender."""

    def __init__(self, workdir: Path, broker_url: str, gw: str, site: str, prefix: str) -> None:
        self.key = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
        self.key_file = workdir / "platform-cmd.pub.pem"
        self.key_file.write_text(self.key.public_pem)
        self.stranger = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
        self.url = broker_url
        self.gw = gw
        self.topic_prefix = f"{prefix}/{site}/{gw}"
        self.sent: dict[str, str] = {}
        self.sub: Subscriber | None = None
        self.receiver: Receiver | None = None

    def listen(self, device_pem: str, on_verdict: Any) -> None:
        reg = KeyRegister()
        reg.add(self.gw, device_pem)
        self.receiver = Receiver(reg)
        self.sub = Subscriber(
            self.receiver,
            self.url,
            f"{self.topic_prefix.rsplit('/', 2)[0]}/+/+/+",
            on_verdict=on_verdict,
            client_id=f"hil-verifier-{os.getpid()}-{id(self) & 0xFFFF:x}",
        ).start()
        deadline = time.monotonic() + 15
        while not self.sub.subscribed.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("the reference verifier could not subscribe to the broker")
            time.sleep(0.02)

    def publish(self, topic: str, payload: bytes | str) -> None:
        host, _, port = self.url.split("://")[1].rpartition(":")
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)  # type: ignore[attr-defined]
        c.connect(host, int(port))
        c.loop_start()
        try:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
        finally:
            c.loop_stop()
            c.disconnect()

    def command(self, now: int, args: dict[str, Any]) -> str:
        """Sign (or mis-sign) and send one command; returns the JWS sent."""
        cid, name = str(args["id"]), str(args["name"])
        how = args.get("key", "platform")
        if how == "replay":
            if cid not in self.sent:
                raise ValueError(f"command {cid!r} replayed before it was sent")
            jws = self.sent[cid]
        else:
            key = self.stranger if how == "stranger" else self.key
            iat = now - int(args.get("age_s", 1))
            jws = commands.make(self.gw, cid, name, dict(args.get("args", {})), iat, iat + 240, key.sign_raw, key.kid)
            if args.get("tamper"):
                h, p, s = jws.split(".")
                body = json.loads(envelope.b64url_decode(p))
                body["args"] = {**body.get("args", {}), **args["tamper"]}
                jws = ".".join((h, envelope.b64url(json.dumps(body).encode()), s))
            self.sent.setdefault(cid, jws)
        self.publish(f"{self.topic_prefix}/cmd", jws)
        return jws

    def stop(self) -> None:
        if self.sub is not None:
            self.sub.stop()


def _provision_esp32_key(data_dir: Path) -> None:
    """Factory provisioning for the ESP32 DUTs: the raw 32-byte P-256 scalar the keystore reads."""
    key = ec.generate_private_key(ec.SECP256R1())
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "device.key"
    path.write_bytes(key.private_numbers().private_value.to_bytes(32, "big"))
    path.chmod(0o600)


def _esp32_pem(data_dir: Path) -> str:
    raw = (data_dir / "device.key").read_bytes()
    key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Runner:
    """One scenario on one DUT; see the module docstring."""

    def __init__(self, scenario: Scenario, dut: Dut, workdir: Path, broker_url: str | None = None) -> None:
        whole = scenario
        if not dut.simulated:  # real time: a "shorten" scenario is cut where it says (docs/hil.md)
            scenario = for_real_board(scenario)
        self.sc = scenario
        self.dut = dut
        self.workdir = workdir
        self.external_broker = broker_url
        self.run = Run(scenario, dut.kind, workdir)
        self._lock = threading.Lock()
        self.mounted = False
        self.finished = False
        self.broker: Broker | None = None
        self.sim: Any = None
        self.platform: Platform | None = None
        self.clock: SiteClock | None = None
        self._flap: tuple[Any, int, int, float] | None = None
        self._restart_at: float | None = None
        if scenario is not whole:
            self._note(0, "rig.shortened", f"a real board stops at {hms(scenario.duration)}: {whole.real_board_note}")

    # ------------------------------------------------------------ set-up

    def _needs(self) -> None:
        kinds = {a.do for a in self.sc.actions}
        if self.external_broker and kinds & {"broker.down", "broker.up"}:
            raise SkipScenario("the scenario switches the broker off: run it with the rig's own broker (no --broker)")
        if kinds & {"disk.fill", "disk.free"} and not self.dut.simulated:
            raise SkipScenario("filling the board's flash needs a special firmware build; not on a real board")
        if kinds & {"disk.fill", "disk.free", "dut.kill", "dut.power_cut"} and not self.dut.flash_on_host:
            raise SkipScenario(
                f"the {self.dut.kind} DUT's flash is not a host directory: it cannot be filled from outside "
                "and does not survive a power cut (a limit of the DUT, not of the port)"
            )
        if not self.dut.simulated and self.sc.real_board == "skip":
            raise SkipScenario(f"not on a real board: {self.sc.real_board_note or 'the scenario says skip'}")

    def _mount_data(self, data: Path) -> None:
        if not self.sc.data_fs_kb:
            return
        data.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={int(self.sc.data_fs_kb)}k,mode=0700", "hil-data", str(data)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SkipScenario(f"a small file system for the data dir needs mount (root): {res.stderr.strip()}")
        self.mounted = True

    def _build_site(self, cfg: dict[str, Any], clock: RigClock) -> None:
        sim, meters = sitesim.build(cfg, clock=clock, scenario=False, jitter_mm=5)
        self.sim, self.meters = sim, meters
        self.pile_meter = {p["id"]: meters[(p["meter"]["bus"], p["meter"]["address"])] for p in cfg["pile"]}
        main = cfg.get("main_meter")
        self.main_meter = meters[(main["bus"], main["address"])] if main else None
        bays = sim.bays
        for v in self.sc.vehicles:
            bay = bays.bay(v.bay)
            off = LEAD_S + int(self.sc.start - LEAD_S - bay.t0)
            c0, c1 = v.charge if v.charge else (None, None)
            kw: dict[str, Any] = {"plate": v.plate, "colour": v.colour}
            if v.kind == "ev":
                kw.update(power_w=v.power_w, phases=1)
            vehicle = Vehicle(
                v.arrive + off,
                v.leave + off,
                kind=v.kind,
                plug_s=None if v.plug is None else v.plug + off,
                unplug_s=None if v.unplug is None else v.unplug + off,
                charge_start_s=None if c0 is None else c0 + off,
                charge_end_s=None if c1 is None else c1 + off,
                **kw,
            )
            bay.add_vehicle(vehicle)

    def setup(self) -> None:
        self._needs()
        sc, wd = self.sc, self.workdir
        if wd.exists():
            shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir(parents=True)
        site, problems = siteconfig.load_site(sc.site)
        if site is None:
            raise DutError(f"scenario site {sc.site} does not check:\n" + "\n".join(map(str, problems)))
        cfg = site.config
        self.cfg = cfg
        if self.external_broker:
            url = self.external_broker
        else:
            self.broker = Broker(wd / "broker", persistence=True).start()
            url = self.broker.url
        gw, site_id = cfg["gateway"]["id"], cfg["gateway"]["site"]
        self.platform = Platform(wd, url, gw, site_id, cfg["mqtt"].get("prefix", "pilegate/v1"))
        self.plate_topic = cfg.get("bays", {}).get("plate_topic", "pilegate/local/plates")
        rig_clock = RigClock(sc.start - LEAD_S)
        if self.dut.bus_transport != "pty":
            # the simulated bus on a TCP port instead of a pseudo-terminal (docs/hil.md)
            cfg = copy.deepcopy(cfg)
            for bus in cfg["bus"]:
                bus["port"] = f"{self.dut.bus_transport}://127.0.0.1:0"
        self._build_site(cfg, rig_clock)
        speed = min(sc.speed, self.dut.max_speed)
        self.run.speed = speed
        endpoints = self.sim.start()
        data = wd / "data"
        self._mount_data(data)
        self.clock = rig_clock.go(speed)
        ctx = DutContext(sc.site, endpoints, url, self.platform.key_file, wd, self.clock, data)
        if self.dut.platform == "esp32" and self.dut.simulated:
            _provision_esp32_key(data)
        self.dut.prepare(ctx)
        pem = _esp32_pem(data) if self.dut.platform == "esp32" and self.dut.simulated else ""
        if self.dut.kind == "pi":
            pem = self.dut.public_key()
        if pem:
            self.run.device_pem = pem
            self.platform.listen(pem, self._verdict)
        self.dut.start()
        if not pem:  # a real board: its key from its console, verifier from the first message seen
            pem = self.dut.public_key()
            self.run.device_pem = pem
            self.platform.listen(pem, self._verdict)
            assert self.platform.receiver is not None
            self.platform.receiver.from_first_seen = True

    def _verdict(self, v: Verdict) -> None:
        now = self.clock() if self.clock else 0.0
        with self._lock:
            self.run.messages.append(Message(now, v.status, v.kind, v.seq, v.body, list(v.problems)))

    # ------------------------------------------------------------ the timeline

    def now_rel(self) -> float:
        assert self.clock is not None
        return self.clock() - self.sc.start

    def _sample(self, rel: float) -> None:
        row: dict[str, Any] = {"t": int(rel), "piles": {}, "bays": {}}
        for pid, m in self.pile_meter.items():
            row["piles"][pid] = int(m.power_w)
        if self.main_meter is not None:
            row["main_w"] = int(self.main_meter.power_w)
        for bid, bay in self.sim.bays.bays.items():
            row["bays"][bid] = 2 if bay.charging() else 1 if bay.present() else 0
        self.run.samples.append(row)

    def _note(self, rel: float, what: str, note: str = "") -> None:
        self.run.actions.append((int(rel), what, note))

    def _sensor(self, bay_id: str) -> Any:
        for s in self.sim.bays.sensors.values():
            if s.bay is not None and s.bay.bay_id == bay_id:
                return s
        raise ValueError(f"bay {bay_id} has no simulated Modbus presence sensor")

    def _restart_later(self, after_s: float) -> None:
        self._restart_at = self.now_rel() + after_s

    def act(self, a: Any) -> None:
        """Perform one timeline action now."""
        rel = self.now_rel()
        args, do = a.args, a.do
        note = ""
        if do == "meter.swap":
            self.pile_meter[args["pile"]].swap(str(args["serial"]), int(args.get("energy_wh", 0)))
        elif do == "meter.reset":
            self.pile_meter[args["pile"]].reset_energy()
        elif do == "meter.silent":
            self.pile_meter[args["pile"]].set_no_reply(bool(args.get("on", True)))
        elif do == "meter.freeze":
            self.pile_meter[args["pile"]].freeze(bool(args.get("on", True)))
        elif do == "wiring.swap":
            a_id, b_id = args["piles"]
            ma, mb = self.pile_meter[a_id], self.pile_meter[b_id]
            at = min(ma.t_ms, mb.t_ms)
            ma.load, mb.load = Switched(ma.load, mb.load, at), Switched(mb.load, ma.load, at)
        elif do == "sensor.freeze":
            self._sensor(args["bay"]).freeze(bool(args.get("on", True)))
        elif do == "sensor.flap":
            self._flap = (self._sensor(args["bay"]), int(args["every_s"]), int(args["until"]), rel)
        elif do == "sensor.release":
            s = self._sensor(args["bay"])
            s.force_mm(None)
            s.freeze(False)
        elif do == "cable.cut":
            self.sim.cut_cable(args["bus"], bool(args.get("on", True)))
        elif do == "main.unmetered":
            m = self.main_meter
            if m is None:
                raise ValueError("main.unmetered: the site has no [main_meter]")
            loads = [self.pile_meter[p["id"]].load for p in self.cfg["pile"]]
            after = sitesim.SumLoad(loads, base_w=400)
            extra = ConstantLoad(int(args["w"]), phases=3)
            after.loads = [*loads, extra]
            m.load = Switched(m.load, after, m.t_ms)
        elif do == "broker.down":
            assert self.broker is not None
            self.broker.stop()
        elif do == "broker.up":
            assert self.broker is not None
            self.broker.start()
        elif do in ("dut.kill", "dut.power_cut"):
            self.dut.power_cut()
            self._restart_later(float(args.get("restart_after_s", 0)))
        elif do == "disk.fill":
            note = self._fill_disk()
        elif do == "disk.free":
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / "data" / "ballast").unlink()
        elif do == "command":
            assert self.platform is not None
            self.run.commands[
                str(args["id"]) + ("" if args.get("key", "platform") == "platform" else "#" + str(args.get("key")))
            ] = self.platform.command(int(self.clock() if self.clock else 0), args)
        elif do == "console":
            self._console(args)
        elif do == "plate":
            bay = self.sim.bays.bay(args["bay"])
            self.sim.bays.plates.inject(bay.camera or "cam", str(args["plate"]), str(args["colour"]))
        self._note(rel, do, note or ", ".join(f"{k}={v}" for k, v in args.items() if k not in ("args", "send")))

    def _fill_disk(self) -> str:
        if not self.mounted:
            raise SkipScenario("disk.fill needs [scenario] data_fs_kb (a small file system for the data dir)")
        path = self.workdir / "data" / "ballast"
        n = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):  # down to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        n += os.write(fd, b"\0" * size)
        finally:
            os.close(fd)
        return f"ballast {n // 1024} KiB: the data file system is full"

    def _console(self, args: dict[str, Any]) -> None:
        sends = args["send"] if isinstance(args["send"], list) else [args["send"]]
        name = str(args["name"])
        try:
            link = self.dut.console()
        except (DutError, TimeoutError, OSError) as exc:
            self.run.consoles[name] = f"(console not available: {exc})"
            return
        try:
            for line in sends:
                try:
                    link.command(str(line))
                except TimeoutError as exc:
                    link.transcript += f"\n(no answer: {exc})\n"
        finally:
            self.run.consoles[name] = link.transcript
            if self.dut.kind == "pi":
                link.close()

    def _publish_plates(self) -> None:
        assert self.platform is not None
        for read in self.sim.bays.plates.poll():
            self.platform.publish(self.plate_topic, json.dumps(read))

    def drive(self) -> None:
        """Run the timeline to its end, then let the site settle (at most `settle`)."""
        from piletools.rig import expect

        sc = self.sc
        pending = list(sc.actions)
        next_sample = float(-LEAD_S)
        self._flap = None
        self._restart_at = None
        flap_state = False
        next_flap = 0.0
        end = sc.duration + sc.settle
        last_check = 0.0
        checked_bus = False
        while True:
            rel = self.now_rel()
            if not checked_bus and rel >= 0:
                checked_bus = True
                self._check_bus()
            if rel >= sc.duration and time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                if rel >= end or all(c.ok for c in expect.judge(self.run, final=False)):
                    break
            while pending and pending[0].t <= rel:
                self.act(pending.pop(0))
            if self._restart_at is not None and rel >= self._restart_at:
                self._restart_at = None
                self.dut.start()
                self._note(rel, "dut.start", f"start {self.dut.starts}")
            if self._flap is not None:
                sensor, every, until, _ = self._flap
                if rel >= until:
                    sensor.force_mm(None)
                    self._flap = None
                elif rel >= next_flap:
                    flap_state = not flap_state
                    sensor.force_mm(200 if flap_state else 2800)
                    next_flap = rel + every
            if rel >= next_sample:
                self._sample(rel)
                next_sample = rel + SAMPLE_S
            self._publish_plates()
            if self.dut.simulated and not self.dut.alive() and self._restart_at is None:
                raise DutError(f"the DUT stopped by itself at {hms(rel)}:\n{self.dut.log()[-3000:]}")
            time.sleep(0.01)

    def _check_bus(self) -> None:
        """Every pile's meter must have answered during the lead time.  If none did and the DUT
        reported communication errors, another master is on the simulated bus: a stray process
        that reopened a recycled pseudo-terminal by its path (the simulator's backend is a pty)."""
        events = [e for e in self.run.events() if isinstance(e.get("t"), int) and e["t"] < self.sc.start]
        answered = {e.get("pile") for e in events if e.get("type") in ("meter.verified", "pile.metered")}
        failed = [e for e in events if e.get("type") in ("meter.comm_error", "meter.offline")]
        if failed and not answered:
            raise BusDisturbed(
                f"no meter answered the DUT during the {LEAD_S} s lead ({len(failed)} communication errors)"
            )

    # ------------------------------------------------------------ tear-down

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        run = self.run
        if self.dut is not None:
            run.dut_log = self.dut.stop()
        if self.platform is not None and self.platform.receiver is not None:
            rec = self.platform.receiver
            deadline = time.monotonic() + 10
            acct = rec.accounts.get(self.platform.gw)
            while acct is not None and acct.gaps() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.platform.stop()
            run.receiver_report, run.receiver_clean = rec.report()
            acct = rec.accounts.get(self.platform.gw)
            if acct is not None:
                run.gaps = acct.gaps()
                run.broken_links = list(acct.broken_links)
                run.bad_signatures = acct.bad_signatures
        if self.sim is not None:
            with contextlib.suppress(Exception):
                run.truth = self.sim.bays.truth()
            self.sim.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.workdir / "data")], capture_output=True)
            self.mounted = False


def run(scenario: Scenario, dut: Dut, workdir: Path, broker_url: str | None = None) -> Run:
    """Run `scenario` on `dut`; SkipScenario (or DutUnavailable) when it cannot run there.
    A run whose simulated bus was disturbed from the start (BusDisturbed) is run once more on a
    fresh site, and the report says so.  Never leaves a process."""
    from piletools.rig.duts import DutUnavailable

    t0 = time.monotonic()
    notes: list[tuple[int, str, str]] = []
    for attempt in (1, 2):
        r = Runner(scenario, dut, workdir, broker_url)
        try:
            r.setup()
            r.drive()
        except (SkipScenario, DutUnavailable):
            r.finish()
            raise
        except BusDisturbed as exc:
            r.finish()
            if attempt == 1:
                notes.append((0, "rig.retry", f"first attempt abandoned: {exc}"))
                continue
            r.run.error = f"BusDisturbed: {exc} (twice)"
        except Exception as exc:  # reported in the run, judged as a failure, never hidden
            r.run.error = f"{type(exc).__name__}: {exc}"
        r.finish()
        break
    r.run.actions[:0] = notes
    r.run.wall_s = time.monotonic() - t0
    return r.run
