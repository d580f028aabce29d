"""Reading a simulated site once, robust to a machine under load.

`poll_once` ends a meter's cycle after one read and its retry; on a loaded test machine (two
cores shared by many runs) a reply can miss both adaptive timeouts, which says nothing about the
code under test. `read_once` repeats the whole poll (at most `tries` times) only while a meter's
reading or serial read failed for lack of an answer; wrong values, faults and rejections are
returned at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pilegate.metering_service import poll_once

NO_ANSWER = ("timeout", "CRC error", "no answer within the time allowed")


def read_once(cfg: dict[str, Any], tries: int = 3, timeout_s: float = 20.0) -> dict[str, Any]:
    meters: dict[str, Any] = {}
    for _ in range(tries):
        meters = asyncio.run(poll_once(cfg, timeout_s=timeout_s))
        if not any(m.error in NO_ANSWER or m.identity_error in NO_ANSWER for m in meters.values()):
            break
    return meters
