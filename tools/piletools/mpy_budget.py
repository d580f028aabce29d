"""The ESP32 gateway's RAM, measured on MicroPython, against each ESP32 board's heap budget.

`measure(n_piles)` runs firmware/pilefw's App on the official MicroPython 1.27 WebAssembly VM
(32-bit, so object sizes match the ESP32's; hil/pilehil/mpyapp.py) for an ESP32 site of
`n_piles` piles with one bay each (`esp32_site`), against the meter and bay simulator and a
private mosquitto, through a scripted day in the life: every meter verified and read,
telemetry, one console session (status, login, piles, set), signed commands, one outage
(broker down while telemetry piles up in the outbox, then the drain) and a cut bus.  The live
set is measured after every main-loop pass (after a full collection: the VM collects only
between passes).

The rule (docs/esp32.md, "RAM budget"): a board fits when

    2 x peak_live + TLS_ROOM_KB  <=  heap_kb (boards/<id>.toml)

where peak_live = the largest live set after any pass + the largest single block allocated in
any pass (the one contiguous piece a pass needs on top of what it keeps), x2 for fragmentation,
and TLS_ROOM_KB for the TLS session mbedTLS allocates on the same heap.

`pilegate bench mpy` (part of `make bench`) prints, per board, peak live / budget.
"""

from __future__ import annotations

import json
import select
import socket
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "boards"
TLS_ROOM_KB = 40  # docs/esp32.md: mbedTLS session buffers and handshake on the Python heap
PIN = "482916"


def esp32_site(n_piles: int, broker_url: str, platform_key: str, board: str = "esp32-devkitc-max3485") -> str:
    """An ESP32 site: n piles on one RS-485 bus (uart2 or the board's RS-485 UART), a bay per
    pile (Modbus presence sensors; the first two bays also an inductive loop on DI1/DI2), P01
    and P02 interlocked on relays K1/K2, the occupancy tariff, a 30 s telemetry interval."""
    port = "uart1" if board.startswith("esp32s3") else "uart2"
    out = [
        f"""[gateway]
id = "GW-M{n_piles:02d}"
site = "mem-site"
board = "{board}"

[mqtt]
url = "{broker_url}"
allow_insecure = true

[telemetry]
interval_s = 30

[metering]
poll_s = 10
offline_after_s = 60

[signing]
platform_key = "{platform_key}"

[[bus]]
name = "rs485-1"
port = "{port}"
baud = 9600

[bays]
arrive_s = 20
leave_s = 45

[tariff]
id = "MEM-occupancy"
version = 1
currency = "CNY"
free_min = 15
block_min = 15
price_fen = 500
cap_fen = 5000
applies_to = ["fuel_car", "ev_overstay"]
"""
    ]
    from pilegate import siteconfig
    from pilehil.sitesim import serial_for

    known, _ = siteconfig.load_profiles()
    profiles = ("chint-ddsu666", "eastron-sdm120", "chint-dtsu666", "eastron-sdm630")
    for i in range(1, n_piles + 1):
        prof = profiles[i % 4]
        ident = known[prof].get("identity") or {}
        serial = serial_for(known[prof], i) if ident.get("kind") == "serial" else ""  # commissioned
        pile = f'\n[[pile]]\nid = "P{i:02d}"\n'
        pile += f'meter = {{ bus = "rs485-1", address = {i}, profile = "{prof}", serial = "{serial}" }}\n'
        if i <= 2:
            pile += f'interlock = "relay"\nrelay = "K{i}"\n'
        out.append(pile)
    for i in range(1, n_piles + 1):
        sensor = f'{{ type = "modbus", bus = "rs485-1", address = {100 + i}, profile = "dfrobot-sen0492" }}'
        extra = f', {{ type = "input", input = "DI{i}", active = "low" }}' if i <= 2 else ""
        out.append(f'\n[[bay]]\nid = "B{i:02d}"\npile = "P{i:02d}"\npresence = [{sensor}{extra}]\n')
    return "".join(out)


