"""Digital inputs and relay outputs of the Pi's board (bay sensors, contactor contacts, interlocks).

The interface the rest of the gateway uses is small:

    inputs.read(name) -> 0 | 1 | None      electrical level of a board input (None: unreadable)
    relays.set(name, on)                   drive a board relay output

`BoardGpio` implements both on a real Raspberry Pi through the Linux GPIO character device with
the `gpiod` bindings (Debian/Raspberry Pi OS package python3-libgpiod), using the board file's
pin numbers (BCM).  `FileInputs` is the stand-in for hardware that cannot exist on a desk or in
CI: levels come from a small JSON file that the HIL simulator writes ({"DI1": 0, ...}), behind
the same interface.  Which one runs is chosen by `open_inputs`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("pilegate.gpio")


class GpioUnavailable(Exception):
    """The GPIO bindings or the chip are missing; the message says what to install or check."""


class BoardGpio:
    """Inputs and relays of a board definition on /dev/gpiochip0 via gpiod (libgpiod 1.x API)."""

    def __init__(self, board: dict[str, Any], chip: str = "gpiochip0"):
        try:
            import gpiod  # type: ignore[import-not-found]
        except ImportError as exc:
            raise GpioUnavailable(
                "the gpiod Python bindings are not installed: sudo apt-get install python3-libgpiod"
            ) from exc
        try:
            self.chip = gpiod.Chip(chip)
        except OSError as exc:
            raise GpioUnavailable(f"/dev/{chip}: {exc}") from exc
        self.inputs = {}
        for inp in board.get("input", []):
            line = self.chip.get_line(inp["pin"])
            flags = {
                "up": getattr(gpiod, "LINE_REQ_FLAG_BIAS_PULL_UP", 0),
                "down": getattr(gpiod, "LINE_REQ_FLAG_BIAS_PULL_DOWN", 0),
            }.get(inp.get("pull", "none"), 0)
            line.request(consumer="pilegate", type=gpiod.LINE_REQ_DIR_IN, flags=flags)
            self.inputs[inp["name"]] = line
        self.relays = {}
        for rel in board.get("relay", []):
            line = self.chip.get_line(rel["pin"])
            off = 0 if rel.get("active", "high") == "high" else 1
            # Fail-safe: every relay starts released; the interlock closes it once metered.
            line.request(consumer="pilegate", type=gpiod.LINE_REQ_DIR_OUT, default_vals=[off])
            self.relays[rel["name"]] = (line, rel.get("active", "high"))

    def read(self, name: str) -> int | None:
        line = self.inputs.get(name)
        if line is None:
            return None
        try:
            return int(line.get_value())
        except OSError as exc:
            log.warning("input %s unreadable: %s", name, exc)
            return None

    def set(self, name: str, on: bool) -> None:
        line, active = self.relays[name]
        line.set_value(int(on) if active == "high" else int(not on))


class FileInputs:
    """Board inputs read from a JSON file ({"DI1": 0, ...}) that a simulator keeps current."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def read(self, name: str) -> int | None:
        try:
            value = json.loads(self.path.read_text()).get(name)
        except (OSError, ValueError):
            return None
        return value if value in (0, 1) else None


def open_inputs(board: dict[str, Any]) -> Any:
    """The board's inputs: PILEGATE_FAKE_INPUTS=<json file> for HIL rigs, else real GPIO when the
    board has inputs (None, with a log line, when GPIO is not available here)."""
    fake = os.environ.get("PILEGATE_FAKE_INPUTS")
    if fake:
        log.info("board inputs come from %s (HIL stand-in for GPIO)", fake)
        return FileInputs(fake)
    if not board.get("input") and not board.get("relay"):
        return None
    try:
        return BoardGpio(board)
    except GpioUnavailable as exc:
        log.warning("board inputs and relays unavailable: %s", exc)
        return None
