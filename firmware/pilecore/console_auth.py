"""The console's login state, ONE per gateway: the PIN record, the lockout and the idle logout.

Kept apart from the interpreter (pilecore.console) so that a port can create it at start, and
persist its failure count, without importing the console: on the ESP32 the console itself is
imported only when the board has a console UART.
"""


class AuthState:
    """PIN record and login lockout, shared by every session of one gateway (see module doc)."""

    def __init__(self, record=None, lockout_base_s=5, lockout_max_s=900, failures=0, idle_logout_s=None):
        self.record = record
        self.idle_logout_s = idle_logout_s  # None: the first Console sets it (default 600)
        self.base = lockout_base_s
        self.cap = lockout_max_s
        self.failures = failures
        self.locked_until = None
        self.generation = 0

    def set_record(self, record):
        """Install a new PIN record (or None); sessions logged in with the old one log out."""
        self.record = record
        self.generation += 1

    def wait_s(self, now):
        """Seconds until the next login attempt is allowed (0: allowed now)."""
        if self.locked_until is None or now >= self.locked_until:
            return 0
        w = self.locked_until - now
        return int(w) + (1 if w != int(w) else 0)

    def delay_s(self):
        """Lockout after the current number of failures."""
        if self.failures <= 0:
            return 0
        n = self.failures - 1
        if n > 20:
            n = 20
        d = self.base * (1 << n)
        return d if d < self.cap else self.cap

    def failed(self, now):
        self.failures += 1
        d = self.delay_s()
        self.locked_until = now + d
        return d

    def succeeded(self):
        self.failures = 0
        self.locked_until = None

    def snapshot(self):
        """What a port may persist across restarts (the failure count, never the PIN)."""
        return {"failures": self.failures}
