"""`pilegate bench` / `make bench`: figures as ratios against baselines measured in the same run.

bus        a simulated 32-meter RS-485 bus at 9600 baud (the HIL meter simulator):
           (a) bus time of one full poll cycle / the theoretical minimum for the values asked for
           (b) bus time of one-read-per-value polling / the same minimum (and / the gateway's)
           (c) gateway transactions per second / a bare pymodbus client loop doing the same reads,
               keeping the 3.5-character silence between frames that the gateway keeps (the
               Modbus serial line rule; pymodbus's async client does not: that ratio is printed too)
mixed      a simulated mixed bus, DL/T 645 and Modbus meters at the DL/T 645 line default
           2400 8E1: bus time of one full poll cycle / its own theoretical minimum
telemetry  signing, publishing and draining against a private mosquitto (see bench_telemetry)
mpy        the ESP32 App's RAM on MicroPython for 8 and 16 piles, and per ESP32 board peak live /
           heap budget (see mpy_budget)

Bus time is the simulator's model of the RS-485 line: every frame's characters and its
3.5-character silence at the line's bits per character, plus each meter's response latency.
The theoretical minimum is the least bus time any Modbus master can spend to fetch the same
values from the same meters: reads must be contiguous register blocks within each meter's block
limit, so it is found by trying every way of grouping each meter's wanted registers (exhaustive,
independent of the gateway's planner). A DL/T 645 meter answers one data item per request, so
its minimum is one request per item (one per block item where the profile names a block, e.g. all
phase voltages), each with the shortest wake-up preamble the standard allows (one FE byte) and
the reply the meter sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient

from pilecore import planner
from pilecore.modbus import TYPE_WIDTH
from pilecore.scheduler import char_time_us
from pilegate import siteconfig
from pilegate.metering_service import Metering
from pilegate.serial_port import frame_gap_s
from pilehil import ConstantLoad, ManualClock, Site
from pilehil.wire import LineTiming

BAUD = 9600
METERS = 32
PROFILES = ["eastron-sdm120", "chint-ddsu666", "chint-dtsu666", "eastron-sdm630", "abb-b23", "acrel-adl400"]


def _wanted(prof: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(function, start, end) of every register range the values need, including the
    transformer ratios a value is scaled by (read in the same poll: the ADL400's PT and CT)."""
    from pilecore import profile as _p

    out = []
    ratios: list[str] = []
    for name in planner.READING_KEYS:
        if name in prof["values"]:
            for fc, reg, typ in _p.value_registers(prof, name):
                out.append((fc, reg, reg + TYPE_WIDTH[typ]))
            ratios += [r for r in prof["values"][name].get("ratios", ()) if r not in ratios]
    for _name, fc, reg, typ in _p.ratio_registers(prof, ratios):
        out.append((fc, reg, reg + TYPE_WIDTH[typ]))
    return out


def min_bus_time(prof: dict[str, Any], char_s: Fraction) -> Fraction:
    """The least bus time to read every value of `prof`, by exhaustive search per function."""
    latency = Fraction(prof.get("response_ms", 0), 1000)
    limit = min(125, prof.get("max_block", 125))
    total = Fraction(0)
    by_fc: dict[int, list[tuple[int, int]]] = {}
    for fc, start, end in _wanted(prof):
        by_fc.setdefault(fc, []).append((start, end))
    for spans in by_fc.values():
        spans.sort()
        runs: list[list[int]] = []
        for s, e in spans:
            if runs and s < runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], e)
            else:
                runs.append([s, e])
        n = len(runs)
        best = None
        for mask in range(1 << (n - 1)):
            cost, first, ok = Fraction(0), 0, True
            for k in range(n):
                if k == n - 1 or mask >> k & 1:
                    count = runs[k][1] - runs[first][0]
                    if count > limit:
                        ok = False
                        break
                    # request (8 bytes + 3.5 silence) and response (5 + 2n bytes + 3.5 silence)
                    chars = Fraction(23, 2) + Fraction(17, 2) + 2 * count
                    cost += chars * char_s + latency
                    first = k + 1
            if ok and (best is None or cost < best):
                best = cost
        total += best or 0
    return total


MIXED_BAUD, MIXED_PARITY = 2400, "E"  # the DL/T 645 default line, which the Modbus meters then use
MIXED_PROFILES = [
    "chint-dtsu666-dlt645",
    "eastron-sdm120",
    "chint-ddsu666-dlt645",
    "chint-dtsu666",
    "acrel-dtsd1352-dlt645",
    "eastron-sdm630",
    "acrel-ddsd1352-dlt645",
    "abb-b23",
]


