"""The installer's `pilegate` subcommands: commission (and `verify --record`), image, flash,
install, uninstall.  Registered by piletools.commands; each handler imports its module only
when it runs, so `pilegate --help` stays fast and `pilegate run` never loads any of them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pilegate.cli import Handler


def verify_record(args: argparse.Namespace) -> int:
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


def register(sub: Any, handlers: dict[str, Handler]) -> None:
    """Add the installer's subcommands to the `pilegate` parser."""
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
    p.add_argument("--timeout-ms", type=int, default=300, help="how long to wait for a reply (default 300 ms)")
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
