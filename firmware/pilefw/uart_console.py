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
