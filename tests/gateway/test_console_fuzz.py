"""Fuzz the Pi console server for a few seconds (seeded) while a dummy gateway task keeps ticking.

Three terminals at once: a serial line (pseudo-terminal) and a UNIX-socket client that both read
everything, and a socket client that never reads.  They send random bytes, random command lines
(valid, malformed, overlong, invalid UTF-8, control characters, escape sequences, Ctrl-C, PINs,
scans and register reads) and Ctrl-D now and then.  Checked:

- responsiveness: afterwards `status` answers on a fresh socket connection and on the serial line;
- no starvation: a task that wants to run every 10 ms keeps running (its lateness is printed);
- bounded memory, measured two ways: (1) the internal buffers, sampled on every tick: the
  interpreter's pending line (<= max_line), its poll queue (<= max_queue + max_output) and each
  session's output backlog (<= max_pending_out plus one chunk); (2) tracemalloc: Python memory
  still allocated after the run, compared with before it (no growth beyond MAX_GROWTH bytes),
  and the peak during the run.
The figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pty
import random
import socket
import time
import tracemalloc

from test_console import PIN, RECORD, FakeBackend

from pilecore.console import AuthState
from pilegate.console_server import ConsoleServer

SEED = 20251126
DURATION_S = 3.0
TICK_S = 0.01
MAX_PENDING_OUT = 32768
MAX_GROWTH = 512 * 1024

WORDS = [
    "status",
    "piles",
    "meter",
    "bays",
    "bay",
    "events",
    "mqtt",
    "bus",
    "mbread",
    "scan",
    "log",
    "selftest",
    "keys",
    "login",
    "logout",
    "whoami",
    "help",
    "set",
    "interlock",
    "reboot",
    "factory-reset",
    "repl",
    "echo",
    "--json",
    "P01",
    "P02",
    "B01",
    "rs485-1",
    "on",
    "off",
    "auto",
    "1",
    "3",
    "0",
    "0x10",
    "125",
    "1-247",
    "1-3",
    "-1",
    "99999",
    PIN,
    "000000",
    "debug",
    "东1",
]


class FuzzBackend(FakeBackend):
    """Answers mbread/scan from the loop, like the bus scheduler; never really reboots."""

    def mbread(self, d):
        super().mbread(d)
        asyncio.get_running_loop().call_later(0.005, d.complete, {"values": list(range(d.request[5]))})

    def scan(self, d):
        super().scan(d)
        loop = asyncio.get_running_loop()
        last = min(d.request[3], d.request[2] + 40)

        def step(addr: int) -> None:
            if d.cancelled:
                return
            d.progress({"addr": addr, "answered": addr % 5 == 0})
            if addr < last:
                loop.call_soon(step, addr + 1)
            else:
                d.complete({"found": list(range(d.request[2], last + 1, 5))})

        loop.call_soon(step, d.request[2])


def random_input(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.35:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512)))
    if kind < 0.80:
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        line = " ".join(words).encode()
        end = rng.choice([b"\r", b"\n", b"\r\n", b"", b"\x03"])
        return line + end
    if kind < 0.88:
        return b"A" * rng.randint(200, 3000) + b"\r"  # overlong
    if kind < 0.93:
        return rng.choice(
            [b"\x1b[A", b"\x1b[1;5C", b"\x1bOP", b"\x7f\x7f", b"\x08", b"\xff\xfe\r", b"\xc3\r", b"\x00\x01\x02\r"]
        )
    if kind < 0.97:
        return b"login\r" + rng.choice([PIN.encode(), b"123456", b""]) + b"\r"
    return b"\x04"  # Ctrl-D: the session ends


def test_console_server_survives_random_input_and_stays_bounded(tmp_path):
    rng = random.Random(SEED)
    sock_path = tmp_path / "console.sock"
    master, slave = pty.openpty()
    tty_path = os.ttyname(slave)
    os.close(slave)
    stats = {
        "sent": 0,
        "received": 0,
        "reconnects": 0,
        "ticks": 0,
        "max_late": 0.0,
        "max_line": 0,
        "max_queue": 0,
        "max_backlog": 0,
        "dropped": 0,
        "stalled_disconnects": 0,
    }

    async def main() -> None:
        loop = asyncio.get_running_loop()
        b = FuzzBackend()
        server = ConsoleServer(
            b,
            AuthState(RECORD),
            serial_port=tty_path,
            socket_path=sock_path,
            max_pending_out=MAX_PENDING_OUT,
            stall_close_s=1.0,
            poll_interval_s=0.05,
        )
        await server.start()
        done = asyncio.Event()

        async def ticker() -> None:
            due = loop.time() + TICK_S
            while not done.is_set():
                await asyncio.sleep(max(0.0, due - loop.time()))
                now = loop.time()
                stats["max_late"] = max(stats["max_late"], now - due)
                stats["ticks"] += 1
                due = now + TICK_S
                sessions = list(server.sessions) + ([server.serial] if server.serial else [])
                for s in sessions:
                    c = s.console
                    stats["max_line"] = max(stats["max_line"], c.pending_len())
                    stats["max_queue"] = max(stats["max_queue"], c._queued)
                    stats["max_backlog"] = max(stats["max_backlog"], s.backlog())

        async def reading_socket_client() -> None:
            while not done.is_set():
                r, w = await asyncio.open_unix_connection(str(sock_path))
                stats["reconnects"] += 1

                async def reader(r: asyncio.StreamReader = r) -> None:
                    while True:
                        try:
                            chunk = await r.read(65536)
                        except ConnectionError:  # the server hung up (Ctrl-D) on unread input
                            return
                        if not chunk:
                            return
                        stats["received"] += len(chunk)

                rt = asyncio.create_task(reader())
                try:
                    while not done.is_set() and not rt.done():
                        data = random_input(rng)
                        w.write(data)
                        stats["sent"] += len(data)
                        await asyncio.sleep(0.002)
                finally:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
                    rt.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await rt

        async def serial_terminal() -> None:
            os.set_blocking(master, False)
            while not done.is_set():
                data = random_input(rng)
                with contextlib.suppress(BlockingIOError):
                    stats["sent"] += os.write(master, data)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        chunk = os.read(master, 65536)
                        if not chunk:
                            break
                        stats["received"] += len(chunk)
                await asyncio.sleep(0.002)

        async def silent_socket_client() -> None:
            """Writes commands and never reads: the server must cut it off, not buffer for it."""
            while not done.is_set():
                raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                raw.connect(str(sock_path))
                raw.setblocking(False)
                try:
                    while not done.is_set():
                        try:
                            stats["sent"] += raw.send(b"help\r" * 20)
                        except BlockingIOError:
                            pass
                        except OSError:  # disconnected by the server for not reading
                            stats["stalled_disconnects"] += 1
                            break
                        await asyncio.sleep(0.005)
                finally:
                    raw.close()

        tasks = [
            asyncio.create_task(t()) for t in (ticker, reading_socket_client, serial_terminal, silent_socket_client)
        ]
        await asyncio.sleep(DURATION_S)
        done.set()
        await asyncio.gather(*tasks)
        stats["dropped"] = server.dropped_total

        # still responsive: a fresh connection, and the serial line after Ctrl-C
        r, w = await asyncio.open_unix_connection(str(sock_path))
        w.write(b"status\r")
        got = b""
        deadline = loop.time() + 5
        while b"LY-0001" not in got and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                got += await asyncio.wait_for(r.read(65536), max(0.01, deadline - loop.time()))
        assert b"gateway      LY-0001" in got
        w.close()
        os.set_blocking(master, True)
        os.write(master, b"\x03\x1b\rstatus\r")
        got = b""
        deadline = time.monotonic() + 5
        os.set_blocking(master, False)
        while b"gateway      LY-0001" not in got and time.monotonic() < deadline:
            ready = asyncio.Event()
            loop.add_reader(master, ready.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), max(0.01, deadline - time.monotonic()))
            loop.remove_reader(master)
            with contextlib.suppress(BlockingIOError):
                got += os.read(master, 65536)
        assert b"gateway      LY-0001" in got
        await server.close()

    tracemalloc.start()
    try:
        asyncio.run(_warm_up(tmp_path))  # imports, caches, first-use tables
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        asyncio.run(main())
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(master)

    print(
        f"\nconsole fuzz (seed {SEED}, {DURATION_S} s): sent {stats['sent']} B, received "
        f"{stats['received']} B, {stats['reconnects']} socket sessions, "
        f"{stats['stalled_disconnects']} silent clients cut off, {stats['dropped']} B dropped; "
        f"ticks {stats['ticks']}, max tick lateness {stats['max_late'] * 1000:.1f} ms; max pending line "
        f"{stats['max_line']} B, max poll queue {stats['max_queue']} chars, max output backlog "
        f"{stats['max_backlog']} B; tracemalloc: peak {peak - before} B above the start, "
        f"{after - before} B still allocated after"
    )
    # The loop kept running beside the flood (the ticker ran); how late its ticks were is printed
    # above as a figure, not asserted: a timed assertion fails on a loaded machine, not on a defect.
    assert stats["sent"] > 50000 and stats["ticks"] > 50
    assert stats["max_line"] <= 256
    assert stats["max_queue"] <= 4096 + 16384
    assert stats["max_backlog"] <= MAX_PENDING_OUT + 2 * 16384 + 1024  # + one chunk's answers
    assert stats["stalled_disconnects"] >= 1 and stats["dropped"] > 0
    assert after - before < MAX_GROWTH


async def _warm_up(tmp_path) -> None:
    server = ConsoleServer(FakeBackend(), AuthState(RECORD), socket_path=tmp_path / "warm.sock")
    await server.start()
    r, w = await asyncio.open_unix_connection(str(tmp_path / "warm.sock"))
    w.write(b"help\rstatus --json\rpiles\rbus\r")
    got = b""
    while got.count(b"pilegate> ") < 5:
        got += await asyncio.wait_for(r.read(65536), 5)
    w.close()
    await server.close()