def min_dlt_bus_time(prof: dict[str, Any], timing: LineTiming) -> Fraction:
    """The least bus time to read every value of a DL/T 645 profile: one request per item (one
    per block item where the profile names one), the request with a single FE wake-up byte (the
    standard's minimum), the reply as the simulated meter sends it (four FE bytes first)."""
    latency = Fraction(prof.get("response_ms", 0), 1000)
    total = Fraction(0)
    for name in planner.READING_KEYS:
        spec = prof["values"].get(name)
        if spec is None:
            continue
        dis = spec["di"] if isinstance(spec["di"], list) else [spec["di"]]
        sizes = [spec["bytes"] * len(dis)] if "block" in spec else [spec["bytes"]] * len(dis)
        for size in sizes:
            total += timing.frame_time(1 + 16) + latency + timing.frame_time(4 + 16 + size)
    return total


def bench_mixed(tmpdir: str = "/tmp") -> dict[str, float]:
    """A mixed DL/T 645 + Modbus bus: one gateway poll cycle against its own minimum."""
    from pathlib import Path

    all_profiles, _ = siteconfig.load_profiles()
    timing = LineTiming(MIXED_BAUD, MIXED_PARITY, 1)
    sim = Site(clock=ManualClock(1000.0))
    # rtu+tcp: a transparent RS-485-to-Ethernet converter carries parity (a Linux pty cannot)
    sim.add_bus("bus1", "rtu+tcp", MIXED_BAUD, MIXED_PARITY, 1)
    addresses = []
    for i, name in enumerate(MIXED_PROFILES, start=1):
        p = all_profiles[name]
        addr: int | str = f"{20260000 + i:012d}" if p.get("protocol") == "dlt645" else i
        addresses.append(addr)
        sim.add_meter("bus1", addr, p, str(20260000 + i), load=ConstantLoad(7000, int(p["phases"])))
    endpoint = sim.start()["bus1"]
    try:
        lines = [
            '[gateway]\nid = "BENCH"\nsite = "bench"\nboard = "rpi4-usb-rs485"\n',
            '[mqtt]\nurl = "mqtt://127.0.0.1:1"\nallow_insecure = true\n',
            f'[[bus]]\nname = "bus1"\nport = "{endpoint}"\nbaud = {MIXED_BAUD}\nparity = "{MIXED_PARITY}"\n',
        ]
        for i, (name, addr) in enumerate(zip(MIXED_PROFILES, addresses, strict=True), start=1):
            a = f'"{addr}"' if isinstance(addr, str) else str(addr)
            lines.append(f'[[pile]]\nid = "P{i:02d}"\nmeter = {{ bus = "bus1", address = {a}, profile = "{name}" }}\n')
        path = Path(tmpdir) / "bench-mixed-site.toml"
        path.write_text("\n".join(lines))
        site = siteconfig.load_site_or_raise(path)
        char_s = timing.char_time
        minimum = Fraction(0)
        n_dlt = 0
        for name in MIXED_PROFILES:
            p = all_profiles[name]
            if p.get("protocol") == "dlt645":
                minimum += min_dlt_bus_time(p, timing)
                n_dlt += 1
            else:
                minimum += min_bus_time(p, char_s)
        sim.reset_stats()
        n_gw = asyncio.run(_gateway_cycles(site.config, 1))
        stats = sim.bus_stats("bus1")
    finally:
        sim.stop()
    ratio = float(stats.wire_time / minimum)
    print(
        f"bench mixed: {len(MIXED_PROFILES)} meters ({n_dlt} DL/T 645, {len(MIXED_PROFILES) - n_dlt} Modbus) "
        f"on one RS-485 bus at {MIXED_BAUD} 8{MIXED_PARITY}1"
    )
    print(f"  theoretical minimum bus time per poll cycle : {float(minimum) * 1000:8.1f} ms")
    print(
        f"  gateway poll cycle: {n_gw} transactions, {float(stats.wire_time) * 1000:8.1f} ms -> {ratio:.3f} x minimum"
        f"   [target <= 1.10]"
    )
    return {"mixed_cycle_vs_min": ratio, "mixed_transactions": n_gw}


