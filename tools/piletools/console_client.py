"""`pilegate console`: the technician's client for a gateway's console.

    pilegate console --port /dev/ttyUSB0 [--baud 115200]   # laptop on the gateway's console UART
    pilegate console --socket /run/pilegate/console.sock   # on the Pi, after ssh

Lines are edited locally (readline: arrow keys, history in ~/.pilegate_console_history, Tab
completes command names, learnt from the gateway's `help --json` at connect or, failing that,
from pilecore.console), so the client turns the gateway's echo off while it is attached and on
again when it leaves.  The PIN is read without echo, never logged and never put in the history;
the values of secret settings (`set mqtt.password ...`) are masked in the log and kept out of
the history.  Ctrl-C clears the line or cancels a running scan/mbread; Ctrl-D (end of input)
quits, leaving the gateway logged out with its echo on.

Every session is logged (default ~/pilegate-console-YYYYmmdd-HHMMSS.log, mode 0600): what the
gateway printed and the commands typed.  Standard input that is not a terminal is read as a
script, one command per line (a line after a PIN: prompt is the PIN).

Exit status: 0 normal end; 1 the port or socket could not be used (a one-line reason, no
traceback) or the connection was lost; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import datetime
import errno
import getpass
import grp
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import IO, Any

from pilecore import console as core

DEFAULT_SOCKET = "/run/pilegate/console.sock"
HISTORY = Path.home() / ".pilegate_console_history"
HANDSHAKE_S = 3.0
MAX_TAIL = 4096


class LinkError(Exception):
    """The port or socket cannot be used; the message says why and what to do."""


def _group_of(path: str) -> str:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "dialout"


def _ports_here() -> str:
    try:
        from serial.tools import list_ports

        names = sorted(p.device for p in list_ports.comports())
    except Exception:
        names = []
    return ", ".join(names) if names else "none found"


def serial_error_message(port: str, exc: BaseException) -> str:
    """One clear line for a serial port that cannot be opened."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in text:
        return (
            f"{port} is busy: another program has it open (screen, minicom, another "
            f"'pilegate console', ModemManager). Close it and try again."
        )
    if code in (errno.EACCES, errno.EPERM):
        g = _group_of(port)
        return (
            f"{port}: permission denied. Add yourself to the '{g}' group "
            f"(sudo usermod -aG {g} $USER, then log out and in again) or run with sudo."
        )
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return (
            f"{port}: no such serial port. Is the USB serial cable plugged in? "
            f"Serial ports on this computer: {_ports_here()}."
        )
    return f"{port}: cannot open the serial port: {exc}"


