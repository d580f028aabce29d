"""The Pi console server as a technician meets it: over a real pseudo-terminal, over the UNIX
socket, and through `pilegate console` (piletools.console_client), including the interactive
client driven through its own pseudo-terminal (Tab completion, history, hidden PIN).

Every read has a deadline; nothing sleeps to wait.  Time-driven behaviour (idle logout, stalled
clients) runs on an injected clock that the test advances, then `server.wake_all()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import io
import json
import os
import pty
import select
import socket
import stat
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import serial
from test_console import PIN, RECORD, FakeBackend

from pilecore.console import AuthState
from pilegate.console_server import ConsoleError, ConsoleServer
from piletools import console_client

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class AsyncBackend(FakeBackend):
    """Answers mbread and scan later, from the event loop, as the bus scheduler would."""

    FOUND = (3, 7)

    def mbread(self, d):
        super().mbread(d)
        asyncio.get_running_loop().call_soon(d.complete, {"values": [0x00FF, 0x8000][: d.request[5]]})

    def scan(self, d):
        super().scan(d)
        loop = asyncio.get_running_loop()
        first, last = d.request[2], d.request[3]

        def step(addr: int) -> None:
            if d.cancelled:
                return
            d.progress({"addr": addr, "answered": addr in self.FOUND})
            if addr < last:
                loop.call_soon(step, addr + 1)
            else:
                d.complete({"found": [a for a in self.FOUND if first <= a <= last]})

        loop.call_soon(step, first)


class PtyTerminal:
    """The technician's end of a pseudo-terminal: write keys, read until a text, with a deadline."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = b""

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def expect(self, needle: bytes, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.buf:
            ready = asyncio.Event()
            loop.add_reader(self.fd, ready.set)
            try:
                await asyncio.wait_for(ready.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"no {needle!r} within {timeout} s; got {self.buf[-400:]!r}") from None
            finally:
                loop.remove_reader(self.fd)
            with contextlib.suppress(BlockingIOError):
                self.buf += os.read(self.fd, 65536)
        i = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def drain(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            data += chunk
        return data


class SocketTerminal:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buf = b""

    @classmethod
    async def connect(cls, path: Path) -> SocketTerminal:
        r, w = await asyncio.open_unix_connection(str(path))
        return cls(r, w)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def expect(self, needle: bytes, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.buf:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"no {needle!r} within {timeout} s; got {self.buf[-400:]!r}") from None
            if not chunk:
                raise AssertionError(f"connection closed before {needle!r}; got {self.buf[-400:]!r}")
            self.buf += chunk
        i = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    async def eof(self, timeout: float = 5.0) -> bytes:
        rest = await asyncio.wait_for(self.reader.read(), timeout)
        return self.buf + rest

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def _pty_pair() -> tuple[int, str]:
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    os.close(slave)  # the server opens it by name, as it would /dev/serial0
    return master, path


# ---------------------------------------------------------------- serial over a pty


def test_serial_console_as_a_technician_uses_it():
    async def main() -> None:
        master, path = _pty_pair()
        b = AsyncBackend()
        clock = Clock()
        auth = AuthState(RECORD)
        server = ConsoleServer(b, auth, serial_port=path, clock=clock, poll_interval_s=0.05)
        await server.start()
        term = PtyTerminal(master)
        try:
            greeting = await term.expect(b"pilegate> ")
            assert greeting.startswith(b"pilegate console on gateway LY-0001.")
            # On a real UART that greeting went out before anyone was attached: the first
            # Enter of the session brings the banner and the prompt (and nothing else).
            term.send(b"\r")
            assert await term.expect(b"pilegate> ") == greeting

            # echo, editing, CRLF answers
            term.send(b"statux\x7fs\r")
            out = await term.expect(b"pilegate> ")
            assert out.startswith(b"statux\x08 \x08s\r\n")
            assert b"gateway      LY-0001\r\n" in out and b"uptime_s     1d 02:03:04\r\n" in out

            term.send(b"piles --json\r")
            out = await term.expect(b"pilegate> ")
            line = out.split(b"\r\n")[1]
            assert [p["id"] for p in json.loads(line)["piles"]] == ["P01", "P02"]

            # Ctrl-C clears a half line
            term.send(b"reboo\x03")
            assert (await term.expect(b"pilegate> ")).endswith(b"^C\r\npilegate> ")

            # login: the PIN is not echoed
            term.send(b"login\r")
            await term.expect(b"PIN: ")
            term.send(PIN.encode() + b"\r")
            out = await term.expect(b"pilegate# ")
            assert PIN.encode() not in out and b"logged in as technician" in out
            term.send(b"interlock P01 off\r")
            await term.expect(b"pilegate# ")
            audit = b.audits[-1]
            assert audit["cmd"] == "interlock" and audit["origin"] == f"serial {path}"
            assert audit["who"] == "technician" and audit["result"] == "ok"

            # a register read and a scan go through the backend asynchronously
            term.send(b"mbread rs485-1 1 3 0 2\r")
            out = await term.expect(b"pilegate# ")
            assert b"0x00FF" in out and b"0x8000" in out and b"-32768" in out
            term.send(b"scan rs485-1 1-20\r")
            out = await term.expect(b"pilegate# ")
            assert b"address 3 answered" in out and b"scanned up to 16, 2 found" in out
            assert b"scan rs485-1 1-20: 2 device(s) answered: 3, 7" in out

            # idle logout, on the injected clock
            clock.t += 600
            server.wake_all()
            out = await term.expect(b"pilegate> ")
            assert b"idle for 600 s: logged out" in out
            assert b.audits[-1]["result"] == "idle"

            # Ctrl-D ends the session; the next one starts logged out, lockout intact
            term.send(b"login\r")
            await term.expect(b"PIN: ")
            term.send(b"999999\r")
            assert b"wrong PIN" in await term.expect(b"pilegate> ")
            term.send(b"\x04")
            out = await term.expect(b"pilegate> ")
            assert b"session ended" in out and b"pilegate console on gateway" in out
            term.send(b"login\r")
            assert b"login locked after 1 failed attempt(s)" in await term.expect(b"pilegate> ")
        finally:
            await server.close()
            os.close(master)

    asyncio.run(main())


def test_serial_output_is_bounded_when_the_terminal_does_not_read():
    async def main() -> None:
        master, path = _pty_pair()
        b = FakeBackend()
        server = ConsoleServer(
            b, AuthState(RECORD), serial_port=path, clock=Clock(), max_pending_out=8192, poll_interval_s=0.05
        )
        await server.start()
        term = PtyTerminal(master)
        loop = asyncio.get_running_loop()
        try:
            await term.expect(b"pilegate> ")
            # 400 commands (~130 KB of answers) and nobody reading: the pty fills up, then the
            # server's own buffer; the rest is dropped.  Ten at a time: the interpreter skips
            # lines beyond max_output of answers per chunk of input (tested in the core).
            deadline = loop.time() + 10
            base = b.calls.count("status") + 1  # the greeting asks: at start, again on the first input
            for i in range(1, 41):
                term.send(b"status\r" * 10)
                while b.calls.count("status") < base + 10 * i and loop.time() < deadline:
                    await asyncio.sleep(0)  # yield to the server's reader
            assert b.calls.count("status") == base + 400
            session = server.serial
            assert session.dropped_total > 0
            assert session.max_backlog <= 8192
            # the technician reads again: what was kept arrives, then the loss is reported
            deadline = loop.time() + 5
            while loop.time() < deadline:
                got = term.drain()
                if not got and not session.backlog():
                    break
                await asyncio.sleep(0)
            term.send(b"whoami\r")
            out = await term.expect(b"pilegate> ")
            assert b"bytes of output dropped: the terminal did not read them" in out
            assert b"anonymous" in out
        finally:
            await server.close()
            os.close(master)

    asyncio.run(main())


def test_serial_device_that_is_missing_does_not_stop_the_server(tmp_path, caplog):
    async def main() -> None:
        server = ConsoleServer(
            FakeBackend(),
            AuthState(RECORD),
            serial_port=str(tmp_path / "ttyNONE"),
            socket_path=tmp_path / "run" / "c.sock",
            reopen_s=0.05,
        )
        await server.start()
        try:
            term = await SocketTerminal.connect(tmp_path / "run" / "c.sock")
            await term.expect(b"pilegate> ")
            term.send(b"whoami\n")
            assert b"anonymous" in await term.expect(b"pilegate> ")
            await term.close()
        finally:
            await server.close()

    asyncio.run(main())
    assert "console tty" in caplog.text and "ttyNONE" in caplog.text


# ---------------------------------------------------------------- the UNIX socket


def test_socket_sessions_are_separate_but_share_the_lockout(tmp_path):
    sock = tmp_path / "run" / "pilegate" / "console.sock"

    async def main() -> None:
        b = FakeBackend()
        server = ConsoleServer(b, AuthState(RECORD), socket_path=sock, clock=Clock())
        await server.start()
        try:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o750
            one = await SocketTerminal.connect(sock)
            two = await SocketTerminal.connect(sock)
            await one.expect(b"pilegate> ")
            await two.expect(b"pilegate> ")
            one.send(b"status --json\n")
            out = await one.expect(b"pilegate> ")
            assert out.startswith(b"{") and json.loads(out.split(b"\r\n")[0])["gateway"] == "LY-0001"
            one.send(b"whoami\n")
            out = await one.expect(b"pilegate> ")
            assert b"whoami" not in out  # no echo on the socket
            assert f"uid={os.getuid()}(".encode() in out
            one.send(b"login\n" + PIN.encode() + b"\n")
            assert b"logged in" in await one.expect(b"pilegate# ")
            two.send(b"reboot\n")
            assert b"needs a technician login" in await two.expect(b"pilegate> ")
            # a wrong PIN on one connection locks out a fresh connection too
            two.send(b"login\n000000\n")
            assert b"wrong PIN" in await two.expect(b"pilegate> ")
            await two.close()
            three = await SocketTerminal.connect(sock)
            await three.expect(b"pilegate> ")
            three.send(b"login\n")
            assert b"login locked" in await three.expect(b"pilegate> ")
            # Ctrl-D ends a session (and logs it out)
            one.send(b"\x04")
            assert b"session ended" in await one.eof()
            logout = [a for a in b.audits if a["cmd"] == "logout"]
            assert logout and logout[-1]["result"] == "closed"
            await three.close()
        finally:
            await server.close()
        assert not sock.exists()

    asyncio.run(main())


def test_socket_client_that_does_not_read_is_cut_off(tmp_path):
    sock = tmp_path / "c.sock"

    async def main() -> None:
        clock = Clock()
        server = ConsoleServer(
            FakeBackend(),
            AuthState(RECORD),
            socket_path=sock,
            clock=clock,
            max_pending_out=16384,
            stall_close_s=30,
            poll_interval_s=0.05,
        )
        await server.start()
        try:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(str(sock))
            raw.setblocking(False)
            loop = asyncio.get_running_loop()
            session = None
            for _ in range(300):  # flood with commands and never read an answer
                with contextlib.suppress(BlockingIOError):
                    raw.send(b"help\n" * 20)
                await asyncio.sleep(0)
                session = next(iter(server.sessions), None)
                if session is not None and session.dropped_total:
                    break
            assert session is not None and session.dropped_total > 0
            assert session.backlog() <= 16384 + 2 * 16384 + 1024  # + one chunk's answers
            clock.t += 31
            server.wake_all()
            deadline = loop.time() + 5
            while server.sessions and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert not server.sessions, "the stalled client was not disconnected"
            raw.close()
            # the server still serves everyone else
            term = await SocketTerminal.connect(sock)
            await term.expect(b"pilegate> ")
            await term.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_socket_path_safety(tmp_path):
    async def main() -> None:
        stale = tmp_path / "stale.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(stale))
        s.close()  # a crash leaves the file behind: it is replaced
        server = ConsoleServer(FakeBackend(), AuthState(RECORD), socket_path=stale)
        await server.start()
        try:
            other = ConsoleServer(FakeBackend(), AuthState(RECORD), socket_path=stale)
            with pytest.raises(ConsoleError, match="already listening"):
                await other.start()
        finally:
            await server.close()
        plain = tmp_path / "notasocket"
        plain.write_text("keep me")
        with pytest.raises(ConsoleError, match="not a socket"):
            await ConsoleServer(FakeBackend(), AuthState(RECORD), socket_path=plain).start()
        assert plain.read_text() == "keep me"

    asyncio.run(main())


def test_too_many_sessions_are_turned_away(tmp_path):
    sock = tmp_path / "c.sock"

    async def main() -> None:
        server = ConsoleServer(FakeBackend(), AuthState(RECORD), socket_path=sock, max_sessions=1)
        await server.start()
        try:
            one = await SocketTerminal.connect(sock)
            await one.expect(b"pilegate> ")
            two = await SocketTerminal.connect(sock)
            assert b"too many console sessions" in await two.eof()
            await one.close()
        finally:
            await server.close()

    asyncio.run(main())


# ---------------------------------------------------------------- the client against the server


class ServerThread:
    """A console server on its own event loop in a thread, for the blocking client."""

    def __init__(self, backend: FakeBackend, **kw):
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> ConsoleServer:
            srv = ConsoleServer(backend, AuthState(RECORD), **kw)
            await srv.start()
            return srv

        self.server = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_client_script_over_the_socket(tmp_path, monkeypatch, capsys):
    sock = tmp_path / "c.sock"
    log = tmp_path / "session.log"
    st = ServerThread(AsyncBackend(), socket_path=sock)
    try:
        script = (
            f"status\nlogin\n{PIN}\nwhoami\nset mqtt.password topsecret\nmbread rs485-1 1 3 0 1\nscan rs485-1 1-8\n"
        )
        monkeypatch.setattr(sys, "stdin", io.StringIO(script))
        rc = console_client.main(["--socket", str(sock), "--log", str(log)])
    finally:
        st.stop()
    out = capsys.readouterr().out
    assert rc == 0
    assert "gateway      LY-0001" in out and "technician (logged in)" in out
    assert "mqtt.password = ****" in out and "0x00FF" in out and "2 device(s) answered: 3, 7" in out
    assert PIN not in out and "topsecret" not in out
    text = log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "pilegate> status\n" in text and "[PIN not logged]" in text
    assert PIN not in text and "topsecret" not in text and "set mqtt.password ****" in text
    assert '{"commands"' not in text  # the handshake is not logged
    # leaving logs out
    assert [a["result"] for a in st.backend.audits if a["cmd"] == "logout"] == ["ok"]


def test_client_leaving_at_the_pin_prompt_is_not_a_failed_login(tmp_path, monkeypatch, capsys):
    sock = tmp_path / "c.sock"
    st = ServerThread(FakeBackend(), socket_path=sock)
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO("login\n"))  # script ends at "PIN:"
        rc = console_client.main(["--socket", str(sock), "--log", str(tmp_path / "l.log")])
        assert rc == 0
        deadline = time.monotonic() + 5
        while st.server.sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not st.server.sessions
        assert st.server.auth.failures == 0
        assert [a for a in st.backend.audits if a["cmd"] == "login"] == []
    finally:
        st.stop()


def _bridge(a: int, b: int, stop: threading.Event) -> threading.Thread:
    """A null-modem cable between two pty masters."""

    def run() -> None:
        while not stop.is_set():
            r, _, _ = select.select([a, b], [], [], 0.05)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                os.write(b if fd == a else a, data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_client_over_a_serial_line(tmp_path, monkeypatch, capsys):
    gw_master, gw_path = _pty_pair()
    laptop_master, laptop_path = _pty_pair()
    stop = threading.Event()
    bridge = _bridge(gw_master, laptop_master, stop)
    st = ServerThread(FakeBackend(), serial_port=gw_path)
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO("whoami\npiles\n"))
        rc = console_client.main(["--port", laptop_path, "--log", str(tmp_path / "s.log")])
        out = capsys.readouterr().out
        assert rc == 0
        assert "anonymous (read-only) on serial" in out and "DDSU-0002" in out
        assert "whoami\n" not in out  # the client turned the gateway's echo off
        session = st.server.serial
        deadline = time.monotonic() + 5
        while not session.console.echo and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.console.echo  # ... and back on when it left
    finally:
        st.stop()
        stop.set()
        bridge.join(5)
        os.close(gw_master)
        os.close(laptop_master)


def test_client_explains_missing_busy_and_forbidden_ports(tmp_path, capsys):
    rc = console_client.main(["--port", str(tmp_path / "ttyUSB9"), "--log", str(tmp_path / "l.log")])
    err = capsys.readouterr().err
    assert rc == 1 and "no such serial port" in err and "Traceback" not in err

    master, path = _pty_pair()
    holder = serial.Serial(path, 115200, exclusive=True)  # screen/minicom has it
    try:
        rc = console_client.main(["--port", path, "--log", str(tmp_path / "l.log")])
        err = capsys.readouterr().err
        assert rc == 1 and "is busy" in err and "Traceback" not in err
    finally:
        holder.close()
        os.close(master)

    rc = console_client.main(["--socket", str(tmp_path / "none.sock"), "--log", str(tmp_path / "l.log")])
    err = capsys.readouterr().err
    assert rc == 1 and "no console socket here" in err

    # root bypasses file permissions, so the permission messages are checked directly
    denied = serial.SerialException(errno.EACCES, "could not open port: [Errno 13] Permission denied")
    assert "permission denied. Add yourself to the" in console_client.serial_error_message("/dev/ttyUSB0", denied)
    busy = serial.SerialException(errno.EBUSY, "could not open port: [Errno 16] Device or resource busy")
    assert "is busy" in console_client.serial_error_message("/dev/ttyUSB0", busy)
    msg = console_client.socket_error_message("/run/pilegate/console.sock", PermissionError(13, "denied"))
    assert "permission denied" in msg and "usermod" in msg


def test_client_when_the_gateway_does_not_answer(tmp_path, capsys):
    master, path = _pty_pair()  # a port with nothing behind it
    slave_keepalive = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        rc = console_client.main(["--port", path, "--log", str(tmp_path / "l.log")])
    finally:
        os.close(slave_keepalive)
        os.close(master)
    err = capsys.readouterr().err
    assert rc == 1 and "no answer from the gateway" in err and "--baud" in err


def test_interactive_client_completion_history_and_hidden_pin(tmp_path):
    """The real client in a terminal: Tab completes, Up recalls, the PIN is not shown."""
    sock = tmp_path / "c.sock"
    st = ServerThread(FakeBackend(), socket_path=sock)
    master, slave = pty.openpty()
    env = dict(os.environ, HOME=str(tmp_path), TERM="xterm", PYTHONPATH=str(ROOT / "tests" / "core"))

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "piletools.console_client", "--socket", str(sock)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        preexec_fn=controlling_tty,
        close_fds=True,
    )
    os.close(slave)
    term = PtyTerminal(master)

    async def drive() -> bytes:
        seen = await term.expect(b"pilegate> ", timeout=15)
        term.send(b"who\t")  # Tab completes the command name
        await term.expect(b"whoami ")
        term.send(b"\r")
        seen += await term.expect(b"pilegate> ")
        term.send(b"\x1b[A")  # Up arrow: the previous command again
        await term.expect(b"whoami")
        term.send(b"\r")
        seen += await term.expect(b"pilegate> ")
        term.send(b"login\r")
        await term.expect(b"PIN: ")
        term.send(PIN.encode() + b"\r")
        seen += await term.expect(b"pilegate# ")
        term.send(b"\x04")  # Ctrl-D at the prompt: log out and quit
        seen += await term.expect(b"session log: ")
        return seen

    try:
        seen = asyncio.run(drive())
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        st.stop()
    assert seen.count(b"anonymous (read-only)") == 2
    assert PIN.encode() not in seen and b"logged in as technician" in seen
    history = (tmp_path / ".pilegate_console_history").read_text().split("\n")
    assert "whoami" in history and "login" in history and PIN not in history
    assert stat.S_IMODE((tmp_path / ".pilegate_console_history").stat().st_mode) == 0o600
    logs = list(tmp_path.glob("pilegate-console-*.log"))
    assert len(logs) == 1 and PIN not in logs[0].read_text()
    assert [a["result"] for a in st.backend.audits if a["cmd"] == "logout"] == ["ok"]
