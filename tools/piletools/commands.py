"""The `pilegate` subcommands of the platform and rig tools: console client, verifier, simulator,
benchmarks, demo.

The gateway's own commands (run, check, read, keys, provision) live in `pilegate.cli`; these are
found through the `pilegate.commands` entry-point group (pyproject.toml), so the layering is
tools -> gateway -> core: the gateway package never imports this one, and `pilegate run` loads
none of the verifier, the demo or the simulator.  Each handler imports its module only when run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pilegate.cli import Handler, load_site_or_report


def _cmd_console(args: argparse.Namespace) -> int:
    from piletools import console_client

    return console_client.main(args)


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.record:
        return _verify_record(args)
    from piletools import verify

    return verify.main(args)


def _cmd_sim(args: argparse.Namespace) -> int:
    import signal
    import threading

    from pilehil import sitesim

    site_def = load_site_or_report(args.site)
    if site_def is None:
        return 2
    sim, _ = sitesim.build(site_def.config, speed=args.speed, seed=args.seed, realtime=args.realtime)
    endpoints = sim.start()
    try:
        for name, ep in endpoints.items():
            print(f"bus {name}: {ep}")
        if args.write_site:
            sitesim.write_site(Path(args.site), Path(args.write_site), sim, site_def.config)
            print(f"site file for the simulator: {args.write_site}  (try: pilegate read {args.write_site})", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait(args.duration if args.duration else None)
    finally:
        sim.stop()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from piletools import bench

    return bench.main(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from piletools import demo

    return demo.main(args)


def register(sub: Any, handlers: dict[str, Handler]) -> None:
    """Add this package's subcommands to the `pilegate` parser (the entry point)."""
    p = sub.add_parser(
        "sim",
        help="simulate a site's meters (HIL rig) until Ctrl-C",
        description="Serve simulated meters for every pile (and the main meter) of a "
        "site: serial buses become pseudo-terminals, tcp:// and rtu+tcp:// "
        "buses local TCP ports. With --write-site, write a copy of the "
        "site file whose buses point at the simulator.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--write-site", metavar="FILE", help="write the simulator's site file here")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated charging sessions")
    p.add_argument("--realtime", action="store_true", help="pace replies at the modelled RS-485 bus time")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    handlers["sim"] = _cmd_sim

    p = sub.add_parser(
        "bench",
        help="benchmarks, as ratios against baselines measured in the same run",
        description="bus: a simulated 32-meter bus (planner and scheduler against the "
        "theoretical minimum, per-value polling and a bare pymodbus loop); "
        "mixed: DL/T 645 and Modbus meters on one 2400 8E1 bus against its own minimum; "
        "telemetry: signed publishing and backlog drain against bare paho, "
        "and signing on MicroPython; mpy: the ESP32 App's RAM on MicroPython per site "
        "size and every ESP32 board's verdict (peak live / heap budget).",
    )
    p.add_argument("which", nargs="?", choices=("bus", "mixed", "telemetry", "mpy", "all"), default="all")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    handlers["bench"] = _cmd_bench

    p = sub.add_parser(
        "demo",
        help="the whole chain on this machine: broker, simulated site, gateway, verifier",
        description="Start a private mosquitto, simulate the example 8-pile site (meters, bay "
        "sensors, vehicles), run the gateway against it and the reference verifier "
        "on its messages, and print live verified readings. Ctrl-C stops all.",
    )
    p.add_argument("--site", type=Path, help="site file to simulate (default examples/site.toml)")
    p.add_argument("--interval", type=int, default=5, help="telemetry interval in seconds (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated traffic")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the demo's temporary folder")
    handlers["demo"] = _cmd_demo

    p = sub.add_parser(
        "console",
        help="technician console over a serial cable or the gateway's local socket",
        description="Attach to a gateway's technician console: over a USB serial cable (--port) "
        "or, on the Pi, its local socket (--socket). Local line editing, history, "
        "Tab completion, a session log; no traceback when the port is missing, busy "
        "or not permitted.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", help="serial port wired to the gateway's console UART, e.g. /dev/ttyUSB0")
    where.add_argument(
        "--socket", help="the gateway's console socket (default /run/pilegate/console.sock when no --port is given)"
    )
    p.add_argument("--baud", type=int, default=115200, help="serial speed (default 115200, 8N1)")
    p.add_argument("--log", type=Path, help="session log file (default ~/pilegate-console-YYYYmmdd-HHMMSS.log)")
    handlers["console"] = _cmd_console

    p = sub.add_parser(
        "verify",
        help="reference receiver: verify gateways' messages",
        description="Subscribe to gateways' topics, verify every signature against a "
        "key register, apply the receiver rules of docs/telemetry.md and "
        "print a live summary; --report prints the final account from a "
        "store and exits 1 on any gap or failed check.",
    )
    p.add_argument("--broker", default="mqtts://localhost:8883", help="broker URL (mqtts:// or mqtt://)")
    p.add_argument("--keys", type=Path, default=Path("keys.toml"), help="key register ([[key]] entries)")
    p.add_argument("--prefix", default="pilegate/v1")
    p.add_argument("--ca", help="CA file for the broker's certificate")
    p.add_argument("--cert", help="client certificate")
    p.add_argument("--key", help="client certificate key")
    p.add_argument("--insecure", action="store_true", help="do not verify the broker certificate (lab)")
    p.add_argument("--share", metavar="GROUP", help="MQTT 5 shared subscription group")
    p.add_argument("--store", help="SQLite file for accepted messages")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--every", type=float, default=5.0, help="summary interval in seconds")
    p.add_argument("--from-first-seen", action="store_true", help="count gaps only from the first seq seen per gateway")
    p.add_argument("--report", action="store_true", help="print the final account from --store and exit")
    p.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="verify a signed commissioning record (record.jws) against --keys and print it; exit 1 if invalid",
    )
    handlers["verify"] = _cmd_verify
    _register_installer(sub, handlers)


