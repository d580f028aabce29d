"""The technician console on the ESP32's console UART (UART0, the USB bridge).

`UartConsole(port, console)` moves bytes between a port and a `pilecore.console.Console`:
`step(now)` reads what has arrived (at most `chunk` bytes, so a flood of input costs bounded
work per main-loop pass), feeds it to the interpreter, then polls it (results of mbread/scan,
idle logout, delayed actions) and writes whatever came back.

The port is anything with `any()`, `read(n)` and `write(b)`: a machine.UART in the tests (on a
pseudo-terminal), and `StdioPort` on the device, because MicroPython's ESP32 port owns UART0
for its REPL stream; with `micropython.kbd_intr(-1)` (boot.py) Ctrl-C arrives as a byte and the
console, not the interpreter, handles it.
"""


class UartConsole:
    """See the module docstring."""

    def __init__(self, port, console, chunk=64):
        self.port = port
        self.console = console
        self.chunk = chunk

    def greet(self, now):
        self._send(self.console.greeting(now))

    def step(self, now):
        """Returns True when bytes came in."""
        n = self.port.any()
        got = False
        if n:
            data = self.port.read(n if n < self.chunk else self.chunk)
            if data:
                got = True
                self._send(self.console.feed(data, now))
        self._send(self.console.poll(now))
        return got

    def _send(self, data):
        if data:
            self.port.write(data)


class StdioPort:
    """UART0 through MicroPython's stdin/stdout streams, read without blocking (select.poll)."""

    def __init__(self):
        import select
        import sys

        self.inp = getattr(sys.stdin, "buffer", sys.stdin)
        self.out = getattr(sys.stdout, "buffer", sys.stdout)
        self.poller = select.poll()
        self.poller.register(sys.stdin, select.POLLIN)

    def any(self):
        return 1 if self.poller.poll(0) else 0

    def read(self, n):
        buf = bytearray()
        while len(buf) < n and self.poller.poll(0):
            b = self.inp.read(1)
            if not b:
                break
            buf += b
        return bytes(buf)

    def write(self, data):
        self.out.write(data)


# The interpreter and its views: imported when a technician types, dropped after the session
CONSOLE_MODULES = (
    "pilefw.backend",
    "pilecore.console",
    "pilecore.console_views",
    "pilecore.console_cmds",
    "pilecore.console_text",
    "pilecore.console_line",
    "pilecore.pinhash",
)
# What survives an unload of the console: the PIN record and the login lockout (AuthState)
AUTH_FIELDS = ("record", "idle_logout_s", "base", "cap", "failures", "locked_until", "generation")
UNLOAD_AFTER_S = 120
# pilecore.console's greeting and first prompt, sent at start without importing the console
# (tests/core/test_fw_uart_console.py checks that the two stay equal)
BANNER = "pilegate console%s. Type 'help' for the commands; 'login' for privileged ones.\r\npilegate> "


def banner(gateway):
    return (BANNER % ((" on gateway %s" % gateway) if gateway else "")).encode()


class LazyConsole:
    """The console UART while nobody types: the banner goes out at start, but the interpreter
    (`CONSOLE_MODULES`, about 50 KB of heap as .mpy) is imported and built by `build(auth)` only
    when the first bytes arrive, and dropped again (modules too) once the session has been
    idle for `unload_after_s` while logged out with nothing running.  The lockout state is kept
    across (`auth`: the AuthState fields, a plain dict while unloaded), so a guesser gains
    nothing from waiting for an unload."""

    def __init__(self, port, build, gateway, unload_after_s=UNLOAD_AFTER_S):
        self.port = port
        self.build = build
        self.unload_after_s = unload_after_s
        self.session = None  # a UartConsole while loaded
        self.auth = None  # the AuthState fields while unloaded
        self.quiet_since = None
        self.loads = 0
        port.write(banner(gateway))

    def step(self, now):
        """Returns True when bytes came in."""
        if self.session is None:
            if not self.port.any():
                return False
            self.session = self.build(self.auth)
            self.loads += 1
            self.auth = None
        got = self.session.step(now)
        if got or self.quiet_since is None:
            self.quiet_since = now
        elif now - self.quiet_since >= self.unload_after_s and self._idle():
            self.unload()
        return got

    def _idle(self):
        c = self.session.console
        return not c.logged_in() and getattr(c, "_deferred", None) is None

    def unload(self):
        """Drop the interpreter and its modules; keep the AuthState fields."""
        a = self.session.console.auth
        self.auth = {k: getattr(a, k) for k in AUTH_FIELDS}
        self.session = None
        self.quiet_since = None
        forget(CONSOLE_MODULES)


def forget(names):
    """Drop modules from sys.modules and from their package, so that their bytecode can be
    collected once nothing else refers to them; the next import loads them again."""
    import sys

    for name in names:
        if name in sys.modules:
            del sys.modules[name]
        parent, _, child = name.rpartition(".")
        pkg = sys.modules.get(parent)
        if pkg is not None and hasattr(pkg, child):
            delattr(pkg, child)
    import gc

    gc.collect()
