"""The HIL rig itself (docs/hil.md): the scenario format, the shared clock, the serial DUT up to
the hardware (pseudo-terminals standing in for the board's console and RS-485 adapter), and the
report, including the screenshot in docs/hil.md made from a real run."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilecore import modbus
from pilegate import siteconfig
from pilehil import sitesim
from pilehil.clock import SiteClock
from pilehil.scenario import ScenarioError, load, load_all, seconds
from piletools.rig import expect, report
from piletools.rig.duts import DutContext, RigFile, SerialDut, pty_pair
from piletools.rig.runner import Message, Run

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"


def test_times_are_read_as_site_seconds():
    assert seconds("00:45:00") == 2700 and seconds("01:00") == 60 and seconds(90) == 90
    assert seconds("-00:05:00") == -300
    for bad in ("1h", "00:xx", True, -1, 1.5):
        with pytest.raises(ValueError):
            seconds(bad)


def test_every_scenario_loads_and_names_only_what_its_site_has():
    scenarios = load_all(SCENARIOS)
    assert len(scenarios) >= 14
    for sc in scenarios:
        site, problems = siteconfig.load_site(sc.site)
        assert site is not None, problems
        bays = {b["id"] for b in site.config.get("bay", [])}
        piles = {p["id"] for p in site.config["pile"]}
        for v in sc.vehicles:
            assert v.bay in bays, f"{sc.id}: vehicle in unknown bay {v.bay}"
        for a in sc.actions:
            for key in ("pile", "bay"):
                if key in a.args:
                    assert a.args[key] in (piles if key == "pile" else bays), f"{sc.id}: {a.do} {a.args}"
            assert 0 <= a.t <= sc.duration, f"{sc.id}: {a.do} at {a.t} is outside the timeline"
        assert sum(len(v) for v in sc.expect.values()) >= 2, f"{sc.id} expects too little"
        assert any(sc.smoke for sc in scenarios)


def test_a_broken_scenario_lists_every_problem_with_its_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[scenario]
title = "x"
site = "nowhere.toml"
start = "2026-06-01 08:00"
duration = "1h"
speeed = 3

[[vehicle]]
bay = "B01"
arrive = "00:10:00"
leave = "00:05:00"

[[at]]
t = "00:01:00"
do = "meter.swap"
pile = "P01"

[[at]]
t = "00:02:00"
do = "meter.explode"

[expect]
evnt = []
"""
    )
    with pytest.raises(ScenarioError) as e:
        load(bad)
    keys = [k for k, _ in e.value.problems]
    for key in (
        "scenario.speeed",
        "scenario.site",
        "scenario.start",
        "scenario.duration",
        "vehicle[0]",
        "at[0].serial",
        "at[1].do",
        "expect.evnt",
    ):
        assert key in keys, (key, e.value.problems)
    assert "nowhere.toml" in str(e.value) and "HH:MM:SS" in str(e.value)


