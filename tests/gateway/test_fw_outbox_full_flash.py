"""The ESP32 flash outbox on a real file system that fills up (issue 9, defects #1 and #2).

Every put either stores its message (readable afterwards, in order) or stores nothing and says
so (False, OutboxFull or OSError); after space returns, puts go on. A put that was refused must
leave no hole behind it: the messages stored before and after it are all read back, so the
gateway's chain has no gap.
"""

from __future__ import annotations

import os

import pytest
from smallfs import small_fs

from pilefw.outbox import Outbox, OutboxFull


def test_puts_on_a_filling_flash_store_whole_or_nothing_and_resume(tmp_path):
    with small_fs(tmp_path / "flash", 1024) as fs:
        ob = Outbox(str(fs.path / "outbox"), max_bytes=4 * 1024 * 1024, segment_bytes=32 * 1024)
        body = os.urandom(1500)
        stored, refused = [], 0
        seq = 0
        filled = False
        for i in range(400):
            seq += 1
            kind = "billing" if i % 5 == 0 else "telemetry"
            if i == 40:
                fs.fill()
                filled = True
            if i == 200 and filled:
                fs.free()
            try:
                ok = ob.put(seq, kind, "pg/v1/s/gw/" + kind, body)
            except (OutboxFull, OSError):
                ok = False
            if ok:
                stored.append(seq)
            else:
                refused += 1
                seq -= 1  # the gateway signs the same seq again: nothing was stored
        assert refused > 0, "the file system never refused: the test did not test"
        assert len(stored) >= 240  # 40 before the fill, 200 after space returned
        got = []
        after = -1
        while True:
            batch = ob.pending(limit=64, after=after)
            if not batch:
                break
            got += [m[0] for m in batch]
            after = batch[-1][0]
        dropped = {s for s, _ in ob.take_dropped()}
        assert [s for s in stored if s not in dropped] == got
        assert got == sorted(got) and len(set(got)) == len(got)
        ob.close()
        reopened = Outbox(str(fs.path / "outbox"), max_bytes=4 * 1024 * 1024, segment_bytes=32 * 1024)
        try:
            last = reopened.last()
            assert last is not None and last[0] == stored[-1]
        finally:
            reopened.close()


pytestmark = pytest.mark.slow
