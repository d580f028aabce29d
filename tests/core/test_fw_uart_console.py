"""The ESP32's console UART: the interpreter is loaded only while someone uses it (on both
interpreters; pilefw.uart_console.LazyConsole)."""

import sys

from pilecore.console import Console
from pilefw import uart_console
from pilefw.uart_console import LazyConsole


class Port:
    def __init__(self):
        self.inbox = b""
        self.sent = b""

    def any(self):
        return len(self.inbox)

    def read(self, n):
        data, self.inbox = self.inbox[:n], self.inbox[n:]
        return data

    def write(self, data):
        self.sent += data


class StatusOnly:
    def status(self):
        return {"gateway": "GW-7"}


class Auth:
    def __init__(self):
        self.record = "pbkdf2-sha256$1$00$00"
        self.idle_logout_s = 600
        self.base = 5
        self.cap = 900
        self.failures = 0
        self.locked_until = None
        self.generation = 0


class FakeInterpreter:
    def __init__(self, auth):
        self.auth = auth
        self.logged = False
        self._deferred = None

    def logged_in(self):
        return self.logged


class Session:
    """What LazyConsole's build returns: a UartConsole-like object with `.console`."""

    def __init__(self, port, saved):
        self.port = port
        auth = Auth()
        for k in saved or ():
            setattr(auth, k, saved[k])
        self.console = FakeInterpreter(auth)
        self.fed = b""

    def step(self, now):
        n = self.port.any()
        if n:
            self.fed += self.port.read(n)
            return True
        return False


def test_the_banner_sent_at_start_is_the_console_s_own_greeting():
    c = Console(StatusOnly(), auth_record=None)
    assert uart_console.banner("GW-7") == c.greeting(0)


def test_the_interpreter_is_built_on_the_first_bytes_and_dropped_after_an_idle_logged_out_session():
    port = Port()
    built = []

    def build(saved):
        s = Session(port, saved)
        built.append((s, saved))
        return s

    saved_modules = uart_console.CONSOLE_MODULES
    uart_console.CONSOLE_MODULES = ("fake_console_module",)
    sys.modules["fake_console_module"] = Auth()  # any object will do as the module
    try:
        lazy = LazyConsole(port, build, "GW-7", unload_after_s=60)
        assert port.sent.startswith(b"pilegate console on gateway GW-7.") and port.sent.endswith(b"pilegate> ")
        for t in range(0, 300, 10):
            assert lazy.step(t) is False
        assert built == [] and lazy.session is None  # nobody typed: nothing loaded
        port.inbox = b"login\r"
        assert lazy.step(300) is True
        assert len(built) == 1 and built[0][1] is None and built[0][0].fed == b"login\r"
        session = built[0][0]
        session.console.auth.failures = 3  # three wrong PINs
        session.console.auth.locked_until = 340
        session.console.logged = True
        lazy.step(400)
        assert lazy.session is session  # logged in: kept however long it is idle
        port.inbox = b"logout\r"  # typed: the idle time counts from here
        session.console.logged = False
        assert lazy.step(420) is True
        lazy.step(470)
        assert lazy.session is session  # idle 50 s < 60 s
        lazy.step(481)
        assert lazy.session is None and "fake_console_module" not in sys.modules
        assert lazy.auth["failures"] == 3 and lazy.auth["locked_until"] == 340
        port.inbox = b"\r"
        assert lazy.step(500) is True
        assert len(built) == 2 and built[1][1]["failures"] == 3  # the lockout survived the unload
        assert built[1][0].console.auth.locked_until == 340 and lazy.loads == 2
    finally:
        uart_console.CONSOLE_MODULES = saved_modules
        sys.modules.pop("fake_console_module", None)
