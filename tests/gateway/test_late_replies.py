"""A late reply is never the next request's reading (issue 13: ev-overstays on the Pi).

A pile controller (address 50) serves four plug registers 0x10..0x13 with one-register reads
of the same shape; only 0x13 reads 1 (plugged).  A read of 0x12 times out because the device
answers late; its reply (0) then arrives either before the next request is sent (it waits in
the gateway's input: the loop was busy) or while the gateway waits for the reply to the read of
0x13 (the device was still busy).  Before the fix, the Pi's port took that 0 as the reading of
0x13 in both cases (pymodbus: no discard of stale input, no memory of the reply still due).
The ports the gateway uses (`serial_port.bus_port`) must read 1, over a pseudo-terminal, an
RTU-over-TCP converter and Modbus TCP, and the late reply must be counted, not read.
"""

from __future__ import annotations

import asyncio
import select
from typing import Any

import pytest

from pilecore import modbus
from pilecore.scheduler import Txn
from pilegate.serial_port import RawBusPort, bus_port
from pilehil import ManualClock
from pilehil.baydevices import SimPileController
from pilehil.bays import BaySim
from pilehil.site import Site

PLUG_REGS = (0x10, 0x11, 0x12, 0x13)
LATE_MS = 400  # the device answers the read of 0x12 this late
TIMEOUT_MS = 100  # and the gateway gives up on it after this long


@pytest.fixture
def controller_site(request):
    """A simulated bus (`request.param`: its transport) with a pile controller at 50."""
    clock = ManualClock(1000.0)
    site = Site(clock=clock)
    site.add_bus("bus1", transport=request.param)
    ctl = SimPileController(50, clock)
    for i, reg in enumerate(PLUG_REGS):
        ctl.add_connector(BaySim(f"B0{i + 1}", f"P0{i + 1}", clock), 3, reg)
        ctl.force(3, reg, 1 if reg == 0x13 else 0)
    site.add_device("bus1", ctl)
    endpoint = site.start()["bus1"]
    try:
        yield site, ctl, endpoint
    finally:
        site.stop()


def read(reg: int, timeout_ms: int) -> Txn:
    return Txn("poll", None, 50, 3, reg, 1, timeout_ms)


def input_fd(port: Any) -> int:
    """The file descriptor the gateway's port receives on."""
    if isinstance(port, RawBusPort):
        ser = port.ser
        return ser._socket.fileno() if hasattr(ser, "_socket") else ser.fileno()
    return port.client.ctx.transport.get_extra_info("socket").fileno()


async def late_then_next(endpoint: str, ctl: SimPileController, buffered: bool) -> tuple[Any, list]:
    port = bus_port({"name": "bus1", "port": endpoint, "baud": 9600}, {})
    results = []
    try:
        assert await port.connect()
        results.append(await port.perform(read(0x13, 1000)))  # the line works: plugged
        ctl.set_late_reply(LATE_MS)
        results.append(await port.perform(read(0x12, TIMEOUT_MS)))
        ctl.set_late_reply(0)
        if buffered:
            # the gateway's loop is busy elsewhere: the late reply lands in its input, unread
            # (a blocking wait on purpose; a deadline only against hangs)
            assert select.select([input_fd(port)], [], [], 10.0)[0], "the late reply never came"
        results.append(await port.perform(read(0x13, 2000)))
        results.append(await port.perform(read(0x12, 1000)))  # and the line is in step after
    finally:
        port.close()
    return port, results


@pytest.mark.parametrize("controller_site", ["pty", "rtu+tcp", "tcp"], indirect=True)
@pytest.mark.parametrize("when", ["before_the_next_request", "during_the_next_wait"])
def test_a_late_reply_is_not_the_next_reads_reply(controller_site, when):
    _site, ctl, endpoint = controller_site
    port, (first, late, nxt, after) = asyncio.run(late_then_next(endpoint, ctl, when == "before_the_next_request"))
    assert first[:2] == (modbus.OK, [1])
    assert late[0] == modbus.E_TIMEOUT
    assert nxt[:2] == (modbus.OK, [1]), f"the read of 0x13 took the late reply to 0x12: {nxt}"
    assert after[:2] == (modbus.OK, [0])
    if isinstance(port, RawBusPort):
        # discarded before the request, or recognised during the wait: counted either way
        assert port.late.late == 1
        assert (port.stale_bytes > 0) == (when == "before_the_next_request")


@pytest.mark.parametrize("controller_site", ["pty"], indirect=True)
@pytest.mark.parametrize("when", ["before_the_next_request", "during_the_next_wait"])
def test_the_esp32_master_keeps_the_same_rule(controller_site, when):
    """The ESP32's RtuMaster (firmware/pilefw/rtu.py, `machine` faked over the same pty)."""
    import time

    import machine  # the fake, from tests/helpers

    from pilefw.rtu import RtuMaster

    _site, ctl, endpoint = controller_site
    machine.UART_DEVICES[2] = endpoint
    uart = machine.UART(2, baudrate=9600, bits=8, parity=None, stop=1, tx=17, rx=16)
    master = RtuMaster(uart, machine.Pin(4, machine.Pin.OUT), 9600)
    try:
        assert master.transact(read(0x13, 1000))[:2] == (modbus.OK, [1])
        ctl.set_late_reply(LATE_MS)
        assert master.transact(read(0x12, TIMEOUT_MS))[0] == modbus.E_TIMEOUT
        ctl.set_late_reply(0)
        if when == "before_the_next_request":
            end = time.monotonic() + 10.0  # a deadline only against hangs
            while not uart.any():
                assert time.monotonic() < end, "the late reply never came"
                time.sleep(0.005)
        nxt = master.transact(read(0x13, 2000))
        assert nxt[:2] == (modbus.OK, [1]), f"the read of 0x13 took the late reply to 0x12: {nxt}"
        assert master.transact(read(0x12, 1000))[:2] == (modbus.OK, [0])
        assert master.late.late == 1
    finally:
        uart.deinit()


@pytest.mark.parametrize("controller_site", ["pty", "rtu+tcp"], indirect=True)
def test_a_late_reply_of_another_size_is_not_a_wrong_byte_count(controller_site):
    """The lead's 'wrong byte count' under load (test_metering_sim, abb-b23): the late reply to
    a two-register read arrived during the next, one-register read of the same meter and
    failed it.  It is an earlier request's late reply: discarded, and the read gets its own."""
    _site, ctl, endpoint = controller_site

    async def go() -> tuple[Any, list]:
        port = bus_port({"name": "bus1", "port": endpoint, "baud": 9600}, {})
        try:
            assert await port.connect()
            ctl.set_late_reply(LATE_MS)
            first = await port.perform(Txn("poll", None, 50, 3, 0x12, 2, TIMEOUT_MS))
            ctl.set_late_reply(0)
            return port, [first, await port.perform(read(0x13, 2000))]
        finally:
            port.close()

    port, (first, nxt) = asyncio.run(go())
    assert first[0] == modbus.E_TIMEOUT
    assert nxt[:2] == (modbus.OK, [1]), nxt
    assert port.late.late == 1
