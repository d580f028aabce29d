"""Run the ESP32 App on the MicroPython WebAssembly VM as a free-running process: the rig's `mpy`
DUT (docs/hil.md), on the harness of issue 11 (pilehil.mpyapp, tests/mpy/app_harness.mjs).

    python -m piletools.rig.mpy_host config.json --root DIR --uart 2=/dev/pts/5 --console /dev/pts/6

The harness drives the App pass by pass; this host runs passes in a loop.  Time: before the App
is built, the VM's `hw.time()` and `hw.ticks_ms()` are rebound to the rig's shared site clock
(PILEGATE_HIL_CLOCK): the host reads the site time and the VM's real ticks at one instant and
the VM extrapolates with the speed, so both sides agree to within one bridge call.  The RTU
master's reply timeouts keep the VM's real ticks, as on a board.  /data lives in the VM's memory:
the device key is provisioned by the rig (device.key in --root is copied in), and a SIGKILL (the
rig's power cut) loses the VM's file system with the process, as a board that loses its flash
would; clean stops (SIGTERM) close the App.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--root", required=True, help="the rig's data dir (device.key is provisioned from here)")
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
    key = Path(args.root) / "device.key"
    if key.exists():
        files["/data/device.key"] = key.read_bytes()
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    with mpyapp.MpyApp(Path(args.root) / "vm") as vm:
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
