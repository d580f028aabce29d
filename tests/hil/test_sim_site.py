"""The simulated site end to end: pymodbus masters on ptys and TCP read what the meters
hold, every fault is visible to a plain client, bus statistics are exact, start/stop is
clean."""

import os
import threading
import time
from fractions import Fraction

import pytest
import serial
from pymodbus.exceptions import ModbusIOException

from pilehil.clock import ManualClock
from pilehil.load import ConstantLoad
from pilehil.probe import ReadError, client_for, read_profile_values, read_registers
from pilehil.site import Site
from pilehil.wire import add_crc, crc_ok

QUICK = 0.3  # client timeout (s) where no reply is the expected outcome


def profile_1p():
    """DDSU666-like: holding registers, u32/s32/u16 with scales, BCD serial."""
    return {
        "id": "test-1p",
        "phases": 1,
        "function": 3,
        "byte_order": "big",
        "word_order": "big",
        "response_ms": 20,
        "values": {
            "energy_import": {"register": 0x0100, "type": "u32", "scale": 0.01, "unit": "kWh"},
            "power": {"register": 0x0010, "type": "s32", "scale": 0.1, "unit": "W"},
            "voltage": {"register": [0x0000], "type": "u16", "scale": 0.1, "unit": "V"},
            "current": {"register": [0x0001], "type": "u16", "scale": 0.001, "unit": "A"},
            "frequency": {"register": 0x0002, "type": "u16", "scale": 0.01, "unit": "Hz"},
            "power_factor": {"register": 0x0003, "type": "s16", "scale": 0.001, "unit": ""},
        },
        "identity": {"kind": "serial", "register": 0x4000, "type": "bcd", "count": 2, "function": 3},
    }


def profile_3p():
    """SDM630-like: input registers of f32 with swapped words, u32 serial in holding."""
    return {
        "id": "test-3p",
        "phases": 3,
        "function": 4,
        "byte_order": "big",
        "word_order": "little",
        "response_ms": 50,
        "values": {
            "energy_import": {"register": 0x0048, "type": "f32", "scale": 1.0, "unit": "kWh"},
            "power": {"register": 0x0034, "type": "f32", "scale": 1.0, "unit": "W"},
            "voltage": {"register": [0x0000, 0x0002, 0x0004], "type": "f32", "scale": 1.0, "unit": "V"},
            "current": {"register": [0x0006, 0x0008, 0x000A], "type": "f32", "scale": 1.0, "unit": "A"},
            "frequency": {"register": 0x0046, "type": "f32", "scale": 1.0, "unit": "Hz"},
            "power_factor": {"register": 0x003E, "type": "f32", "scale": 1.0, "unit": ""},
        },
        "identity": {"kind": "serial", "register": 0xFC00, "type": "u32", "count": 2, "function": 3},
    }


def check_values(read, meter):
    truth = meter.values()
    assert read["serial"] == meter.serial
    assert read["energy_import"] == pytest.approx(truth["energy_import"], abs=0.01)
    assert read["power"] == pytest.approx(truth["power"], abs=0.1)
    assert read["voltage"] == pytest.approx(truth["voltage"], abs=0.1)
    assert read["current"] == pytest.approx(truth["current"], abs=0.001)
    assert read["frequency"] == pytest.approx(truth["frequency"], abs=0.01)
    assert read["power_factor"] == pytest.approx(truth["power_factor"], abs=0.001)


@pytest.fixture
def clock():
    return ManualClock(0.0)


@pytest.fixture
def site(clock):
    s = Site(clock=clock)
    s.add_bus("rtu", "pty", baud=9600)
    s.add_bus("tcp", "tcp")
    s.add_bus("rtutcp", "rtu+tcp")
    for bus in ("rtu", "tcp", "rtutcp"):
        s.add_meter(bus, 1, profile_1p(), "12345678", load=ConstantLoad(7000, phases=1), energy_wh=1_000)
        s.add_meter(bus, 2, profile_3p(), "87654321", load=ConstantLoad(11000, phases=3), energy_wh=250_000)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def clients(site):
    opened = {bus: client_for(ep, timeout=2.0) for bus, ep in site.endpoints.items()}
    yield opened
    for c in opened.values():
        c.close()


