"""The `pilegate` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 the job ran and found a failure (e.g. a meter did not answer),
2 bad input (configuration, arguments), 3 an unexpected internal error.  Installers never see
a traceback unless they ask for one with --debug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pilegate import VERSION

Handler = Callable[[argparse.Namespace], int]
# Other packages add subcommands through this entry-point group (see piletools.commands): the
# gateway never imports the platform's tools, the rig or the demo, it only lists what is installed.
COMMAND_GROUP = "pilegate.commands"
EXIT_STORAGE = 74  # EX_IOERR: data_dir refused the outbox at start; systemd restarts the gateway


def _cmd_check(args: argparse.Namespace) -> int:
    from pilegate import siteconfig

    # The files a site names are checked here on the Pi; compiled for an ESP32 (--json) they
    # name files on the device, which this machine cannot see.
    site, problems = siteconfig.load_site(args.site, files=not (args.json or args.no_files))
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{args.site}: {len(problems)} problem(s); nothing was changed", file=sys.stderr)
        return 2
    if args.json:
        for keypath, name in siteconfig.named_files(site.config):
            print(f"{args.site}:{keypath}: note: {name} is read on the ESP32; not checked here", file=sys.stderr)
        sys.stdout.buffer.write(site.json_bytes + b"\n")
        return 0
    cfg = site.config
    print(
        f"{args.site}: OK: site {cfg['gateway']['site']}, gateway {cfg['gateway']['id']}, "
        f"board {cfg['gateway']['board']}, {len(cfg['bus'])} bus(es), {len(cfg['pile'])} "
        f"pile(s) each with its own meter, {len(cfg.get('bay', []))} bay(s)"
    )
    print(f"config hash {site.config_hash}")
    return 0


def load_site_or_report(site_path: Path, files: bool = False) -> Any:
    """Load a site or print its problems; returns the Site or None.  files: check the files
    the site names too (for `run`)."""
    from pilegate import siteconfig

    site, problems = siteconfig.load_site(site_path, files=files)
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{site_path}: {len(problems)} problem(s); run 'pilegate check {site_path}'", file=sys.stderr)
    return site


def _cmd_read(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from pilegate import readout
    from pilegate.metering_service import poll_once

    site = load_site_or_report(args.site)
    if site is None:
        return 2
    meters = asyncio.run(poll_once(site.config, timeout_s=args.timeout))
    rows = readout.rows(site.config, meters)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(readout.table(rows))
    return 1 if any(r["error"] for r in rows) else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from pilegate.keys import KeyFileError
    from pilegate.outbox import OutboxFull
    from pilegate.runtime import Gateway

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    site = load_site_or_report(args.site, files=True)
    if site is None:
        return 2

    async def main() -> int:
        # pymodbus's asyncio clients must be created inside the running loop
        try:
            hil = _hil_clock()
            kw: dict[str, Any] = {} if hil is None else {"wall": hil[0], "mono": hil[1]}
            gw = Gateway(site, data_dir=args.data_dir, poll_s=args.poll, interval_s=args.interval, **kw)
            if hil is not None:
                gw.tick_s = 1.0 / hil[2]  # one site second
        except OutboxFull as exc:  # data_dir full or failing before anything was signed
            print(f"pilegate run: {exc}", file=sys.stderr)
            return EXIT_STORAGE
        except (KeyFileError, OSError, ValueError) as exc:
            print(f"pilegate run: {exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await gw.run(stop)

    return asyncio.run(main())


def _hil_clock() -> tuple[Any, Any, float] | None:
    """(wall, monotonic, speed) of the HIL rig's shared site clock, or None outside a rig.

    Only the HIL rig sets PILEGATE_HIL_CLOCK="start=S,speed=X,t0=M" (docs/hil.md): site time is
    S + (CLOCK_MONOTONIC - M) * X, the same in the rig's simulator and in this process, so an
    hour of site time passes in 3600/X seconds.  Bus timeouts stay in real time."""
    text = os.environ.get("PILEGATE_HIL_CLOCK")
    if not text:
        return None
    f: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        f[key.strip()] = float(value)
    start, speed, t0 = f["start"], f["speed"], f["t0"]
    if speed <= 0:
        raise ValueError("PILEGATE_HIL_CLOCK: speed must be > 0")
    log = logging.getLogger("pilegate")
    log.warning("HIL site clock: %s x real time from %s (PILEGATE_HIL_CLOCK; never on a real site)", speed, start)
    return (
        lambda: start + (time.monotonic() - t0) * speed,
        lambda: (time.monotonic() - t0) * speed,
        speed,
    )


def _site_and_key(args: argparse.Namespace) -> tuple[Any, Any, bool, Path] | None:
    """The site and its device key (created on first use), or None after printing why."""
    from pilegate import keys

    site = load_site_or_report(args.site)
    if site is None:
        return None
    data_dir = args.data_dir or Path(site.config["gateway"]["data_dir"])
    try:
        key, created = keys.load_or_create(data_dir)
    except (keys.KeyFileError, OSError) as exc:
        print(f"pilegate {args.command}: {exc}", file=sys.stderr)
        return None
    return site, key, created, data_dir


def _cmd_keys(args: argparse.Namespace) -> int:
    loaded = _site_and_key(args)
    if loaded is None:
        return 2
    site, key, created, _ = loaded
    gw = site.config["gateway"]["id"]
    if args.register:
        print(f'[[key]]\ngateway = "{gw}"\nkid = "{key.kid}"\npem = """\n{key.public_pem}"""')
    else:
        print(f"gateway {gw}\nkid {key.kid}{'  (key generated now)' if created else ''}")
        print(key.public_pem, end="")
    return 0


def _cmd_provision(args: argparse.Namespace) -> int:
    import os
    import secrets

    from pilecore import pinhash

    loaded = _site_and_key(args)
    if loaded is None:
        return 2
    site, key, created, data_dir = loaded
    gw = site.config["gateway"]["id"]
    print(f"gateway {gw}: device key {'generated' if created else 'present'}, kid {key.kid}")
    if args.console_pin:
        pin = "".join(secrets.choice("0123456789") for _ in range(args.pin_digits))
        record = pinhash.make_record(pin, secrets.token_bytes(16), args.iterations)
        path = Path(data_dir) / "console-pin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(record + "\n")
        os.chmod(path, 0o600)
        print(f"technician PIN for {gw}: {pin}")
        print("  write it down now: the gateway keeps only a salted PBKDF2 hash, it cannot be shown again;")
        print("  a running gateway picks it up at its next start")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="pilegate",
        description="Edge gateway for EV charging-pile sites: one pile, one meter; bay "
        "occupancy; signed telemetry to the city platform.",
    )
    parser.add_argument("--version", action="version", version=f"pilegate {VERSION}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    p = sub.add_parser(
        "check",
        help="validate a site file; list every problem",
        description="Validate site.toml against the schema and the rules of one "
        "pile, one meter, and check the files it names (present, readable, private keys "
        "and the password file mode 0600, contents as expected). Exit 0 when valid, 2 with one "
        "FILE:KEY: message line per problem.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the compiled JSON the ESP32 loads (defaults filled in, board and profiles embedded); "
        "the files the site names are on the ESP32 and are not checked",
    )
    p.add_argument(
        "--no-files",
        action="store_true",
        help="check the site file alone, not the files it names (certificates, keys, password): "
        "for a machine other than the gateway",
    )
    handlers["check"] = _cmd_check

    p = sub.add_parser(
        "read",
        help="read every meter once and print the values",
        description="Poll every pile's meter once (values and serial number) and "
        "print a table, or JSON with --json. Exit 1 if any meter "
        "failed or is not the bound one.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--json", action="store_true", help="one JSON object per pile")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up on meters that have not answered after S seconds (default 30)",
    )
    handlers["read"] = _cmd_read

    p = sub.add_parser(
        "run",
        help="run the gateway",
        description="Run the gateway: poll the meters, enforce one pile one meter, "
        "publish signed telemetry. Stops cleanly on SIGINT/SIGTERM.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--data-dir", type=Path, help="override [gateway] data_dir (key, outbox, state)")
    p.add_argument("--poll", type=float, metavar="S", help="override [metering] poll_s")
    p.add_argument("--interval", type=int, metavar="S", help="override [telemetry] interval_s")
    handlers["run"] = _cmd_run

    p = sub.add_parser(
        "keys",
        help="print the device public key and its kid",
        description="Print the gateway's public key (PEM) and kid for the platform's "
        "key register, generating the key on first use. The private key "
        "is never printed.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--data-dir", type=Path, help="override [gateway] data_dir")
    p.add_argument("--register", action="store_true", help="print a [[key]] entry for a verifier key register file")
    handlers["keys"] = _cmd_keys

    p = sub.add_parser(
        "provision",
        help="create the device key and the technician console PIN",
        description="Create the gateway's device key if it has none, and with --console-pin "
        "a new random technician PIN, unique to this gateway, stored only as a "
        "salted PBKDF2-HMAC-SHA256 hash (file mode 0600). The PIN is printed once.",
    )
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--data-dir", type=Path, help="override [gateway] data_dir")
    p.add_argument("--console-pin", action="store_true", help="set a new technician PIN (replaces the old one)")
    p.add_argument(
        "--pin-digits",
        type=int,
        default=8,
        choices=range(6, 13),
        metavar="N",
        help="PIN length, 6-12 digits (default 8)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=200000,
        help="PBKDF2 iterations (default 200000 on a Pi; use about 20000 for an ESP32)",
    )
    handlers["provision"] = _cmd_provision

    for ep in entry_points(group=COMMAND_GROUP):
        ep.load()(sub, handlers)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last line of defence: no traceback for installers
        if args.debug:
            raise
        print(
            f"pilegate {args.command}: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in pilegate; run again with --debug and report the output.",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
