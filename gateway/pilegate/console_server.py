"""The technician console on the Pi: a serial tty and a local UNIX socket, one interpreter each.

Every session runs its own `pilecore.console.Console` over the same backend; all sessions share
ONE `AuthState`, so the failed-login lockout survives reconnecting (and opening a second
session).  A session that ends (disconnect, Ctrl-D) logs out.

Serial (`serial_port`, e.g. /dev/serial0 or a USB gadget /dev/ttyGS0): opened with os.open in
non-blocking mode, raw 8N1 at `baud` with termios, TIOCEXCL so no other program opens it while
the gateway owns it, read through loop.add_reader.  The line is one long-lived session with
echo on; Ctrl-D ends it (logout) and starts a fresh one.  When the device disappears (USB
unplugged, EIO) it is reopened every `reopen_s` seconds.

Socket (`socket_path`, default /run/pilegate/console.sock): asyncio.start_unix_server; the
parent directory is created with mode 0750 and the socket is chmod 0660 (optionally chgrp
`socket_group`), so only root and that group may connect.  A stale socket file left by a crash is
replaced; a live one (another gateway answers) or a non-socket file at the path is an error.  Each
connection is a session with echo off, named after the peer's uid (SO_PEERCRED) for the audit
trail.  At most `max_sessions` socket sessions at a time.

Output policy (a terminal that does not read must never block the event loop or grow memory):
- nothing here ever awaits a client: writes are non-blocking;
- per session at most `max_pending_out` bytes wait to be sent (the serial session's own buffer,
  or the socket transport's write buffer), plus one answer when the backlog was empty (the
  interpreter bounds one chunk's answers to about 2 x its max_output).  Output that does not
  fit is dropped and counted; once the backlog has drained the client is told how many bytes it
  lost;
- a socket client whose backlog stays over half of that for `stall_close_s` seconds is
  disconnected;
- the interpreter itself bounds what one command or one chunk of input can produce
  (see pilecore.console), and input is read in chunks of at most READ_CHUNK bytes, so a flood of
  input costs bounded work per event-loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilecore.console import AuthState, Console

log = logging.getLogger("pilegate.console")

READ_CHUNK = 4096
CTRL_D = 0x04
BAUDS = {
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
    230400: termios.B230400,
    460800: termios.B460800,
    921600: termios.B921600,
}


class ConsoleError(Exception):
    """The console cannot start (socket path taken, serial device unusable)."""


class _Session:
    """Common part of a serial or socket session: the interpreter and the output policy."""

    def __init__(self, server: ConsoleServer, origin: str, echo: bool, greet_on_input: bool = False):
        self.server = server
        self.origin = origin
        self.greet_on_input = greet_on_input
        self.console = self._new_console(echo)
        self.wake = asyncio.Event()
        self.dropped = 0  # bytes of output dropped, not yet reported
        self.dropped_total = 0
        self.max_backlog = 0  # largest output backlog seen (bytes), for tests
        self.closed = False

    def _new_console(self, echo: bool) -> Console:
        s = self.server
        # idle_logout_s lives in the shared AuthState: a `set console.idle_logout_s` reaches
        # this session and every later one.
        c = Console(
            s.backend,
            auth=s.auth,
            echo=echo,
            origin=self.origin,
            max_line=s.max_line,
            greet_on_input=self.greet_on_input,
        )
        c.wakeup = self._wakeup
        return c

    def _wakeup(self) -> None:
        self.wake.set()

    def backlog(self) -> int:
        raise NotImplementedError

    def _write_now(self, data: bytes) -> None:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        """Queue output without ever blocking; drop what does not fit (see module docstring)."""
        if not data or self.closed:
            return
        self._report_dropped()
        backlog = self.backlog()
        if backlog and backlog + len(data) > self.server.max_pending_out:
            self.dropped += len(data)
            self.dropped_total += len(data)
            self.server.dropped_total += len(data)
            return
        self._write_now(data)
        self.max_backlog = max(self.max_backlog, self.backlog())

    def _report_dropped(self) -> None:
        if self.dropped and self.backlog() == 0:
            note = f"\r\n[{self.dropped} bytes of output dropped: the terminal did not read them]\r\n"
            self.dropped = 0
            self._write_now(note.encode())

    def feed(self, data: bytes) -> None:
        """Input from the terminal; Ctrl-D ends the session (the serial line starts a new one)."""
        now = self.server.clock()
        while data:
            cut = data.find(CTRL_D)
            part, rest = (data, b"") if cut < 0 else (data[:cut], data[cut + 1 :])
            if part:
                self.send(self.console.feed(part, now))
            if cut < 0:
                return
            self.end_of_session(now)
            if self.closed:
                return
            data = rest

    def end_of_session(self, now: float) -> None:
        raise NotImplementedError

    def poll(self) -> None:
        if not self.closed:
            self._report_dropped()
        self.send(self.console.poll(self.server.clock()))

    async def poll_loop(self) -> None:
        """Time-driven output: every poll_interval_s, or at once when the interpreter wakes us."""
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.server.poll_interval_s)
            self.wake.clear()
            if self.closed:
                return
            try:
                self.poll()
                self.check_stall()
            except Exception:  # never let one session take the server down
                log.exception("console session %s: poll failed", self.origin)

    def check_stall(self) -> None:
        pass


class _SerialSession(_Session):
    """The console tty: one persistent session, echo on, reopened when the device comes back."""

    def __init__(self, server: ConsoleServer, path: str, baud: int):
        # Nobody may be on the line when the greeting goes out: the first bytes bring it again.
        super().__init__(server, f"serial {path}", echo=True, greet_on_input=True)
        self.path = path
        self.baud = baud
        self.fd: int | None = None
        self.out = bytearray()
        self._loop = asyncio.get_running_loop()
        self._writing = False
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def open(self) -> None:
        """Open and configure the tty (raw 8N1, exclusive); OSError when it cannot be used."""
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if not os.isatty(fd):
                raise OSError(errno.ENOTTY, f"{self.path} is not a serial device")
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            speed = BAUDS[self.baud]
            attrs[2] = (
                (attrs[2] & ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS))
                | termios.CS8
                | termios.CREAD
                | termios.CLOCAL
            )
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, termios.TIOCEXCL)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.out.clear()
        self._loop.add_reader(fd, self._readable)

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        poller = asyncio.create_task(self.poll_loop())
        try:
            while not self.closed:
                if self.fd is None:
                    try:
                        self.open()
                        self._warned = False
                        self.send(self.console.greeting(self.server.clock()))
                        log.info("console on serial port %s at %d baud", self.path, self.baud)
                    except (OSError, termios.error) as exc:
                        if not self._warned:
                            log.warning(
                                "console tty %s unusable (%s); retrying every %s s",
                                self.path,
                                exc,
                                self.server.reopen_s,
                            )
                            self._warned = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.server.stopping.wait(), self.server.reopen_s)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    def _readable(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: hangup / device gone
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        try:
            self.feed(data)
        except Exception:
            log.exception("console %s: input handling failed", self.path)

    def _lost(self, exc: OSError | None) -> None:
        log.warning("console tty %s went away (%s); reopening", self.path, exc or "hangup")
        self.console.close(self.server.clock())
        self.console = self._new_console(echo=True)
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd is not None:
            self._loop.remove_reader(self.fd)
            if self._writing:
                self._loop.remove_writer(self.fd)
                self._writing = False
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
            self.out.clear()

    def backlog(self) -> int:
        return len(self.out)

    def _write_now(self, data: bytes) -> None:
        if self.fd is None:
            return  # nobody is there to read it
        self.out += data
        self._flush()

    def _flush(self) -> None:
        while self.out and self.fd is not None:
            try:
                n = os.write(self.fd, self.out[:READ_CHUNK])
            except BlockingIOError:
                break
            except OSError as exc:
                self._lost(exc)
                return
            del self.out[:n]
        if self.fd is None:
            return
        if self.out and not self._writing:
            self._loop.add_writer(self.fd, self._flush)
            self._writing = True
        elif not self.out and self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False

    def end_of_session(self, now: float) -> None:
        self.console.close(now)
        self.send(b"\r\nsession ended\r\n")
        self.greet_on_input = False  # the technician is there: the new greeting reaches them
        self.console = self._new_console(echo=True)
        self.send(self.console.greeting(now))

    async def close(self) -> None:
        if self.closed:
            return
        self.console.close(self.server.clock())
        self.closed = True
        self.wake.set()
        self._close_fd()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class _SocketSession(_Session):
    """One connection to the UNIX socket: echo off, ends on EOF or Ctrl-D."""

    def __init__(self, server: ConsoleServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(server, _peer_name(writer), echo=False)
        self.reader = reader
        self.writer = writer
        self.stalled_since: float | None = None

    def backlog(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def _write_now(self, data: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    def end_of_session(self, now: float) -> None:
        self.send(b"\r\nsession ended\r\n")
        self.closed = True

    def check_stall(self) -> None:
        now = self.server.clock()
        if self.backlog() <= self.server.max_pending_out // 2:  # it reads, if slowly
            self.stalled_since = None
            return
        if self.stalled_since is None:
            self.stalled_since = now
        elif now - self.stalled_since >= self.server.stall_close_s:
            log.warning("console %s: client does not read its output; disconnecting", self.origin)
            self.closed = True
            self.writer.transport.abort()

    async def run(self) -> None:
        poller = asyncio.create_task(self.poll_loop())
        try:
            self.send(self.console.greeting(self.server.clock()))
            while not self.closed:
                try:
                    data = await self.reader.read(READ_CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                self.feed(data)
                self.check_stall()
        finally:
            self.closed = True
            self.wake.set()
            self.console.close(self.server.clock())
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            with contextlib.suppress(Exception):
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    """'socket uid=1000(alice)' from SO_PEERCRED, for the audit trail."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError, struct.error):
        return "socket"
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"socket uid={uid}({name})"


