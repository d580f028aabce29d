"""The `pilegate` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 the job ran and found a failure (e.g. a meter did not answer),
2 bad input (configuration, arguments), 3 an unexpected internal error.  Installers never see
a traceback unless they ask for one with --debug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pilegate import VERSION

Handler = Callable[[argparse.Namespace], int]


def _cmd_check(args: argparse.Namespace) -> int:
    from pilegate import siteconfig

    site, problems = siteconfig.load_site(args.site)
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{args.site}: {len(problems)} problem(s); nothing was changed", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.buffer.write(site.json_bytes + b"\n")
        return 0
    cfg = site.config
    print(f"{args.site}: OK: site {cfg['gateway']['site']}, gateway {cfg['gateway']['id']}, "
          f"board {cfg['gateway']['board']}, {len(cfg['bus'])} bus(es), {len(cfg['pile'])} "
          f"pile(s) each with its own meter, {len(cfg.get('bay', []))} bay(s)")
    print(f"config hash {site.config_hash}")
    return 0


def _load(site_path: Path):
    """Load a site or print its problems; returns the Site or None."""
    from pilegate import siteconfig

    site, problems = siteconfig.load_site(site_path)
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{site_path}: {len(problems)} problem(s); run 'pilegate check {site_path}'",
              file=sys.stderr)
    return site


def _cmd_read(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from pilegate import readout
    from pilegate.metering_service import poll_once

    site = _load(args.site)
    if site is None:
        return 2
    meters = asyncio.run(poll_once(site.config, timeout_s=args.timeout))
    rows = readout.rows(site.config, meters)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(readout.table(rows))
    return 1 if any(r["error"] for r in rows) else 0


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

    p = sub.add_parser("check", help="validate a site file; list every problem",
                       description="Validate site.toml against the schema and the rules of one "
                                   "pile, one meter. Exit 0 when valid, 2 with one "
                                   "FILE:KEY: message line per problem.")
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--json", action="store_true",
                   help="print the compiled JSON the ESP32 loads (defaults filled in, board and "
                        "profiles embedded)")
    handlers["check"] = _cmd_check

    p = sub.add_parser("read", help="read every meter once and print the values",
                       description="Poll every pile's meter once (values and serial number) and "
                                   "print a table, or JSON with --json. Exit 1 if any meter "
                                   "failed or is not the bound one.")
    p.add_argument("site", type=Path, help="the site configuration (TOML)")
    p.add_argument("--json", action="store_true", help="one JSON object per pile")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="give up on meters that have not answered after S seconds (default 30)")
    handlers["read"] = _cmd_read

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
        print(f"pilegate {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in pilegate; run again with --debug and report the output.",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