def _site_text(endpoint: str, profiles: list[str]) -> str:
    lines = [
        '[gateway]\nid = "BENCH"\nsite = "bench"\nboard = "rpi4-usb-rs485"\n',
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\nallow_insecure = true\n',
        f'[[bus]]\nname = "bus1"\nport = "{endpoint}"\nbaud = {BAUD}\n',
    ]
    for i, prof in enumerate(profiles, start=1):
        lines.append(f'[[pile]]\nid = "P{i:02d}"\nmeter = {{ bus = "bus1", address = {i}, profile = "{prof}" }}\n')
    return "\n".join(lines)


def bench_bus(seconds: float = 6.0, tmpdir: str = "/tmp") -> dict[str, float]:
    """Run the bus benchmark; print and return its figures."""
    from pathlib import Path

    profiles = [PROFILES[i % len(PROFILES)] for i in range(METERS)]
    all_profiles, _ = siteconfig.load_profiles()
    sim = Site(clock=ManualClock(1000.0))
    sim.add_bus("bus1", "pty", BAUD, "N", 1)
    for i, prof in enumerate(profiles, start=1):
        p = all_profiles[prof]
        sim.add_meter("bus1", i, p, str(20260000 + i), load=ConstantLoad(7000, int(p["phases"])))
    endpoint = sim.start()["bus1"]
    try:
        path = Path(tmpdir) / "bench-site.toml"
        path.write_text(_site_text(endpoint, profiles))
        site = siteconfig.load_site_or_raise(path)
        char_s = Fraction(char_time_us(BAUD, "N", 1), 10**6)
        minimum = sum((min_bus_time(all_profiles[p], char_s) for p in profiles), Fraction(0))

        sim.reset_stats()
        n_gw = asyncio.run(_gateway_cycles(site.config, 1))
        gw_wire = sim.bus_stats("bus1").wire_time

        sim.reset_stats()
        n_naive = asyncio.run(_per_value_cycle(endpoint, [all_profiles[p] for p in profiles]))
        naive_wire = sim.bus_stats("bus1").wire_time

    finally:
        sim.stop()
    # Throughput runs against the simulator in a process of its own (as real meters would be),
    # so the gateway and the baseline are not slowed by sharing the interpreter with it.
    with _sim_process(profiles) as endpoint2:
        path.write_text(_site_text(endpoint2, profiles))
        site = siteconfig.load_site_or_raise(path)
        reads = _gateway_reads(site.config)
        gw_tps = asyncio.run(_gateway_tps(site.config, seconds))
        bare_tps = asyncio.run(_bare_tps(endpoint2, reads, seconds, frame_gap_s(BAUD)))
        bare_nogap_tps = asyncio.run(_bare_tps(endpoint2, reads, seconds))
    a = float(gw_wire / minimum)
    b = float(naive_wire / minimum)
    c = gw_tps / bare_tps
    print(f"bench bus: {METERS} meters ({len(set(profiles))} models) on one RS-485 bus at {BAUD} baud")
    print(f"  theoretical minimum bus time per poll cycle : {float(minimum) * 1000:8.1f} ms")
    print(
        f"  (a) gateway poll cycle: {n_gw} reads, {float(gw_wire) * 1000:8.1f} ms -> {a:.3f} x minimum"
        f"   [target <= 1.10]"
    )
    print(
        f"  (b) one read per value: {n_naive} reads, {float(naive_wire) * 1000:8.1f} ms -> {b:.3f} x minimum"
        f" ({b / a:.2f} x the gateway's bus time)"
    )
    print(
        f"  (c) throughput: gateway {gw_tps:.1f} transactions/s, bare pymodbus loop keeping the"
        f" 3.5-character silence {bare_tps:.1f}/s -> {c:.3f}   [target >= 0.80]"
    )
    print(
        f"      (bare pymodbus loop without the silence: {bare_nogap_tps:.1f}/s -> {gw_tps / bare_nogap_tps:.3f};"
        f" the silence alone bounds any master at {1 / frame_gap_s(BAUD):.0f} transactions/s here)"
    )
    return {
        "bus_cycle_vs_min": a,
        "per_value_vs_min": b,
        "per_value_vs_gateway": b / a,
        "throughput_vs_pymodbus": c,
        "gateway_tps": gw_tps,
        "pymodbus_tps": bare_tps,
        "pymodbus_no_silence_tps": bare_nogap_tps,
    }


