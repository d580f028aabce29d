"""Run the ESP32 App on the MicroPython WebAssembly VM as a free-running process: the rig's `mpy`
DUT (docs/hil.md), on the harness of issue 11 (pilehil.mpyapp, tests/mpy/app_harness.mjs).

    python -m piletools.rig.mpy_host config.json --root DIR [--workdir DIR] --uart 2=/dev/pts/5 --console /dev/pts/6

The harness drives the App pass by pass; this host runs passes in a loop.  Time: before the App
is built, the VM's `hw.time()` and `hw.ticks_ms()` are rebound to the rig's shared site clock
(PILEGATE_HIL_CLOCK): the host reads the site time and the VM's real ticks at one instant and
the VM extrapolates with the speed, so both sides agree to within one bridge call.  The RTU
master's reply timeouts keep the VM's real ticks, as on a board.

The flash: --root (the rig's data dir, holding the device.key the rig provisioned; on the
scenario's small tmpfs when it sets data_fs_kb) is mounted into the VM as the App's /data, so
every write the App makes is in that directory when its write() returns, a full file system
is OSError(28) (ENOSPC) in the VM where a full LittleFS raises it on a board, and a SIGKILL of
this process group (the rig's power cut) keeps everything written before it: the next start
boots on the same flash, as a board does.  Clean stops (SIGTERM) close the App.  The compiled
firmware (the VM's /lib) goes to --workdir (default: a temporary directory), never onto the
flash.  The files the site names that an installer provisions (the platform's command key, the
broker password) are copied into the VM at their paths.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pilehil.clock import ENV_VAR, SiteClock

# App.run naps this long after a pass that did nothing (firmware/pilefw/app.py): the free-running
# VM does the same, so it leaves the host's cores to the simulator and the broker as a board would.
IDLE_NAP_MS = 5


def _clock_code(clock: SiteClock, vm_ticks_ms: int) -> str:
    site_now = clock()
    return (
        f"_S0 = {site_now!r}\n"
        f"_M0 = {vm_ticks_ms}\n"
        f"_X = {clock.speed!r}\n"
        f"_K0 = {int(clock.mono() * 1000)}\n"
        "import time as _time\n"
        "_hw.time = lambda: _S0 + _time.ticks_diff(_time.ticks_ms(), _M0) * _X / 1000\n"
        "_hw.ticks_ms = lambda: _K0 + int(_time.ticks_diff(_time.ticks_ms(), _M0) * _X)\n"
    )


def _provisioned(cfg: dict[str, Any]) -> dict[str, bytes]:
    """The files the compiled site names that an installer puts on the board's flash (the
    platform's command key, the broker password), copied into the VM at the same path: without
    them the App refuses every command ("no platform key configured")."""
    paths = [cfg.get("signing", {}).get("platform_key"), cfg.get("mqtt", {}).get("password_file")]
    return {p: Path(p).read_bytes() for p in paths if p and Path(p).is_file()}


def harness() -> Any:
    """The harness module (issue 11), wherever it lives: pilehil.mpyapp or piletools.mpyapp."""
    import importlib

    for name in ("pilehil.mpyapp", "piletools.mpyapp"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="compiled site JSON (pilegate check --json)")
    p.add_argument("--root", required=True, help="the rig's data dir: the App's /data (its flash)")
    p.add_argument("--workdir", help="where the VM's compiled /lib is built (default: a temporary directory)")
    p.add_argument("--uart", action="append", default=[], metavar="ID=PATH")
    p.add_argument("--console")
    args = p.parse_args(argv)
    mpyapp = harness()
    if mpyapp is None:
        print("mpy_host: the MicroPython App harness (mpyapp, issue 11) is not in this tree", file=sys.stderr)
        return 2
    env = os.environ.get(ENV_VAR)
    clock = SiteClock.parse(env) if env else None
    uarts = {int(k): "pty:" + v for k, _, v in (u.partition("=") for u in args.uart)}
    files: dict[str, bytes] = {"/config.json": Path(args.config).read_bytes()}
    files.update(_provisioned(json.loads(files["/config.json"])))
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    workdir = Path(args.workdir) if args.workdir else None
    with mpyapp.MpyApp(workdir, data_dir=Path(args.root)) as vm:
        vm.load(uarts, "pty:" + args.console if args.console else None, files)
        if clock is not None:
            vm.exec(_clock_code(clock, int(vm.value("__import__('time').ticks_ms()"))))
        info = vm.boot()
        print(f"mpy_host: App started on MicroPython {vm.version}, epoch {info['epoch']}", flush=True)
        while running:
            vm.step(20, idle_ms=IDLE_NAP_MS)
        vm.exec("_gw.close()")
    return 0


if __name__ == "__main__":
    sys.exit(main())
