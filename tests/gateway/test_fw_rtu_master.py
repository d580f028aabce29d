"""The ESP32's own RTU master (firmware/pilefw/rtu.py) against the meter simulator.

The firmware code runs unchanged on CPython; only `machine` is faked (tests/helpers/machine.py):
its UART is a real pyserial port on the simulator's pseudo-terminal, its Pin records levels.
The core scheduler drives the master exactly as the firmware main loop does.
"""

from __future__ import annotations

import machine  # the fake, from tests/helpers
import pytest
from simsite import pile_block

from pilecore import modbus, planner, scheduler
from pilefw import rtu
from pilefw.ticks import ticks_ms
from pilehil import ConstantLoad


def open_master(s, uart_id=2):
    machine.UART_DEVICES[uart_id] = s.sim.endpoints["bus1"]
    machine.EVENTS.clear()
    uart = machine.UART(uart_id, baudrate=9600, bits=8, parity=None, stop=1, tx=17, rx=16)
    de = machine.Pin(4, machine.Pin.OUT)
    return rtu.RtuMaster(uart, de, 9600), uart, de


def drive(s, master, sched, until_ms):
    """The firmware main loop in miniature: ask the scheduler, transact, report."""
    results = []
    t_end = ticks_ms() + until_ms
    while ticks_ms() < t_end:
        txn = sched.next_txn(ticks_ms())
        if txn is None:
            continue
        code, payload, elapsed = master.transact(txn)
        results += sched.complete(txn, ticks_ms(), code, payload, elapsed)
    return results


@pytest.fixture
def site(sim_site):
    body = pile_block("P1", 1, "eastron-sdm120") + pile_block("P2", 2, "chint-dtsu666")
    return sim_site(body, loads={1: ConstantLoad(3500, 1), 2: ConstantLoad(9900, 3)})


def make_sched(s):
    sched = scheduler.BusScheduler("bus1", 9600, "N", 1, 500)
    for pid, addr in (("P1", 1), ("P2", 2)):
        prof = s.cfg["profiles"][s.cfg["pile"][addr - 1]["meter"]["profile"]]
        plan = planner.MeterPlan(prof, char_us=sched.char_us)
        sched.add_device(pid, addr, plan, 60000, prof["response_ms"], prof["min_gap_ms"], prof["timeout_ms"])
    return sched


def test_frame_gap():
    assert rtu.frame_gap_us(9600) == 3645  # 3.5 chars of 10 bits at 9600 baud
    assert rtu.frame_gap_us(115200) == 1750  # fixed by the spec above 19200 baud


def test_reads_every_meter_and_decodes_what_the_simulator_serves(site):
    master, uart, _ = open_master(site)
    sched = make_sched(site)
    results = drive(site, master, sched, 3000)
    polls = {r[1]: r[2] for r in results if r[0] == "poll"}
    assert polls["P1"]["ok"] and polls["P2"]["ok"]
    r1, faults = sched.device("P1").plan.decode(polls["P1"]["blocks"])
    assert faults == [] and abs(r1["power_w"] - 3500) < 1 and r1["energy_wh"] == site.meter(1).energy_wh
    r2, faults = sched.device("P2").plan.decode(polls["P2"]["blocks"])
    assert faults == [] and abs(r2["power_w"] - 9900) < 1 and len(r2["voltage_v"]) == 3
    uart.deinit()


def test_direction_pin_is_high_only_while_transmitting(site):
    master, uart, _ = open_master(site)
    sched = make_sched(site)
    drive(site, master, sched, 1500)
    ev = [e for e in machine.EVENTS if e[0] in ("pin", "write", "flush")]
    assert ev[0] == ("pin", (4, 0))  # receive mode from the start
    body = ev[1:]
    assert len(body) % 4 == 0 and body
    for i in range(0, len(body), 4):
        pin_hi, write, flush, pin_lo = body[i : i + 4]
        assert pin_hi == ("pin", (4, 1)) and write[0] == "write" and flush == ("flush", None)
        assert pin_lo == ("pin", (4, 0))  # released only after flush()
    uart.deinit()