# ------------------------------------------------------------------ installer tools (issue 12)


def _verify_record(args: argparse.Namespace) -> int:
    """`pilegate verify --record FILE --keys keys.toml`."""
    from piletools import commission

    try:
        text = Path(args.record).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.record}: cannot read the record: {exc}", file=sys.stderr)
        return 2
    ok, lines = commission.verify_record(text, args.keys)
    print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _cmd_commission(args: argparse.Namespace) -> int:
    from piletools import commission

    return commission.main(args)


def _cmd_image(args: argparse.Namespace) -> int:
    from piletools import esp32image

    return esp32image.main(args)


def _cmd_flash(args: argparse.Namespace) -> int:
    from piletools import flash

    return flash.main(args)


def _cmd_install(args: argparse.Namespace) -> int:
    from piletools import install

    return install.main_install(args)


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from piletools import install

    return install.main_uninstall(args)


def _register_installer(sub: Any, handlers: dict[str, Handler]) -> None:
    """The installer's subcommands: commission (image, flash, install, uninstall follow)."""
    p = sub.add_parser(
        "commission",
        help="scan the buses, identify meters, prove the wiring, write bindings, sign a record",
        description="Commission a site: scan each RS-485 bus (line settings x addresses), identify "
        "every meter by its profile's recipe, prove each pile's meter by a load test (the "
        "installer plugs a load in, or --yes switches the other piles off through their "
        "interlocks), write the proven bindings into the site file after showing the diff, "
        "test the interlocks, and sign a commissioning record with the device key. Exit 0 "
        "when everything is proven, 1 when a fault was found, 2 on bad input. See docs/install.md.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML); bindings are written into it")
    p.add_argument(
        "--bus-port",
        action="append",
        metavar="[BUS=]PORT",
        help="the port to scan a bus on (a serial device, or rtu+tcp://host:port); repeat per bus; "
        "default: each bus's port in the site file",
    )
    p.add_argument(
        "--lines",
        help="line settings to scan, e.g. 9600N1,2400N1 (default: the bus's own, then 9600 8N1, 9600 8E1, "
        "2400 8N1, 2400 8E1, 4800 8N1, 19200 8N1)",
    )
    p.add_argument("--addresses", default="1-247", help="addresses to scan, e.g. 1-16,31-38 (default 1-247)")
    p.add_argument("--timeout-ms", type=int, default=300, help="how long a scan probe waits (default 300 ms)")
    p.add_argument(
        "--answer-timeout-ms",
        type=int,
        default=2000,
        help="how long to wait for a device that answered before, and for a second look at an expected "
        "address the scan missed (default 2000 ms)",
    )
    p.add_argument("--settle", type=float, default=5.0, metavar="S", help="seconds to wait after switching a load")
    p.add_argument("--threshold", type=float, default=1.0, metavar="A", help="current rise that proves a meter (1 A)")
    p.add_argument(
        "--yes", action="store_true", help="unattended: load test through the interlocks, write without asking"
    )
    p.add_argument("--plan", type=Path, help="a TOML file of answers (docs/install.md) for unattended runs")
    p.add_argument("--by", help="who commissions (default: the login name)")
    p.add_argument("--data-dir", type=Path, help="override [gateway] data_dir (where the device key is)")
    p.add_argument("-o", "--out", type=Path, help="folder for the record and report (default commissioning-GW-TIME)")
    p.add_argument("--no-write", action="store_true", help="do not touch the site file")
    p.add_argument("--publish", action="store_true", help="publish the record on its MQTT topic (the site's broker)")
    handlers["commission"] = _cmd_commission

    p = sub.add_parser(
        "image",
        help="one flashable ESP32 image: MicroPython + a LittleFS with the gateway and the site",
        description="Find where the given official MicroPython image keeps its file system (its "
        "'vfs' partition, or from the end of the last partition to the end of the board's "
        "flash), build a LittleFS for that region holding the compiled gateway (.mpy), boot.py, "
        "main.py, umqtt, /config.json compiled from the site, the platform CA and command key, "
        "and merge everything with esptool's merge-bin into one image flashed at 0x0. No "
        "device secret goes into an image. See docs/install.md.",
    )
    p.add_argument("site", type=Path, help="the ESP32 site configuration (TOML)")
    p.add_argument("--board", help="board file id (default: the site's [gateway] board)")
    p.add_argument("--micropython", required=True, type=Path, metavar="FILE.bin", help="official MicroPython .bin")
    p.add_argument("-o", "--output", required=True, type=Path, help="the merged image to write")
    p.add_argument("--ca", type=Path, help="the platform CA certificate (stored where [mqtt] ca_file says)")
    p.add_argument(
        "--command-key", type=Path, help="the platform's command public key (stored where [signing] platform_key says)"
    )
    p.add_argument(
        "--umqtt",
        type=Path,
        help="folder holding umqtt/simple.py (default: build/deps/umqtt of this pilegate, made by make setup)",
    )
    handlers["image"] = _cmd_image

    p = sub.add_parser(
        "install",
        help="install the Pi gateway as a hardened systemd service (root)",
        description="Create the system user, /etc/pilegate and the data directory with their modes, "
        "a udev rule naming each USB RS-485 adapter /dev/pilegate-<bus>, the systemd unit "
        "(Type=notify, WatchdogSec, ProtectSystem=strict, NoNewPrivileges, devices by group), "
        "run provision and start the service. See docs/install.md.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML); copied to /etc/pilegate/site.toml")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="[BUS=]VID:PID[:SERIAL]",
        help="USB ids of a bus's RS-485 adapter as lsusb shows them (default: read from the plugged-in port)",
    )
    p.add_argument("--console-pin", action="store_true", help="also set a technician PIN (printed once)")
    p.add_argument("--exe", help="the pilegate executable the service runs (default: this one)")
    p.add_argument("--no-start", action="store_true", help="enable the service but do not start it now")
    p.add_argument("--root", type=Path, help="install into this folder instead of / (packaging, tests)")
    handlers["install"] = _cmd_install

    p = sub.add_parser(
        "uninstall",
        help="remove the service, unit, udev rule and configuration; keep the data unless --purge",
        description="Stop and disable the service and remove what 'pilegate install' made. The data "
        "directory (device key, unsent messages, state) and the user are kept unless --purge.",
    )
    p.add_argument("--purge", action="store_true", help="also delete the data directory and the user")
    p.add_argument("--data-dir", type=Path, help="the data directory (default: from /etc/pilegate/site.toml)")
    p.add_argument("--root", type=Path, help="uninstall from this folder instead of / (packaging, tests)")
    handlers["uninstall"] = _cmd_uninstall

    p = sub.add_parser(
        "flash",
        help="write an image to an ESP32 board, verify it, and print the new device key",
        description="Write an image made by 'pilegate image' with esptool (as a library): the chip "
        "is detected and checked against the board file, the image written at 0x0 and verified by "
        "reading it back, the board reset; then the tool waits for the first boot on the console "
        "and prints the device's key id and public key for the platform's key register. "
        "--production shows the flash-encryption and secure-boot plan and asks for a typed "
        "confirmation. See docs/install.md and docs/esp32.md.",
    )
    p.add_argument("image", type=Path, help="the image from 'pilegate image'")
    p.add_argument("--port", required=True, help="the board's USB serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--board", default="esp32-devkitc-max3485", help="board file id (default esp32-devkitc-max3485)")
    p.add_argument("--baud", type=int, default=460800, help="flashing speed (default 460800)")
    p.add_argument("--boot-timeout", type=float, default=60.0, metavar="S", help="wait this long for the first boot")
    p.add_argument("--production", action="store_true", help="show the eFuse plan and ask for a typed confirmation")
    handlers["flash"] = _cmd_flash
