"""The `hw` of pilefw.app inside the MicroPython WebAssembly VM (tests/mpy/app_harness.mjs).

Runs on MicroPython only.  The harness registers the JS module `pgbridge` and makes one device
file /dev/pg/<name> per stream (a UART, the console, each TCP connection): reading the file
pulls the bytes the harness has received, writing it queues bytes that `pgbridge.flush(name)`
sends.  So UART reads and writes are plain file I/O here, as cheap in heap as on the ESP32, and
a blocking socket read blocks the VM in the harness (Atomics.wait) until bytes or the timeout.

`VmHw(uarts, console)` maps board UART ids to stream names ({2: "uart2"}) and names the
console's stream (or None).  A test injects faults through the App's `on_step` hook (a
MemoryError raised there is what `App.run` must survive).
"""

import pgbridge

ETIMEDOUT = 110
ECONNREFUSED = 111


class Stream:
    """A machine.UART-like view of one bridge stream."""

    def __init__(self, name):
        self.name = name
        self.f = open("/dev/pg/" + name, "r+b")  # noqa: SIM115 -- held open like a UART

    def any(self):
        return pgbridge.avail(self.name)

    def read(self, n=None):
        k = pgbridge.avail(self.name)
        if k <= 0:
            return None
        if n is not None and n < k:
            k = n
        return self.f.read(k)

    def readinto(self, buf, nbytes=None):
        k = pgbridge.avail(self.name)
        if k <= 0:
            return None
        want = len(buf) if nbytes is None else nbytes
        if want < k:
            k = want
        mv = memoryview(buf)
        return self.f.readinto(mv[:k])

    def write(self, buf):
        n = self.f.write(buf)
        pgbridge.flush(self.name)
        return n

    def flush(self):
        pass

    def deinit(self):
        self.f.close()


class socket:  # MicroPython socket class name, for umqtt.simple
    """MicroPython's socket stream methods over a bridge TCP connection."""

    def __init__(self, *args):
        self.name = None
        self.f = None
        self.timeout_ms = -1  # blocking

    def settimeout(self, t):
        self.timeout_ms = -1 if t is None else int(t * 1000)

    def setblocking(self, flag):
        self.timeout_ms = -1 if flag else 0

    def connect(self, addr):
        name = pgbridge.connect(addr[0], addr[1], 5000 if self.timeout_ms < 0 else self.timeout_ms)
        if not isinstance(name, str):
            raise OSError(-name)
        self.name = name
        self.f = open("/dev/pg/" + name, "r+b")  # noqa: SIM115 -- held open like a UART

    def read(self, n):
        got = None
        while got is None or len(got) < n:
            k = pgbridge.wait(self.name, n if got is None else n - len(got), self.timeout_ms)
            if k < 0:  # end of stream or a reset: what came so far, or b""
                return got if got is not None else b""
            if k == 0:
                if self.timeout_ms == 0:
                    return got
                if got is None:
                    raise OSError(ETIMEDOUT)
                return got
            want = n if got is None else n - len(got)
            chunk = self.f.read(k if k < want else want)
            got = chunk if got is None else got + chunk
        return got

    def write(self, buf, n=None):
        if n is not None:
            buf = memoryview(buf)[:n]
        k = self.f.write(buf)
        if pgbridge.flush(self.name) < 0:
            raise OSError(32)
        return k

    def close(self):
        if self.name is not None:
            self.f.close()
            pgbridge.close(self.name)
            self.name = None


def getaddrinfo(host, port, *args):
    return [(2, 1, 0, "", (host, port))]


class _Sockets:
    socket = socket
    getaddrinfo = staticmethod(getaddrinfo)


class Watchdog:
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.feeds = 0

    def feed(self):
        self.feeds += 1


class Pin:
    """A GPIO that remembers its value (relays, DE, bay inputs)."""

    def __init__(self, n, out):
        self.id = n
        self.out = out
        self.v = 0
        self.writes = 0

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = 1 if v else 0
        self.writes += 1
        return None


class VmHw:
    """See the module docstring and pilefw.app (the interface)."""

    def __init__(self, root, uarts, console=None):
        import time

        self.root = root
        self.gmtime = time.gmtime
        self.uarts = uarts
        self.console_name = console
        self.pins = {}
        self.dog = None
        self.resets = 0
        self.ntp_ok = True
        self.net_ok = True
        self._rand = open("/dev/urandom", "rb")  # noqa: SIM115 -- held open for urandom()

    def time(self):
        return pgbridge.time()

    def ticks_ms(self):
        return pgbridge.ticks_ms()

    def sleep_ms(self, ms):
        pgbridge.sleep_ms(ms)

    def urandom(self, n):
        return self._rand.read(n)

    def uart(self, uart_id, baud, parity, stop, tx, rx):
        return Stream(self.uarts[uart_id])

    def pin(self, n, out):
        p = self.pins.get(n)
        if p is None:
            p = self.pins[n] = Pin(n, out)
        return p

    def wdt(self, timeout_ms):
        self.dog = Watchdog(timeout_ms)
        return self.dog

    def network_up(self):
        return self.net_ok

    def ntp_sync(self):
        return self.ntp_ok

    def mqtt_factory(self, mq, client_id, timeout_s):
        from umqtt import simple

        from pilefw.mqtt import TimedSockets, parse_url

        tls, host, port = parse_url(mq["url"])
        if tls:
            raise OSError("the VM harness has no TLS")
        if not isinstance(simple.socket, TimedSockets):
            simple.socket = TimedSockets(_Sockets, timeout_s)
        return lambda: simple.MQTTClient(client_id, host, port)

    def console_port(self, uart_def):
        return None if self.console_name is None else Stream(self.console_name)

    def mem(self):
        import gc

        free = gc.mem_free()
        return free, free + gc.mem_alloc()

    def reset(self):
        self.resets += 1

    def repl(self):
        pass