def boards() -> dict[str, dict[str, Any]]:
    """Every ESP32 board file: {id: board table}."""
    found = {}
    for path in sorted(BOARDS.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        if str(data.get("platform", "")).startswith("esp32"):
            found[data["id"]] = data
    return found


def verdict(board: dict[str, Any], figures: dict[str, int]) -> tuple[bool, int, str]:
    """(fits, need_kb, text) for a board and the figures of one site (see the module rule)."""
    peak_kb = (figures["peak_live"] + figures["max_block"]) / 1024
    need = int(2 * peak_kb + TLS_ROOM_KB + 0.999)
    heap = int(board["heap_kb"])
    text = f"2 x {peak_kb:.0f} KB + {TLS_ROOM_KB} KB TLS = {need} KB of {heap} KB"
    return need <= heap, need, text


class ConsoleLine:
    """The technician's end of the console line, over TCP: the harness bridges the App's
    console UART to `endpoint`.  (Not a pseudo-terminal: on a shared machine a stray process
    that reopens an old /dev/pts path would read the keys typed here.)"""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp:127.0.0.1:{self.server.getsockname()[1]}"
        self.conn: socket.socket | None = None
        self.out = b""

    def _conn(self) -> socket.socket | None:
        if self.conn is None:
            self.server.setblocking(False)
            try:
                self.conn, _ = self.server.accept()
            except BlockingIOError:
                return None
            self.conn.setblocking(False)
        return self.conn

    def send(self, text: bytes) -> None:
        conn = self._conn()
        assert conn is not None, "the console line is not connected yet (start the App first)"
        conn.sendall(text)

    def read(self) -> bytes:
        conn = self._conn()
        while conn is not None and select.select([conn], [], [], 0)[0]:
            data = conn.recv(4096)
            if not data:
                break
            self.out += data
        return self.out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def _console(dut: Any, term: ConsoleLine, send: bytes, expect: bytes, timeout_s: float = 90.0) -> None:
    """Type a line, then run passes (measured) until `expect` shows up on the terminal."""
    if send:
        term.send(send)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dut.step(1, mem=True)
        if expect in term.read():
            return
    raise AssertionError(f"console: {expect!r} did not come after {send!r}: {term.read()[-400:]!r}")


def measure(
    n_piles: int,
    workdir: Path,
    code: str = "mpy",
    on_key: Callable[[str], None] | None = None,
    broker: Any = None,
    on_end: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run the scripted day (module docstring) for an n-pile site; the memory figures (bytes).

    `on_key(pem)` is called with the device's public key once the App is built (a test starts
    its verifying receiver there); `broker` is a started pilehil Broker (one is made if None);
    `on_end(dut)` is called at the end of the day, before the App is closed.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    from pilecore import commands, pinhash
    from pilegate import siteconfig
    from pilegate.keys import DeviceKey
    from pilehil import mpyapp, sitesim
    from pilehil.broker import Broker

    workdir.mkdir(parents=True, exist_ok=True)
    own_broker = broker is None
    if own_broker:
        broker = Broker(workdir / "broker").start()
    platform = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
    key_file = workdir / "platform-cmd.pub.pem"
    key_file.write_text(platform.public_pem)
    site_file = workdir / f"esp32-{n_piles}.toml"
    site_file.write_text(esp32_site(n_piles, broker.url, str(key_file)))
    site, problems = siteconfig.load_site(site_file)
    assert site is not None, "\n".join(map(str, problems))
    sim, _ = sitesim.build(site.config, seed=n_piles)
    endpoints = sim.start()
    term = ConsoleLine()
    dut = mpyapp.MpyApp(workdir / "vm", code=code)
    figures: dict[str, Any] = {"piles": n_piles, "bays": n_piles, "code": code}
    gw = site.config["gateway"]["id"]

    def send_command(cmd_id: str, name: str, args: dict[str, Any]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        now = int(time.time())
        jws = commands.make(gw, cmd_id, name, args, now - 1, now + 120, platform.sign_raw, platform.kid)
        c = mqtt.Client(CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        c.publish(f"pilegate/v1/mem-site/{gw}/cmd", jws, qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()

    try:
        files = {
            "/data/console.pin": pinhash.make_record(PIN, b"saltsalt", 1000).encode(),
            str(key_file): key_file.read_bytes(),
        }
        files["/config.json"] = site.json_bytes
        dut.load(uarts={2: "pty:" + endpoints["rs485-1"]}, console=term.endpoint, files=files)
        figures["vm"] = dut.version
        figures["baseline"] = dut.measure()["live"]
        dut.exec("from pilefw import app as _app")
        figures["import"] = dut.measure()["live"]
        pem = dut.boot()["pem"]
        figures["after_app"] = dut.measure()["live"]
        if on_key is not None:
            on_key(pem)
        dut.reset_mem()
        every = "all(_gw.core.guard.status(p['id'])['metered'] for p in _cfg['pile'])"
        dut.run_until(every, 20 * (n_piles + 4) * 30, mem=True, what="every pile metered")
        for _ in range(3):  # telemetry rounds with every reading
            dut.advance(30_000)
            dut.step(12, mem=True)
        _console(dut, term, b"", b"pilegate> ")
        _console(dut, term, b"status\r", b"config_hash")
        _console(dut, term, b"piles\r", b"P01")
        _console(dut, term, b"login\r", b"PIN: ")
        _console(dut, term, PIN.encode() + b"\r", b"logged in as")
        _console(dut, term, b"set telemetry.interval_s 20\r", b"(applied)")
        _console(dut, term, b"logout\r", b"logged out")
        send_command("m-1", "set_interval", {"interval_s": 30})
        send_command("m-2", "sync_time", {"t": int(time.time())})
        send_command("m-3", "resend", {"from_seq": 1, "to_seq": 5})
        dut.run_until("_gw.interval_s == 30 and _gw.outbox.depth() == 0", 400, mem=True, what="the commands")
        dut.step(20, mem=True)
        # the outage: the broker goes away while telemetry keeps coming, then returns
        broker.stop()
        for _ in range(4):
            dut.advance(30_000)
            dut.step(8, mem=True)
        figures["outbox_in_outage"] = dut.value("_gw.outbox.depth()")
        broker.start()
        dut.advance(70_000)  # past the longest reconnect backoff
        dut.run_until("_gw.link.connected and _gw.outbox.depth() == 0", 2000, mem=True, what="the backlog drained")
        # a cut bus: the meters go offline (events), then come back
        sim.bus("rs485-1").cut(True)
        dut.advance(70_000)
        dut.step(6, mem=True)
        sim.bus("rs485-1").cut(False)
        dut.advance(30_000)
        dut.step(40, mem=True)
        mem = dut.mem()
        figures.update(
            peak_live=mem["peak_live"],
            max_block=mem["max_block"],
            max_pass_alloc=mem["max_pass_alloc"],
            passes=mem["passes"],
            seq=dut.value("_gw.chain.seq"),
        )
        if on_end is not None:
            on_end(dut)  # the App still runs: a caller can look into the VM (breakdowns)
        ours = ("pilecore", "pilefw", "umqtt")
        modules = [m for m in mem["peak_modules"] if m.split(".")[0] in ours]  # loaded at the peak
        dut.exec("_gw.close()")
    finally:
        dut.close()
        term.close()
        sim.stop()
        if own_broker:
            broker.stop()
    figures["modules"] = len(modules)
    figures["code_cost"] = code_cost(modules, workdir / "code", code)
    figures["frozen_resident"] = figures["peak_live"] - figures["code_cost"]
    return figures


def code_cost(modules: list[str], workdir: Path, code: str = "mpy") -> int:
    """Bytes of heap that importing `modules` (those loaded at the peak) holds in a fresh VM
    (bytecode, function objects, module dicts, qstrs): what a frozen build keeps in flash
    instead (less the module dicts, which stay in RAM, so frozen_resident = peak_live -
    code_cost is a slight underestimate)."""
    from pilehil import mpyapp

    with mpyapp.MpyApp(workdir, code=code) as vm:
        vm.load()
        before = vm.measure()["live"]
        vm.exec("".join(f"import {m}\n" for m in modules))
        return vm.measure()["live"] - before


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a text table (KB)."""
    keys = ("import", "after_app", "peak_live", "max_block", "max_pass_alloc", "code_cost", "frozen_resident")
    lines = ["piles+bays  " + "  ".join(f"{k:>15}" for k in keys)]
    for r in results:
        lines.append(f"{r['piles']:>4}+{r['bays']:<6} " + "  ".join(f"{r[k] / 1024:>12.1f} KB" for k in keys))
    return "\n".join(lines)


def bench(workdir: Path, sizes: tuple[int, ...] = (8, 16)) -> list[dict[str, Any]]:
    """`pilegate bench mpy`: measure each size, print the table and every board's verdict."""
    results = [measure(n, workdir / f"s{n}") for n in sizes]
    print("ESP32 RAM on MicroPython (WebAssembly VM, .mpy modules), per site:")
    print(table(results))
    for bid, board in boards().items():
        for r in results:
            fits, _, text = verdict(board, r)
            mark = "fits" if fits else "DOES NOT FIT"
            status = "marked unsupported" if board.get("unsupported") else "marked supported"
            print(f"  {bid:<26} {r['piles']:>2} piles: peak live / budget: {text}: {mark} ({status})")
    print(json.dumps(results))
    return results