def test_the_site_clock_is_the_same_in_every_process():
    clock = SiteClock(1_780_000_000, speed=120.0)
    env = clock.env()
    again = SiteClock.parse(env)
    assert (again.start, again.speed, again.t0) == (clock.start, clock.speed, clock.t0)
    # another process computes the same site time from the environment alone
    code = (
        "import os; from pilehil.clock import SiteClock; print(SiteClock.parse(os.environ['C']).real_at(1_780_000_600))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, C=env), capture_output=True, text=True)
    assert float(out.stdout) == pytest.approx(clock.t0 + 5.0)
    with pytest.raises(ValueError, match="speed"):
        SiteClock.parse("start=1,t0=2")


@pytest.mark.slow
def test_pilegate_run_refuses_a_bad_hil_clock_without_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pilegate.cli", "run", str(SCENARIOS / "sites" / "four-bays.toml")],
        env=dict(os.environ, PILEGATE_HIL_CLOCK="start=1,speed=0,t0=3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "speed must be > 0" in out.stderr and "Traceback" not in out.stderr


class FakeBoard:
    """The board's side of the bench, on pseudo-terminals: a console that answers like the
    ESP32's (prompt, `keys`) and a UART on the RS-485 adapter's other end."""

    def __init__(self) -> None:
        self.console_master, self.console_path, self._cs = pty_pair()
        self.bus_master, self.bus_path, self._bs = pty_pair()
        key = ec.generate_private_key(ec.SECP256R1())
        self.pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.lines: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        buf = b""
        while not self._stop:
            if not select.select([self.console_master], [], [], 0.05)[0]:
                continue
            buf += os.read(self.console_master, 1024)
            while b"\r" in buf:
                line, _, buf = buf.partition(b"\r")
                text = line.decode().strip()
                self.lines.append(text)
                answer = self.pem.replace("\n", "\r\n") + "kid 1234\r\n" if text == "keys" else ""
                os.write(self.console_master, (answer + "pilegate> ").encode())

    def modbus(self, request: bytes, want: int, timeout: float = 5.0) -> bytes:
        """Send a request on the board's RS-485 UART and read `want` reply bytes."""
        os.write(self.bus_master, request)
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            if select.select([self.bus_master], [], [], 0.05)[0]:
                got += os.read(self.bus_master, 256)
        return got

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for fd in (self.console_master, self._cs, self.bus_master, self._bs):
            os.close(fd)


@pytest.mark.slow
def test_the_serial_dut_up_to_the_hardware(tmp_path):
    """Flash and power commands, the compiled site, the console dialogue, the key, and the
    simulated meters answering on the board's RS-485 adapter, all on pseudo-terminals."""
    board = FakeBoard()
    log = tmp_path / "bench.log"
    rig_file = tmp_path / "bench.toml"
    rig_file.write_text(
        f"""[rig]
console = "{board.console_path}"
bus = "{board.bus_path}"
power_on = "sh -c 'echo on >> {log}'"
power_off = "sh -c 'echo off >> {log}'"
flash = "sh -c 'echo flash {{config}} >> {log}'"
boot_s = 5
"""
    )
    sc = load(SCENARIOS / "meter-swapped.toml")
    site, _ = siteconfig.load_site(sc.site)
    sim, _ = sitesim.build(site.config, scenario=False)
    endpoints = sim.start()
    dut = SerialDut(board.console_path, rig=RigFile.load(rig_file))
    try:
        ctx = DutContext(
            sc.site,
            endpoints,
            "mqtt://192.0.2.1:1883",
            tmp_path / "cmd.pub.pem",
            tmp_path,
            SiteClock(sc.start),
            tmp_path / "data",
        )
        dut.prepare(ctx)
        compiled = (tmp_path / "config.json").read_text()
        assert '"port":"uart2"' in compiled.replace(" ", "") and "esp32-wrover-e-max3485" in compiled
        dut.start()
        assert dut.public_key() == board.pem
        assert "keys" in board.lines
        # the board reads meter P01's serial number through the adapter: the simulator answers
        prof = site.config["profiles"]["eastron-sdm120"]
        ident = prof["identity"]
        fc = ident.get("function", 3)
        count = {"u16": 1, "u32": 2, "u64": 4}.get(ident.get("type"), ident.get("count", 2))
        req = modbus.read_request(1, fc, ident["register"], count)
        reply = board.modbus(bytes(req), 5 + 2 * count)
        code, regs = modbus.parse_read_response(reply, 1, fc, count)
        assert code == modbus.OK and regs, reply
        assert dut.bridge is not None and dut.bridge.bytes[0] > 0 and dut.bridge.bytes[1] > 0
        dut.power_cut()
        assert log.read_text().splitlines()[0].startswith("flash ") and log.read_text().splitlines()[1:] == [
            "on",
            "off",
        ]
    finally:
        dut.stop()
        sim.stop()
        board.close()


def _fake_run(tmp_path: Path) -> Run:
    sc = load(SCENARIOS / "fuel-car-blocks-bay.toml")
    run = Run(sc, "pi", tmp_path, speed=120.0, wall_s=30.0)
    run.samples = [
        {"t": t, "piles": {"P01": 0, "P02": 0}, "bays": {"B02": 1 if 120 <= t < 2520 else 0}, "main_w": 400}
        for t in range(-300, 3000, 30)
    ]
    rec = {
        "type": "occupancy",
        "bay": "B02",
        "pile": "P02",
        "arrival": sc.start + 120,
        "departure": sc.start + 2520,
        "classification": "fuel_car",
        "confirmed": False,
        "fee_fen": 1500,
        "billable_s": 2400,
    }
    ev = {"type": "bay.fuel_suspected", "bay": "B02", "t": sc.start + 1020, "arrival": sc.start + 120}
    run.messages = [
        Message(sc.start + 1030, "accepted", "event", 5, {"seq": 5, "data": {"events": [ev]}}, []),
        Message(sc.start + 2600, "accepted", "billing", 9, {"seq": 9, "data": rec}, []),
    ]
    run.receiver_clean = True
    run.actions = [(600, "meter.silent", "pile=P04")]
    return run


def test_a_failed_expectation_reads_from_the_report_alone(tmp_path):
    run = _fake_run(tmp_path)
    checks = expect.judge(run)
    failed = [c for c in checks if not c.ok]
    # fee 1500 instead of 1000: the record, and the bay.left event that was never sent
    assert sorted(c.kind for c in failed) == ["event", "occupancy"]
    occ = next(c for c in failed if c.kind == "occupancy")
    assert "fuel_car fee 1500 fen, billable 2400 s" in occ.detail
    page = report.write_page(tmp_path, run, checks)
    text = page.read_text()
    assert "<svg" in text and "FAIL" in text and "fee 1500 fen" in text and "bay.fuel_suspected" in text
    assert "meter.silent" in text and "fuel_car 15.00" in text
    rows = [
        {"scenario": "x", "title": "t", "dut": "pi", "status": "FAIL", "wall_s": 60},
        {"scenario": "y", "title": "t", "dut": "pi", "status": "PASS", "wall_s": 30},
    ]
    text = report.write_index(tmp_path, rows).read_text()
    # the summary: one row per DUT with its count per status and the summed wall time
    assert '<tr><td>pi</td><td class="pass">1</td><td class="fail">1</td><td class="">0</td>' in text
    assert "<td>90 s</td>" in text


@pytest.mark.slow
def test_report_screenshot(tmp_path):
    """The screenshot in docs/hil.md: the smoke scenario's page from a real run on pi."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    page = ROOT / "build" / "hil" / "ev-charges-and-leaves--pi.html"
    if chromium is None or not page.exists():
        pytest.skip("needs headless Chromium (apt-get install chromium) and a run of the smoke scenario on pi")
    out = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={out}",
            "--window-size=1180,900",
            "--hide-scrollbars",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.exists() and out.stat().st_size > 10_000
    if os.environ.get("PILEGATE_UPDATE_SCREENSHOT"):
        shutil.copy(out, ROOT / "docs" / "hil-report.png")


def test_a_bus_with_a_stray_master_is_recognised_at_the_start(tmp_path):
    """No meter answered during the lead and the DUT reported errors: the attempt is abandoned
    (and run once more by runner.run); one answering meter is enough to go on."""
    from piletools.rig.duts import make_dut
    from piletools.rig.runner import BusDisturbed, Runner

    sc = load(SCENARIOS / "meter-swapped.toml")
    r = Runner(sc, make_dut("pi"), tmp_path)
    errors = [{"type": "meter.comm_error", "pile": p, "t": sc.start - 200, "reason": "timeout"} for p in ("P01", "P02")]
    r.run.messages = [Message(sc.start - 100, "accepted", "event", 2, {"data": {"events": errors}}, [])]
    with pytest.raises(BusDisturbed, match="no meter answered"):
        r._check_bus()
    ok = {"type": "meter.verified", "pile": "P03", "t": sc.start - 150}
    r.run.messages.append(Message(sc.start - 90, "accepted", "event", 3, {"data": {"events": [ok]}}, []))
    r._check_bus()


def test_a_real_board_runs_a_shortened_scenario_only_up_to_its_cut(tmp_path):
    """real_board = "shorten": on a real-time DUT the timeline ends at real_board_until, later
    vehicles and actions are left out and `real_board = false` expectations are not judged; a
    simulated DUT runs the whole scenario, and the report says where the real board stopped."""
    from piletools.rig.duts import make_dut
    from piletools.rig.runner import Runner

    sc = load(SCENARIOS / "sensor-stuck-and-flapping.toml")
    real = Runner(sc, make_dut(f"serial:{tmp_path / 'ttyUSB0'}", bus=str(tmp_path / "ttyUSB1")), tmp_path)
    assert real.sc.duration == seconds("00:40:00") < sc.duration
    assert [v.arrive for v in real.sc.vehicles] == [seconds("00:08:00")]
    assert all(a.t < seconds("00:40:00") for a in real.sc.actions) and real.sc.actions
    assert [e["type"] for e in real.sc.expect["event"]] == ["sensor.flapping", "sensor.recovered"]
    assert real.sc.expect["billing"] == []
    assert any(what == "rig.shortened" and "00:40:00" in note for _, what, note in real.run.actions)
    whole = Runner(sc, make_dut("pi"), tmp_path)
    assert whole.sc is sc and len(whole.sc.expect["event"]) == 3 and not whole.run.actions
    # the expectation marked real_board = false is judged on the simulated DUT, never on the board
    assert len(expect.judge(whole.run, final=False)) == len(expect.judge(real.run, final=False)) + 2


def test_a_shortening_that_cuts_a_visit_or_has_no_cut_is_refused_with_its_key(tmp_path):
    site = (SCENARIOS / "sites" / "four-bays.toml").resolve()
    head = f'[scenario]\ntitle = "x"\nsite = "{site}"\nstart = "2026-06-01T08:00:00+08:00"\nduration = "01:00:00"\n'
    visit = '[[vehicle]]\nbay = "B01"\nkind = "ev"\narrive = "00:10:00"\nleave = "00:30:00"\n'
    cases = {
        'real_board = "shorten"\n': "scenario.real_board_until",
        'real_board = "shorten"\nreal_board_until = "00:20:00"\n': "vehicle[0]",
        'real_board = "shorten"\nreal_board_until = "02:00:00"\n': "scenario.real_board_until",
        'real_board_until = "00:40:00"\n': "scenario.real_board_until",
        '[[expect.event]]\ntype = "bay.arrived"\nreal_board = "no"\n': "expect.event[0].real_board",
    }
    for i, (extra, key) in enumerate(cases.items()):
        path = tmp_path / f"s{i}.toml"
        scenario, _, rest = extra.partition("[[")
        path.write_text(head + scenario + visit + ("[[" + rest if rest else ""))
        with pytest.raises(ScenarioError) as e:
            load(path)
        assert key in [k for k, _ in e.value.problems], (extra, e.value.problems)
