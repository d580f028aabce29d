"""``python -m pilehil``: serve simulated meters until Ctrl-C.

    python -m pilehil --meter bus1:1:eastron-sdm120:10000001 \\
                      --meter bus1:2:profiles/meters/chint-dtsu666.toml:10000002:constant:11000 \\
                      --transport pty --baud 9600 --speed 60 --load ev

prints one ``BUS ENDPOINT`` line per bus, then runs until SIGINT/SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import zlib
from collections.abc import Sequence
from typing import Any

from .clock import ScaledClock
from .load import parse_load
from .registers import load_profile
from .site import TRANSPORTS, Site


def parse_meter(text: str) -> tuple[str, int, str, str, str | None]:
    """``BUS:ADDR:PROFILE:SERIAL[:LOAD]`` -> (bus, address, profile, serial, load or None).
    PROFILE is a TOML path or a profile id from profiles/meters/."""
    parts = text.split(":", 4)
    if len(parts) < 4 or not parts[1].isdigit() or not all(parts[:4]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected BUS:ADDR:PROFILE:SERIAL[:LOAD], e.g. bus1:1:eastron-sdm120:123"
        )
    return parts[0], int(parts[1]), parts[2], parts[3], parts[4] if len(parts) == 5 else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pilehil", description="Serve simulated energy meters over pseudo-terminals or TCP until Ctrl-C."
    )
    p.add_argument(
        "--meter",
        action="append",
        type=parse_meter,
        required=True,
        metavar="BUS:ADDR:PROFILE:SERIAL[:LOAD]",
        help="a meter; PROFILE is a TOML file or a profile id; repeat for more",
    )
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="pty",
        help="pty: Modbus RTU on /dev/pts/N; tcp: Modbus TCP; rtu+tcp: RTU frames over TCP (default pty)",
    )
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", choices=("N", "E", "O"), default="N")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    p.add_argument("--realtime", action="store_true", help="pace replies to the modelled RS-485 bus time")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)")
    p.add_argument("--load", default="ev", help="default load: ev[:SEED], constant:W[:PHASES] or idle (default ev)")
    p.add_argument("--seed", type=int, default=0, help="base seed of ev loads")
    p.add_argument("--host", default="127.0.0.1", help="TCP listen address")
    p.add_argument(
        "--port", type=int, default=0, help="first TCP port (buses get consecutive ports; 0 = any free port)"
    )
    return p


def build_site(args: argparse.Namespace) -> Site:
    """The :class:`Site` the CLI arguments describe (not started)."""
    site = Site(clock=ScaledClock(args.speed))
    profiles: dict[str, dict[str, Any]] = {}
    for bus, address, profile_ref, serial, load_text in args.meter:
        if bus not in site.buses:
            port = args.port + len(site.buses) if args.port else 0
            site.add_bus(
                bus, args.transport, args.baud, args.parity, args.stopbits, args.realtime, host=args.host, port=port
            )
        if profile_ref not in profiles:
            profiles[profile_ref] = load_profile(profile_ref)
        profile = profiles[profile_ref]
        # a per-meter seed, stable across runs, so meters on a site do not charge in lockstep
        seed = args.seed + zlib.crc32(f"{bus}:{address}".encode())
        load = parse_load(load_text or args.load, seed=seed, phases=int(profile["phases"]))
        # a DL/T 645 meter's address is its 12 digits (BUS:000012345678:chint-dtsu666-dlt645:...)
        where: int | str = f"{address:012d}" if profile.get("protocol") == "dlt645" else address
        site.add_meter(bus, where, profile, serial, load=load)
    return site


def run_site_forever(site: Site, stop: threading.Event | None = None) -> None:
    """Start ``site`` (if needed) and block until SIGINT/SIGTERM (or ``stop`` is set), then
    stop it. Signal handlers are installed only when called from the main thread and are
    restored afterwards."""
    stop = stop if stop is not None else threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        site.start()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        site.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 1
    try:
        site = build_site(args)
        endpoints = site.start()
    except (OSError, ValueError, KeyError) as exc:
        print(f"pilehil: {exc}", file=sys.stderr)
        return 1
    for bus, endpoint in endpoints.items():
        print(f"{bus} {endpoint}", flush=True)
    if args.transport == "pty" and args.parity != "N":
        print(
            f"pilehil: note: Linux ptys take no parity setting; open the ports with parity "
            f"N (the timing model still uses {args.parity})",
            file=sys.stderr,
            flush=True,
        )
    run_site_forever(site)
    return 0