def test_no_reply_is_a_timeout_and_a_bad_crc_is_a_crc_error(site):
    master, uart, _ = open_master(site)
    txn = scheduler.Txn("job", None, 1, 4, 0x48, 2, 300)
    assert master.transact(txn)[0] == modbus.OK
    site.meter(1).set_no_reply()
    code, payload, elapsed = master.transact(txn)
    assert code == modbus.E_TIMEOUT and payload is None and elapsed >= 300
    site.meter(1).clear_faults()
    site.meter(1).set_corrupt_crc()
    assert master.transact(txn)[0] == modbus.E_CRC
    site.meter(1).clear_faults()
    site.meter(1).add_exception(2)
    assert master.transact(txn)[:2] == (modbus.E_EXCEPTION, 2)
    uart.deinit()


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("function", modbus.E_FUNCTION),
        ("unit", modbus.E_ADDRESS),
        ("byte_count", modbus.E_LENGTH),
        ("short", modbus.E_LENGTH),
        ("exception", modbus.E_EXCEPTION),
    ],
)
def test_a_rogue_reply_is_judged_by_the_core_check_as_on_the_pi(site, kind, code):
    # issue 9 defect #3: the same check (pilecore.modbus.check_reply) on both ports
    master, uart, _ = open_master(site)
    site.meter(1).set_rogue(kind)
    for fc, reg, count in ((3, 0xFC00, 2), (4, 0x0000, 2)):  # the serial, and the voltage
        txn = scheduler.Txn("job", None, 1, fc, reg, count, 500)
        got, payload, _ = master.transact(txn)
        assert got == code, (kind, fc, got, payload)
        assert got != modbus.E_EXCEPTION or payload == 4
    site.meter(1).set_rogue(None)
    got, payload, _ = master.transact(scheduler.Txn("job", None, 1, 3, 0xFC00, 2, 500))
    assert got == modbus.OK and len(payload) == 2, (got, payload)  # the real meter again
    uart.deinit()


def test_random_replies_from_a_rogue_are_never_data(site):
    master, uart, _ = open_master(site)
    site.meter(1).set_rogue("random", seed=3)
    codes = [master.transact(scheduler.Txn("job", None, 1, 4, 0x0000, 2, 300))[0] for _ in range(20)]
    assert modbus.OK not in codes, codes
    uart.deinit()


class _Hands:
    """The port's hands the driver may call; nothing to actuate or store in this test."""

    def actuate(self, relay, on):
        pass

    def read_input(self, name):
        return None

    def save(self, name, obj):
        pass

    def log(self, level, text):
        pass


@pytest.mark.parametrize("kind", ["function", "random_data"])
def test_the_esp32_metering_never_meters_a_rogue_and_recovers(sim_site, kind):
    # issue 9 defect #3 on the ESP32's path: RtuMaster -> the core driver -> SiteCore
    from pilecore.envelope import Chain
    from pilecore.gateway import SiteDriver
    from pilecore.site import SiteCore
    from pilefw.metering import Buses

    s = sim_site(pile_block("P1", 1, "eastron-sdm120"), loads={1: ConstantLoad(3000, 1)})
    cfg = s.cfg
    master, uart, _ = open_master(s)
    core = SiteCore(cfg, None, "GW-T1", "")
    chain = Chain("GW-T1", "test-site", "", lambda b: b"", 0)
    ident = {"fw": "", "platform": "esp32", "board": "", "config_hash": "", "kid": "", "pubkey": ""}
    driver = SiteDriver(cfg, core, chain, _Hands(), ident, {"poll_s": 1})
    events = []
    driver.sink = events.append
    ms = [0]  # the main loop's monotonic clock, simulated: backoffs pass in simulated time
    buses = Buses(driver, {"bus1": master}, {}, lambda: ms[0])
    now = 10_000
    s.meter(1).set_rogue(kind, seed=5)
    metered_during = []
    truth = {}  # wall second -> the simulator's energy register then
    for i in range(400):
        if i == 60:
            s.meter(1).set_rogue(None)
            events.append({"type": "test.rogue_gone"})
        truth[now] = s.meter(1).energy_wh
        driver.supervise(now)
        ms[0] = (now - 10_000) * 1000
        for _ in range(50):  # one second of the main loop: every transaction due in it
            if not buses.step(ms[0], now):
                break
            ms[0] += 20
        if i < 60:
            metered_during.append(core.guard.status("P1")["metered"] or core.latest.get("P1") is not None)
        elif core.guard.status("P1")["metered"] and core.guard.piles["P1"].bound == s.meter(1).serial:
            break
        now += 1
        s.clock.advance(1)
    uart.deinit()
    gone = next(i for i, e in enumerate(events) if e["type"] == "test.rogue_gone")
    assert not any(metered_during), "a rogue reply was taken as a reading"
    assert "meter.bound" not in [e["type"] for e in events[:gone]]
    assert core.guard.status("P1")["metered"] and core.guard.piles["P1"].bound == s.meter(1).serial
    assert abs(core.latest["P1"]["energy_wh"] - truth[core.latest["P1"]["t"]]) <= 1