@pytest.mark.parametrize("bus", ["rtu", "tcp", "rtutcp"])
def test_served_values_match_truth(site, clients, clock, bus):
    clock.advance(2 * 3600 + 17.5)
    for address, profile in ((1, profile_1p()), (2, profile_3p())):
        meter = site.meter(bus, address)
        read = read_profile_values(clients[bus], profile, address)
        check_values(read, meter)
    assert site.meter(bus, 1).energy_wh == 1_000 + 7000 * 2 + 7000 * 17.5 // 3600
    assert site.meter(bus, 2).energy_wh == 250_000 + 22_000 + int(11000 * 17.5 // 3600)


def test_endpoints(site):
    eps = site.endpoints
    assert eps["rtu"].startswith("/dev/pts/")
    assert eps["tcp"].startswith("tcp://127.0.0.1:")
    assert eps["rtutcp"].startswith("rtu+tcp://127.0.0.1:")


def test_unmapped_registers_read_zero_or_exception(clock):
    with Site(clock=clock) as site:
        site.add_bus("b", "pty")
        site.add_meter("b", 1, profile_1p(), "1")
        site.add_meter("b", 2, profile_1p(), "2", unmapped="exception")
        c = client_for(site.start()["b"])
        try:
            assert read_registers(c, 3, 0x0100, 4, 1)[2:] == [0, 0]
            with pytest.raises(ReadError) as e:
                read_registers(c, 3, 0x0100, 4, 2)
            assert e.value.code == 2
            assert len(read_registers(c, 3, 0x0100, 2, 2)) == 2
            with pytest.raises(ReadError) as e:  # far from any register: exception either way
                read_registers(c, 3, 0x5000, 2, 1)
            assert e.value.code == 2
            with pytest.raises(ReadError) as e:  # measurement registers are read-only
                rr = c.write_register(0x0002, 1, device_id=1)
                raise ReadError("write", getattr(rr, "exception_code", None))
            assert e.value.code == 2
        finally:
            c.close()


def test_no_reply_and_unknown_address(site, clock):
    c = client_for(site.endpoints["rtu"], timeout=QUICK)
    try:
        site.meter("rtu", 1).set_no_reply()
        with pytest.raises(ModbusIOException):
            read_registers(c, 3, 0x0100, 2, 1)
        assert read_registers(c, 3, 0xFC00, 2, 2) == [0x7FB1, 0x0539]  # 87654321, words swapped
        with pytest.raises(ModbusIOException):
            read_registers(c, 3, 0x0100, 2, 9)  # nobody at 9
        site.meter("rtu", 1).set_no_reply(False)
        assert len(read_registers(c, 3, 0x0100, 2, 1)) == 2
        assert site.bus_stats("rtu").unanswered == 2
    finally:
        c.close()


def test_cable_cut(site):
    rtu = client_for(site.endpoints["rtu"], timeout=QUICK)
    tcp = client_for(site.endpoints["tcp"], timeout=QUICK)
    try:
        site.cut_cable("rtu")
        site.cut_cable("tcp")
        for address in (1, 2):
            with pytest.raises(ModbusIOException):
                read_registers(rtu, 3, 0xFC00 if address == 2 else 0x4000, 2, address)
            with pytest.raises(ReadError) as e:  # the TCP gateway says its target is silent
                read_registers(tcp, 3, 0x4000, 2, address)
            assert e.value.code == 0x0B
        site.cut_cable("rtu", False)
        site.cut_cable("tcp", False)
        assert read_registers(rtu, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
        assert read_registers(tcp, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
    finally:
        rtu.close()
        tcp.close()


def test_corrupted_crc_reaches_the_master(site):
    site.meter("rtu", 1).set_corrupt_crc()
    request = add_crc(bytes([1, 3, 0x40, 0x00, 0x00, 0x02]))
    with serial.Serial(site.endpoints["rtu"], 9600, timeout=2.0) as port:
        port.write(request)
        reply = port.read(9)
    assert len(reply) == 9 and reply[:7] == bytes([1, 3, 4, 0x12, 0x34, 0x56, 0x78])
    assert not crc_ok(reply) and crc_ok(reply[:7] + bytes(b ^ 0xFF for b in reply[7:]))
    c = client_for(site.endpoints["rtu"], timeout=QUICK)
    try:
        with pytest.raises(ModbusIOException):  # pymodbus drops the frame
            read_registers(c, 3, 0x4000, 2, 1)
        site.meter("rtu", 1).set_corrupt_crc(False)
        assert read_registers(c, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
    finally:
        c.close()
    assert site.bus_stats("rtu").corrupted == 2


def test_corrupted_crc_behind_tcp_gateway(site, clients):
    site.meter("tcp", 2).set_corrupt_crc()
    with pytest.raises(ReadError) as e:
        read_registers(clients["tcp"], 4, 0x0034, 2, 2)
    assert e.value.code == 0x0B
    site.meter("rtutcp", 2).set_corrupt_crc()
    c = client_for(site.endpoints["rtutcp"], timeout=QUICK)
    try:
        with pytest.raises(ModbusIOException):
            read_registers(c, 4, 0x0034, 2, 2)
    finally:
        c.close()


def wait_for_input(port_client, deadline_s=5.0):
    """Drain a late reply from a serial client's buffer (deadline only against hangs)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not port_client.socket.in_waiting:
        time.sleep(0.01)
    return port_client.socket.read(port_client.socket.in_waiting)


def test_late_reply(site):
    meter = site.meter("rtu", 1)
    meter.set_late_reply(200)
    patient = client_for(site.endpoints["rtu"], timeout=5.0)
    try:
        assert read_registers(patient, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
    finally:
        patient.close()
    meter.set_late_reply(1500)
    hasty = client_for(site.endpoints["rtu"], timeout=0.1)
    try:
        with pytest.raises(ModbusIOException):
            read_registers(hasty, 3, 0x4000, 2, 1)
        late = wait_for_input(hasty)
        assert late == add_crc(bytes([1, 3, 4, 0x12, 0x34, 0x56, 0x78]))
    finally:
        hasty.close()
    meter.set_late_reply(0)
    stats = site.bus_stats("rtu")
    assert stats.late == 2 and stats.replies == 2
    assert stats.wire_time >= Fraction(1700 + 2 * 20, 1000)


@pytest.mark.parametrize("bus", ["rtu", "tcp", "rtutcp"])
def test_exception_faults(site, clients, bus):
    c = clients[bus]
    meter = site.meter(bus, 2)
    meter.add_exception(4)  # every read
    with pytest.raises(ReadError) as e:
        read_registers(c, 3, 0xFC00, 2, 2)
    assert e.value.code == 4
    meter.clear_exceptions()
    meter.add_exception(6, start=0x0046, end=0x0049, function=4)
    with pytest.raises(ReadError) as e:
        read_registers(c, 4, 0x0040, 10, 2)
    assert e.value.code == 6
    assert len(read_registers(c, 4, 0x0034, 2, 2)) == 2  # outside the range
    assert len(read_registers(c, 3, 0xFC00, 2, 2)) == 2  # other function
    meter.clear_exceptions()
    assert len(read_registers(c, 4, 0x0040, 10, 2)) == 10


@pytest.mark.parametrize("code", [2, 3])
def test_block_size_limit(site, clients, code):
    meter = site.meter("rtu", 2)
    meter.set_block_limit(40, code=code)
    assert len(read_registers(clients["rtu"], 4, 0x0000, 40, 2)) == 40
    with pytest.raises(ReadError) as e:
        read_registers(clients["rtu"], 4, 0x0000, 41, 2)
    assert e.value.code == code
    meter.set_block_limit(None)
    assert len(read_registers(clients["rtu"], 4, 0x0000, 41, 2)) == 41


def test_swap_reset_freeze_seen_by_client(site, clients, clock):
    c = clients["tcp"]
    p = profile_1p()
    meter = site.meter("tcp", 1)
    clock.advance(3600)
    assert read_profile_values(c, p, 1)["energy_import"] == pytest.approx(8.0)
    meter.swap("99990001", energy_wh=42_000)
    read = read_profile_values(c, p, 1)
    assert read["serial"] == "99990001" and read["energy_import"] == pytest.approx(42.0)
    meter.reset_energy()
    assert read_profile_values(c, p, 1)["energy_import"] == 0.0
    clock.advance(1800)
    assert read_profile_values(c, p, 1)["energy_import"] == pytest.approx(3.5)
    meter.freeze()
    clock.advance(3600)
    frozen = read_profile_values(c, p, 1)
    assert frozen["energy_import"] == pytest.approx(3.5)
    assert meter.energy_wh == 10_500
    meter.freeze(False)
    assert read_profile_values(c, p, 1)["energy_import"] == pytest.approx(10.5)


def test_bus_stats_are_exact(clock):
    # 9600 baud, even parity, 1 stop bit: 11 bits per character
    with Site(clock=clock) as site:
        site.add_bus("b", "pty", baud=9600, parity="E", stopbits=1)
        site.add_meter("b", 1, profile_1p(), "1", latency_ms=20)
        site.add_meter("b", 2, profile_3p(), "2", latency_ms=5)
        ep = site.start()["b"]
        c = client_for(ep, timeout=QUICK)  # ptys take no parity setting: see docs
        try:
            read_registers(c, 3, 0x0100, 2, 1)  # request 8 bytes, reply 3+4+2 = 9
            read_registers(c, 4, 0x0000, 12, 2)  # request 8, reply 3+24+2 = 29
            with pytest.raises(ReadError):
                read_registers(c, 4, 0x2000, 1, 2)  # request 8, exception reply 5
            with pytest.raises(ModbusIOException):
                read_registers(c, 3, 0x0100, 2, 7)  # request 8, nobody answers
        finally:
            c.close()
        s = site.bus_stats("b")
    assert (s.requests, s.replies, s.frames) == (4, 3, 7)
    assert s.bytes == 8 * 4 + 9 + 29 + 5 == 75
    assert s.link_bytes == 75
    assert (s.unanswered, s.exceptions, s.bad_requests) == (1, 1, 0)
    char = Fraction(11, 9600)
    gaps = 7 * Fraction(7, 2) * char
    latency = Fraction(20 + 5 + 5, 1000)
    assert s.wire_time == 75 * char + gaps + latency
    assert s.wire_time_s == pytest.approx(0.0859375 + 0.0280729 + 0.030, abs=1e-6)


def test_bus_stats_behind_tcp_gateway(clock):
    with Site(clock=clock) as site:
        site.add_bus("g", "tcp", baud=19200)  # 10 bits per character
        site.add_meter("g", 3, profile_3p(), "3", latency_ms=0)
        c = client_for(site.start()["g"], timeout=QUICK)
        try:
            read_registers(c, 4, 0x0034, 2, 3)
        finally:
            c.close()
        s = site.bus_stats("g")
    assert (s.requests, s.replies, s.bytes) == (1, 1, 8 + 9)
    assert s.link_bytes == (7 + 5) + (7 + 6)  # MBAP header + PDU each way
    assert s.wire_time == Fraction(10, 19200) * (17 + 7)


def test_bad_request_crc_is_ignored(site):
    with serial.Serial(site.endpoints["rtu"], 9600, timeout=QUICK) as port:
        port.write(bytes([1, 3, 0x40, 0x00, 0x00, 0x02, 0x00, 0x00]))
        assert port.read(1) == b""
        port.write(add_crc(bytes([1, 3, 0x40, 0x00, 0x00, 0x02])))
        assert port.read(9)[:3] == bytes([1, 3, 4])
    s = site.bus_stats("rtu")
    assert (s.requests, s.bad_requests, s.replies) == (2, 1, 1)


def test_realtime_pacing_delays_replies(clock):
    # 1200 baud: a 2-register read costs (8 + 9 + 7) * 10 / 1200 s = 0.2 s of bus time plus
    # 100 ms latency; paced replies cannot arrive sooner than that.
    with Site(clock=clock) as site:
        site.add_bus("slow", "pty", baud=1200, realtime=True)
        site.add_meter("slow", 1, profile_1p(), "1", latency_ms=100)
        c = client_for(site.start()["slow"], baud=1200, timeout=5.0)
        try:
            t0 = time.monotonic()
            read_registers(c, 3, 0x0100, 2, 1)
            elapsed = time.monotonic() - t0
        finally:
            c.close()
        assert site.bus_stats("slow").wire_time == Fraction(24 * 10, 1200) + Fraction(1, 10)
    assert elapsed >= 0.29  # lower bound only: pacing never answers early


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_repeated_start_stop_leaks_nothing(clock):
    fds, threads = fd_count(), threading.active_count()
    for _ in range(5):
        site = Site(clock=clock)
        for transport in ("pty", "tcp", "rtu+tcp"):
            site.add_bus(transport, transport)
            site.add_meter(transport, 1, profile_1p(), "12345678")
        with site:
            for ep in site.start().values():
                c = client_for(ep)
                try:
                    assert read_registers(c, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
                finally:
                    c.close()
        assert not site.running and site.endpoints == {}
    # the same Site object can be started again
    site.start()
    site.stop()
    site.stop()  # idempotent
    assert fd_count() == fds
    assert threading.active_count() == threads


def test_site_rejects_bad_configuration(clock):
    site = Site(clock=clock)
    site.add_bus("b")
    with pytest.raises(ValueError):
        site.add_bus("b")
    with pytest.raises(ValueError):
        site.add_bus("c", transport="udp")
    site.add_meter("b", 1, profile_1p(), "1")
    with pytest.raises(ValueError):
        site.add_meter("b", 1, profile_1p(), "2")
    with pytest.raises(KeyError):
        site.add_meter("nope", 1, profile_1p(), "2")
    with pytest.raises(KeyError):
        site.meter("b", 9)
    with site:
        site.start()
        with pytest.raises(RuntimeError):
            site.add_meter("b", 2, profile_1p(), "2")


@pytest.mark.parametrize("baud, stopbits", [(19200, 1), (9600, 2)])
def test_master_at_wrong_line_settings_hears_nothing(site, baud, stopbits):
    c = client_for(site.endpoints["rtu"], baud=baud, timeout=QUICK)
    c.socket.stopbits = stopbits
    try:
        with pytest.raises(ModbusIOException):
            read_registers(c, 3, 0x4000, 2, 1)
    finally:
        c.close()
    s = site.bus_stats("rtu")
    assert (s.line_errors, s.garbage_bytes, s.requests) == (1, 8, 0)
    c = client_for(site.endpoints["rtu"], baud=9600, timeout=QUICK)
    try:
        assert read_registers(c, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
    finally:
        c.close()


def test_even_parity_master_through_pyserial_socket_url(clock):
    # Linux ptys refuse PARENB, so a serial master configured for even parity is served over
    # rtu+tcp through pyserial's socket:// handler; the timing model still counts 11 bits.
    with Site(clock=clock) as site:
        bus = site.add_bus("e", "rtu+tcp", baud=9600, parity="E")
        site.add_meter("e", 1, profile_1p(), "12345678", latency_ms=0)
        site.start()
        assert bus.serial_url.startswith("socket://127.0.0.1:")
        c = client_for(bus.serial_url, parity="E", timeout=2.0)
        try:
            assert read_registers(c, 3, 0x4000, 2, 1) == [0x1234, 0x5678]
        finally:
            c.close()
        assert site.bus_stats("e").wire_time == Fraction(11, 9600) * (8 + 9 + 7)
    assert bus.serial_url is None