class ConsoleServer:
    """See the module docstring."""

    def __init__(
        self,
        backend: Any,
        auth: AuthState,
        *,
        serial_port: str | None = None,
        baud: int = 115200,
        socket_path: str | Path | None = None,
        socket_group: str | None = None,
        idle_logout_s: int = 600,
        clock: Callable[[], float] = time.monotonic,
        max_pending_out: int = 65536,
        stall_close_s: float = 30.0,
        max_sessions: int = 8,
        poll_interval_s: float = 0.5,
        reopen_s: float = 5.0,
        max_line: int = 256,
    ):
        if baud not in BAUDS:
            raise ConsoleError(f"console baud {baud} is not supported ({', '.join(map(str, BAUDS))})")
        self.backend = backend
        self.auth = auth
        self.serial_port = serial_port
        self.baud = baud
        self.socket_path = Path(socket_path) if socket_path else None
        self.socket_group = socket_group
        if auth.idle_logout_s is None:
            auth.idle_logout_s = idle_logout_s
        self.clock = clock
        self.max_pending_out = max_pending_out
        self.stall_close_s = stall_close_s
        self.max_sessions = max_sessions
        self.poll_interval_s = poll_interval_s
        self.reopen_s = reopen_s
        self.max_line = max_line
        self.serial: _SerialSession | None = None
        self.sessions: set[_SocketSession] = set()
        self.dropped_total = 0  # bytes of output dropped for terminals that did not read
        self.stopping = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the tty (retrying in the background if it is absent) and listen on the socket."""
        if self.socket_path is not None:
            await self._listen()
        if self.serial_port:
            self.serial = _SerialSession(self, self.serial_port, self.baud)
            try:
                self.serial.open()
            except (OSError, termios.error) as exc:
                log.warning("console tty %s not available yet (%s)", self.serial_port, exc)
            else:
                log.info("console on serial port %s at %d baud", self.serial_port, self.baud)
                self.serial.send(self.serial.console.greeting(self.clock()))
            self.serial.start()

    async def _listen(self) -> None:
        path = self.socket_path
        assert path is not None
        parent = path.parent
        if not parent.exists():
            parent.mkdir(mode=0o750, parents=True)
            os.chmod(parent, 0o750)  # mkdir's mode is filtered by the umask
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ConsoleError(f"{path} exists and is not a socket: not replacing it")
            if await _answers(path):
                raise ConsoleError(f"{path}: another console server is already listening there")
            path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(path))
        os.chmod(path, 0o660)
        if self.socket_group:
            try:
                os.chown(path, -1, grp.getgrnam(self.socket_group).gr_gid)
            except (KeyError, PermissionError) as exc:
                log.warning("console socket %s: cannot give it to group %s: %s", path, self.socket_group, exc)
        log.info("console socket at %s", path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.max_sessions or self.stopping.is_set():
            writer.write(b"too many console sessions; try again later\r\n")
            with contextlib.suppress(Exception):
                writer.close()
            return
        session = _SocketSession(self, reader, writer)
        self.sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        except Exception:
            log.exception("console session %s failed", session.origin)
        finally:
            self.sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    def wake_all(self) -> None:
        """Make every session poll now (tests advance an injected clock and call this)."""
        if self.serial is not None:
            self.serial.wake.set()
        for s in self.sessions:
            s.wake.set()

    async def close(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.closed = True
            with contextlib.suppress(Exception):
                s.writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
            if self.socket_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()
        if self.serial is not None:
            await self.serial.close()

    async def serve(self, stop: asyncio.Event) -> None:
        """start(), run until `stop` is set, close()."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()


async def _answers(path: Path) -> bool:
    """Does a server answer on this UNIX socket? (a stale file from a crash does not)"""
    try:
        _r, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return True