@contextlib.contextmanager
def _sim_process(profiles: list[str]) -> Iterator[str]:
    args = [sys.executable, "-m", "pilehil", "--transport", "pty", "--baud", str(BAUD), "--load", "constant:7000"]
    for i, prof in enumerate(profiles, start=1):
        args += ["--meter", f"bus1:{i}:{prof}:{20260000 + i}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None  # stdout=PIPE
        line = proc.stdout.readline().split()
        if len(line) != 2:
            raise RuntimeError(f"simulator did not start: {line}")
        yield line[1]
    finally:
        proc.terminate()
        proc.wait(10)


async def _gateway_cycles(cfg: dict[str, Any], cycles: int) -> int:
    """Poll every meter `cycles` times through the gateway's scheduler; return reads made."""
    svc = Metering(cfg, poll_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run_bus("bus1", stop))
    while min(svc.cycles_done.values()) < cycles:
        await asyncio.sleep(0.01)
    stop.set()
    svc._wake["bus1"].set()
    await task
    return svc.scheds["bus1"].stats["requests"]


def _gateway_reads(cfg: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """(address, function, start, count) of every read in the gateway's plans."""
    svc_plans = []
    for pile in cfg["pile"]:
        prof = cfg["profiles"][pile["meter"]["profile"]]
        plan = planner.MeterPlan(prof, char_us=char_time_us(BAUD, "N", 1))
        svc_plans += [(pile["meter"]["address"], fc, start, count) for fc, start, count in plan.reads]
    return svc_plans


async def _per_value_cycle(endpoint: str, profiles: list[dict[str, Any]]) -> int:
    """A simple gateway: one read per value and phase, every meter once."""
    client = AsyncModbusSerialClient(endpoint, framer=FramerType.RTU, baudrate=BAUD, timeout=1, retries=0)
    await client.connect()
    n = 0
    try:
        for address, prof in enumerate(profiles, start=1):
            for fc, start, end in _wanted(prof):
                call = client.read_holding_registers if fc == 3 else client.read_input_registers
                await call(start, count=end - start, device_id=address)
                n += 1
    finally:
        client.close()
    return n


async def _gateway_tps(cfg: dict[str, Any], seconds: float) -> float:
    svc = Metering(cfg, poll_s=0.001)  # continuous polling: the bus never idles
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run_bus("bus1", stop))
    await asyncio.sleep(0.5)  # warm up (connect, first cycle)
    n0, t0 = svc.scheds["bus1"].stats["requests"], time.monotonic()
    await asyncio.sleep(seconds)
    n1, t1 = svc.scheds["bus1"].stats["requests"], time.monotonic()
    stop.set()
    svc._wake["bus1"].set()
    await task
    return (n1 - n0) / (t1 - t0)


async def _bare_tps(
    endpoint: str, reads: list[tuple[int, int, int, int]], seconds: float, quiet_s: float = 0.0
) -> float:
    """The baseline: the same reads in a tight loop with a plain pymodbus client, keeping
    `quiet_s` of silence after each reply (0: none, as pymodbus's async client does)."""
    client = AsyncModbusSerialClient(endpoint, framer=FramerType.RTU, baudrate=BAUD, timeout=1, retries=0)
    await client.connect()
    try:
        n, i = 0, 0
        t0 = time.monotonic()
        warm = t0 + 0.5
        while time.monotonic() < warm:
            await _one(client, reads[i % len(reads)])
            i += 1
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await _one(client, reads[i % len(reads)])
            i += 1
            n += 1
            if quiet_s:
                time.sleep(quiet_s)  # the line's silence before the next request, as the gateway's worker
        return n / (time.monotonic() - t0)
    finally:
        client.close()


async def _one(client: Any, read: tuple[int, int, int, int]) -> None:
    address, fc, start, count = read
    call = client.read_holding_registers if fc == 3 else client.read_input_registers
    await call(start, count=count, device_id=address)


def main(args: Any) -> int:
    which = args.which
    if which in ("bus", "all"):
        bench_bus(args.seconds)
    if which in ("mixed", "all"):
        bench_mixed()
    if which in ("telemetry", "all"):
        from piletools import bench_telemetry

        bench_telemetry.run(args)
    if which in ("mpy", "all"):
        import tempfile
        from pathlib import Path

        from piletools import mpy_budget

        with tempfile.TemporaryDirectory(prefix="pilegate-bench-mpy-") as tmp:
            mpy_budget.bench(Path(tmp))
    return 0