def socket_error_message(path: str, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return (
            f"{path}: no console socket here. Is the gateway running (systemctl status "
            f"pilegate)? Does [console] socket in site.toml name another path?"
        )
    if isinstance(exc, PermissionError):
        g = _group_of(path)
        return (
            f"{path}: permission denied. The socket is for group '{g}': add yourself "
            f"(sudo usermod -aG {g} $USER, then log in again) or use sudo."
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"{path}: nothing listens on this socket (a leftover file): is the gateway running?"
    return f"{path}: cannot connect: {exc}"


class SerialLink:
    """The gateway's console UART through a USB serial adapter (pyserial)."""

    def __init__(self, port: str, baud: int):
        import serial

        self._serial_exc = serial.SerialException
        self.name = f"{port} at {baud} baud"
        try:
            self.ser = serial.Serial(port, baud, timeout=0.2, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(serial_error_message(port, exc)) from None

    def send(self, data: bytes) -> None:
        try:
            self.ser.write(data)
            self.ser.flush()
        except (self._serial_exc, OSError) as exc:
            raise EOFError(f"serial port lost: {exc}") from None

    def recv(self) -> bytes:
        try:
            data = self.ser.read(1)
            if data and self.ser.in_waiting:
                data += self.ser.read(self.ser.in_waiting)
        except (self._serial_exc, OSError) as exc:
            raise EOFError(f"serial port lost: {exc}") from None
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ser.close()


class SocketLink:
    """The gateway's local UNIX socket (on the Pi, for technicians who came in over SSH)."""

    def __init__(self, path: str):
        self.name = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise LinkError(socket_error_message(path, exc)) from None
        self.sock.settimeout(0.2)
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as exc:
            raise EOFError(f"connection lost: {exc}") from None

    def recv(self) -> bytes:
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return b""
        except OSError as exc:
            raise EOFError(f"connection lost: {exc}") from None
        if not data:
            raise EOFError("the gateway closed the connection")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def is_prompt(tail: str) -> bool:
    """Is this unterminated last line one of the console's prompts?"""
    return tail.endswith((core.PROMPT_USER, core.PROMPT_TECH, core.PROMPT_PIN, core.CONFIRM_TAIL))


def mask_line(line: str) -> str:
    """The line as it may be logged: a secret setting's value replaced by ****."""
    words = line.split()
    if len(words) >= 3 and words[0] == "set" and core.is_secret(words[1]):
        return f"set {words[1]} {core.MASK}"
    return line


class Client:
    """One attached session: a reader thread prints what the gateway sends; see module doc."""

    def __init__(self, link: Any, log: IO[str] | None, out: IO[str] | None = None):
        self.link = link
        self.log = log
        self.out = out or sys.stdout
        self.names = core.command_names()
        self._cond = threading.Condition()
        self._tail = ""
        self._answer: list[str] = []  # text since the last prompt
        self._answers: list[str] = []  # one entry per prompt seen
        self.prompt = core.PROMPT_USER
        self.closed: str | None = None  # why the link ended
        self._quiet = False
        self._at_input = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stopping = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="console-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ receiving

    def _read_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                data = self.link.recv()
            except EOFError as exc:
                with self._cond:
                    self.closed = str(exc) or "connection closed"
                    self._cond.notify_all()
                return
            if data:
                self._received(self._decoder.decode(data).replace("\r", ""))

    def _received(self, text: str) -> None:
        with self._cond:
            if not self._quiet:
                self._log(text)
            self._tail += text
            done, nl, tail = self._tail.rpartition("\n")
            shown = done + nl
            if len(tail) > MAX_TAIL:  # no newline for too long: show it anyway
                shown, tail = shown + tail, ""
            self._tail = tail
            if shown:
                self._answer.append(shown)
                self._show(shown)
            if is_prompt(self._tail):
                self.prompt = self._tail.rsplit("\n", 1)[-1]
                self._tail = ""
                self._answers.append("".join(self._answer))
                self._answer = []
                if self._at_input:
                    self._redisplay()
                self._cond.notify_all()

    def _show(self, text: str) -> None:
        if self._quiet:
            return
        if self._at_input:
            self.out.write("\r\x1b[K")  # clear the line being edited; it is redrawn below
        self.out.write(text)
        if self._at_input:
            self._redisplay()
        self.out.flush()

    def _redisplay(self) -> None:
        buf = ""
        with contextlib.suppress(Exception):
            import readline

            buf = readline.get_line_buffer()
        self.out.write("\r\x1b[K" + self.prompt + buf)
        self.out.flush()

    def _log(self, text: str) -> None:
        if self.log is not None:
            with contextlib.suppress(OSError, ValueError):
                self.log.write(text)
                self.log.flush()

    # ------------------------------------------------------------ exchanges

    def stop(self) -> None:
        """Stop the reader thread (before the link is closed under it)."""
        self._stopping.set()
        self._reader.join(2.0)

    def mark(self) -> int:
        with self._cond:
            return len(self._answers)

    def wait_answer(self, mark: int, timeout: float | None = None, contains: str | None = None) -> str | None:
        """The first answer (text before a prompt) after `mark`, optionally containing a text."""
        deadline = None if timeout is None else _monotonic() + timeout
        with self._cond:
            while True:
                for ans in self._answers[mark:]:
                    if contains is None or contains in ans:
                        return ans
                if self.closed:
                    return None
                left = 0.2 if deadline is None else min(0.2, deadline - _monotonic())
                if left <= 0:
                    return None
                self._cond.wait(left)

    def command(self, line: str) -> str | None:
        """Send one line; wait for the gateway's next prompt (Ctrl-C is passed on to it)."""
        mark = self.mark()
        self.link.send(line.encode("utf-8") + b"\r")
        while True:
            try:
                return self.wait_answer(mark)
            except KeyboardInterrupt:
                self.link.send(b"\x03")

    def handshake(self) -> bool:
        """Clear any half line, turn echo off, learn the command names; False if no answer."""
        self._quiet = True
        try:
            mark = self.mark()
            self.link.send(b"\x03echo off\r")
            if self.wait_answer(mark, HANDSHAKE_S, contains="echo off") is None:
                return False
            mark = self.mark()
            self.link.send(b"help --json\r")
            ans = self.wait_answer(mark, HANDSHAKE_S, contains='{"commands"')
            if ans is not None:
                for ln in ans.splitlines():
                    if ln.startswith('{"commands"'):
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            self.names = sorted(c["name"] for c in json.loads(ln)["commands"])
            return True
        finally:
            with self._cond:
                self._quiet = False
            self._log(f"# connected; gateway prompt: {self.prompt.strip()}\n{self.prompt}")

    def leave(self) -> None:
        """Log out and give the gateway its echo back (for the next person's raw terminal).

        Ctrl-C first: a PIN or confirmation prompt left open must not take these lines.
        """
        if self.closed:
            return
        with contextlib.suppress(EOFError):
            self._quiet = True
            self.link.send(b"\x03logout\recho on\r")

    # ------------------------------------------------------------ the loops

    def complete(self, text: str, state: int) -> str | None:
        import readline

        buf = readline.get_line_buffer()
        words = buf[: readline.get_begidx()].split()
        if not words:
            options = [n + " " for n in self.names if n.startswith(text)]
        elif words[0] == "help" and len(words) == 1:
            options = [n for n in self.names if n.startswith(text)]
        else:
            options = [o for o in ("--json", "on", "off", "auto") if o.startswith(text)]
        return options[state] if state < len(options) else None

    def interactive(self) -> int:
        readline = _readline()
        if readline is not None:
            readline.set_completer(self.complete)
            readline.set_completer_delims(" \t")
            readline.parse_and_bind("tab: complete")
            with contextlib.suppress(OSError):
                readline.read_history_file(HISTORY)
            readline.set_history_length(1000)
        self.out.write(f"connected to {self.link.name}. Type help; Tab completes; Ctrl-C cancels; Ctrl-D quits.\n")
        try:
            while not self.closed:
                prompt = self.prompt
                try:
                    if prompt == core.PROMPT_PIN:
                        line = getpass.getpass(prompt)
                        self._log("[PIN not logged]\n")
                    else:
                        self._at_input = True
                        try:
                            line = input(prompt)
                        finally:
                            self._at_input = False
                        self._log(mask_line(line) + "\n")
                        if readline is not None:
                            _tidy_history(readline, line)
                except EOFError:
                    self.out.write("\n")
                    break
                except KeyboardInterrupt:
                    self.out.write("\n")
                    self._log("^C\n")
                    self.command_raw(b"\x03")
                    continue
                self.command(line)
        finally:
            if readline is not None:
                with contextlib.suppress(OSError):
                    readline.write_history_file(HISTORY)
                    os.chmod(HISTORY, 0o600)
        return self._finish()

    def script(self, lines: IO[str]) -> int:
        for raw in lines:
            if self.closed:
                break
            line = raw.rstrip("\r\n")
            self._log(("[PIN not logged]" if self.prompt == core.PROMPT_PIN else mask_line(line)) + "\n")
            self.command(line)
        return self._finish()

    def command_raw(self, data: bytes) -> None:
        mark = self.mark()
        self.link.send(data)
        self.wait_answer(mark, HANDSHAKE_S)

    def _finish(self) -> int:
        if self.closed:
            sys.stderr.write(f"pilegate console: {self.closed}\n")
            return 1
        self.leave()
        return 0


def _tidy_history(readline: Any, line: str) -> None:
    """Keep secrets out of the history; store commands without trailing blanks (Tab adds one)."""
    n = readline.get_current_history_length()
    if not n or readline.get_history_item(n) != line:
        return
    if mask_line(line) != line:
        readline.remove_history_item(n - 1)
    elif line != line.strip():
        if n > 1 and readline.get_history_item(n - 1) == line.strip():
            readline.remove_history_item(n - 1)
        else:
            readline.replace_history_item(n - 1, line.strip())


def _monotonic() -> float:
    import time

    return time.monotonic()


def _readline() -> Any:
    try:
        import readline
    except ImportError:  # e.g. some Windows Pythons: plain input() still works
        return None
    return readline


def default_log_path() -> Path:
    return Path.home() / datetime.datetime.now().strftime("pilegate-console-%Y%m%d-%H%M%S.log")


def open_log(path: Path, link_name: str) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    f = os.fdopen(fd, "w", encoding="utf-8")
    f.write(f"# pilegate console session {datetime.datetime.now().isoformat(timespec='seconds')} on {link_name}\n")
    f.flush()
    return f


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pilegate console` (also used when run as a module)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", help="serial port wired to the gateway's console UART, e.g. /dev/ttyUSB0")
    where.add_argument(
        "--socket", help=f"the gateway's local console socket (default {DEFAULT_SOCKET} when no --port is given)"
    )
    p.add_argument("--baud", type=int, default=115200, help="serial speed (default 115200, 8N1)")
    p.add_argument("--log", type=Path, help="session log file (default ~/pilegate-console-YYYYmmdd-HHMMSS.log)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pilegate console", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    try:
        if args.port:
            link: Any = SerialLink(args.port, args.baud)
        else:
            link = SocketLink(args.socket or DEFAULT_SOCKET)
    except LinkError as exc:
        sys.stderr.write(f"pilegate console: {exc}\n")
        return 1
    log_path = args.log or default_log_path()
    try:
        log = open_log(log_path, link.name)
    except OSError as exc:
        link.close()
        sys.stderr.write(f"pilegate console: cannot write the session log {log_path}: {exc.strerror}\n")
        return 1
    client = Client(link, log)
    try:
        if not client.handshake():
            why = client.closed or (
                f"no answer from the gateway on {link.name}: check the cable, "
                "the baud rate (--baud) and that the console runs on that port"
            )
            sys.stderr.write(f"pilegate console: {why}\n")
            return 1
        if sys.stdin.isatty():
            return client.interactive()
        return client.script(sys.stdin)
    except KeyboardInterrupt:
        return 130
    except EOFError as exc:
        sys.stderr.write(f"pilegate console: {exc}\n")
        return 1
    finally:
        client.stop()
        link.close()
        with contextlib.suppress(OSError):
            log.write(f"# session ended {datetime.datetime.now().isoformat(timespec='seconds')}\n")
            log.close()
        if args.log is None:
            sys.stderr.write(f"session log: {log_path}\n")


if __name__ == "__main__":
    sys.exit(main())
