"""The technician console: one line interpreter for the ESP32 (UART0) and the Pi (tty, socket).

The interpreter does no I/O and reads no clock: the port hands it the bytes a terminal sent and
the time, and sends back whatever bytes it returns.

    c = Console(backend, auth=shared_auth, echo=True, origin="serial /dev/serial0")
    port.write(c.greeting(now))
    port.write(c.feed(port.read(), now))      # every chunk that arrives
    port.write(c.poll(now))                   # at least once a second, and after c.wakeup()
    c.close(now)                              # when the session ends (disconnect, Ctrl-D)

Line discipline (`feed`): bytes accumulate until CR or LF (CRLF counts once).  Backspace and DEL
delete the last character (a whole UTF-8 sequence); Ctrl-C clears the pending line, cancels a
login or factory-reset prompt, or, on an empty line, cancels a running mbread/scan; ANSI escape
sequences (arrow keys) are swallowed; every other control byte is dropped (Ctrl-D, EOF and
disconnects are the port's business).  A line longer than `max_line` bytes is discarded with one
message and the rest of it, up to the next newline, is ignored: the pending line never grows
past `max_line`.  A line that is not valid UTF-8 is refused with a message.  With `echo=True`
(serial terminals) typed characters are echoed, except while a PIN is being typed.  Output uses
CRLF line ends and is stripped of control characters a device could use to drive the terminal.

Bounded output: one command's output is cut at `max_output` characters (a JSON answer that would
be cut is replaced by {"error": ...}); lines arriving in one `feed` after `max_output` bytes of
answers are skipped and counted; asynchronous output waiting for `poll` is capped at
`max_queue` characters (progress lines beyond it are dropped and counted; a completion or a
notice is always kept, so the queue is bounded by max_queue + max_output).

Commands: see `commands()` and docs/console.md.  Every command takes `--json` (one JSON object
answer, sorted keys).  Privileged commands need `login`.

Authentication: `AuthState` holds the PIN record (pilecore.pinhash format) and the failed-login
count.  The port creates ONE AuthState and passes it to every session it opens, so reconnecting
does not reset the lockout.  After a wrong PIN, `login` is refused for lockout_base_s, doubling
with each further failure up to lockout_max_s; a right PIN resets the count.  A logged-in
session that executes no command for idle_logout_s logs out by itself (reported by `poll`).
Changing the record (`AuthState.set_record`) logs out every session that logged in with the old
one.  The PIN line is never echoed, never passed to the backend, never part of any output.

Audit: every privileged command, allowed, refused or failed, and every login attempt and logout
calls backend.audit({"type": "console.audit", "t": now, "who": "technician"|"anonymous",
"origin": <port's session name>, "cmd": name, "args": [...], "result": "ok"|"refused"|"failed"|
"cancelled"|"locked"|"idle", "detail": text}); secret-looking values are masked, the PIN never
appears.  `t` is the console clock; the backend stamps the signed event with wall-clock time.

Backend (duck-typed; plain dicts, lists, strings): status(), piles(), meter(pile) -> dict|None,
bays(), bay(id) -> dict|None, events(n), mqtt(), bus(), log(level=None), selftest() -> [(name,
ok, detail)], keys() -> {"kid", "pem"}, settings() -> {key: value}, set_setting(key, value) ->
(ok, message), interlock(pile, mode) -> (ok, message), reboot(), factory_reset(), audit(event),
mbread(deferred), scan(deferred), and optionally cancel(deferred) and repl() (ESP32).  A backend
method that raises is reported as "error: ..." with its message; nothing is ever raised out of
feed, execute or poll.

Deferred protocol (mbread and scan go through the port's bus scheduler, so they are asynchronous):
the console validates the arguments, makes a `Deferred` with a token and a request tuple

    ("mbread", bus, address, function, register, count)
    ("scan", bus, first_address, last_address)

and calls backend.mbread(d) / backend.scan(d), which must return at once after queuing the I/O.
Later the port calls d.progress(info) (scan: {"addr": n, "answered": bool}, or a str) and finally
d.complete(result) -- or console.progress(d.token, info) / console.complete(d.token, result):

    mbread result: {"values": [int, ...]} or {"error": "timeout"}; extra keys are shown too
    scan result:   {"found": [address, ...]} or {"error": "..."}

A backend may also complete inside mbread()/scan() itself (the answer is then part of the
command's output).  One deferred runs per session at a time; the prompt is withheld until it
completes and the result reaches the terminal through `poll` (the console calls its `wakeup`
attribute, if the port set one, whenever output is waiting).  Ctrl-C on an empty line cancels it
(d.cancelled becomes True and backend.cancel(d) is called if it exists); an mbread that gets no
answer within MBREAD_TIMEOUT_S, or a scan without progress for SCAN_IDLE_S, is abandoned with a
message.  complete/progress for an abandoned or unknown token return False and change nothing.

reboot, factory-reset and repl are carried out by `poll` ACTION_DELAY_S after they are accepted,
so the answer reaches the terminal before the gateway goes away.
"""

from pilecore import civiltime, jsonc, pinhash

PROMPT_USER = "pilegate> "
PROMPT_TECH = "pilegate# "
PROMPT_PIN = "PIN: "
CONFIRM_TAIL = " to confirm: "  # the factory-reset prompt ends with this
MASK = "****"

MBREAD_TIMEOUT_S = 15
SCAN_IDLE_S = 30
PIN_TIMEOUT_S = 60
ACTION_DELAY_S = 1
MAX_EVENTS = 100
LOG_LEVELS = ("debug", "info", "warning", "error")

NO_PIN = (
    "no technician PIN has been provisioned on this gateway, so privileged commands are "
    "disabled. An installer sets one at provisioning (pilegate provision --console-pin); "
    "the gateway stores only a salted PBKDF2 hash of it."
)
BINDING_REFUSED = (
    "meter-to-pile bindings (which meter, bus, address and serial belong to a "
    "pile) cannot be changed from the console: they decide billing, so they go "
    "through commissioning: the installer records the meter's serial number in "
    "the site file (pilegate check, then deploy it), and the gateway verifies it "
    "against the meter and publishes a signed binding event."
)

_NORMAL = 0
_PIN = 1
_CONFIRM = 2

# A name is secret when its last word is one of these, or when any word is a strong one.  "pin"
# alone is not (GPIO pins are everywhere in board settings); a PIN record or hash is.
_SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "psk",
    "key",
    "privkey",
    "credential",
    "credentials",
    "passphrase",
)
_STRONG_WORDS = ("password", "passwd", "secret", "private", "psk", "token", "passphrase")

_TABLE = None


def commands():
    """The command table, built on first use: [(name, privileged, usage, summary), ...]."""
    global _TABLE
    if _TABLE is None:
        _TABLE = [
            ("help", False, "help [command]", "list the commands, or one command's details"),
            ("status", False, "status", "firmware, board, uptime, clock and sync, memory, config hash, key id"),
            ("piles", False, "piles", "every pile: state, power, energy, its meter, interlock"),
            ("meter", False, "meter <pile>", "a pile's meter: live values and statistics"),
            ("bays", False, "bays", "every parking bay: state, occupant, duration"),
            ("bay", False, "bay <id>", "one bay in detail (sensors, occupancy, fee so far)"),
            ("events", False, "events [n]", "the last n events (default 10, at most 100)"),
            ("mqtt", False, "mqtt", "MQTT link, last publish, outbox depth, oldest unsent"),
            ("bus", False, "bus", "per-bus and per-device Modbus statistics"),
            (
                "mbread",
                False,
                "mbread <bus> <addr> <fc> <reg> <count>",
                "read registers by hand (fc 1-4; reg 0-based, decimal or 0x hex)",
            ),
            (
                "scan",
                False,
                "scan <bus> [from-to]",
                "find the addresses that answer on a bus (default 1-247), with progress",
            ),
            ("log", False, "log [level]", "recent log lines (debug, info, warning, error)"),
            ("selftest", False, "selftest", "run the self tests: PASS/FAIL per check"),
            ("keys", False, "keys", "the device public key (PEM) and its kid; never the private key"),
            ("login", False, "login", "log in as technician (asks for the PIN)"),
            ("logout", False, "logout", "end the technician login"),
            ("whoami", False, "whoami", "who this session is, and when it logs out"),
            (
                "echo",
                False,
                "echo [on|off]",
                "turn the echo of typed characters on or off (clients that edit lines locally turn it off)",
            ),
            ("set", True, "set [<key> <value>]", "list the operational settings, or change one (not meter bindings)"),
            (
                "interlock",
                True,
                "interlock <pile> on|off|auto",
                "override a pile's interlock (audited); auto returns it to the gateway",
            ),
            ("reboot", True, "reboot", "restart the gateway"),
            ("factory-reset", True, "factory-reset", "wipe keys, backlog and credentials (asks for confirmation)"),
            ("repl", True, "repl", "ESP32 only: leave the console for the MicroPython REPL"),
        ]
    return _TABLE


def command_names():
    """Sorted command names (for completion in clients)."""
    return sorted([c[0] for c in commands()])


def _spec(name):
    for c in commands():
        if c[0] == name:
            return c
    return None


class AuthState:
    """PIN record and login lockout, shared by every session of one gateway (see module doc)."""

    def __init__(self, record=None, lockout_base_s=5, lockout_max_s=900, failures=0):
        self.record = record
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


class Deferred:
    """An asynchronous request the console hands to the port (see the module docstring)."""

    def __init__(self, console, token, request, js):
        self.console = console
        self.token = token
        self.request = request
        self.js = js
        self.cancelled = False
        self.deadline = None
        self.touched = False
        self.found = []
        self.seen = 0

    @property
    def kind(self):
        return self.request[0]

    def progress(self, info):
        return self.console.progress(self.token, info)

    def complete(self, result):
        return self.console.complete(self.token, result)


class _Usage(Exception):
    pass


class _Fail(Exception):
    pass


class Console:
    """One console session; see the module docstring."""

    def __init__(
        self,
        backend,
        auth_record=None,
        idle_logout_s=600,
        max_line=256,
        lockout_base_s=5,
        auth=None,
        echo=False,
        origin="console",
        max_output=16384,
        max_queue=4096,
    ):
        self.backend = backend
        self.auth = auth if auth is not None else AuthState(auth_record, lockout_base_s)
        self.idle_logout_s = idle_logout_s
        self.max_line = max_line
        self.echo = echo
        self.origin = origin
        self.max_output = max_output
        self.max_queue = max_queue
        self.wakeup = None  # set by the port: called when poll() has output waiting
        self._buf = bytearray(max_line)
        self._n = 0
        self._overflow = False
        self._cr = False
        self._esc = 0  # 0, 1 after ESC, 2 in CSI, 3 after ESC O
        self._esc_len = 0
        self._mode = _NORMAL
        self._mode_deadline = None
        self._confirm = None
        self._logged_in = False
        self._login_gen = -1
        self._since = None
        self._active = None
        self._queue = []
        self._queued = 0
        self._dropped = 0
        self._deferred = None
        self._token = 0
        self._action = None  # (due, name)
        self._prompt_shown = False
        self._completed = False
        self._deferred_held = False  # the last command started a request: prompt withheld
        self._budget = 0
        self._skipped = 0

    # ------------------------------------------------------------ session state

    def logged_in(self):
        return self._logged_in and self._login_gen == self.auth.generation

    def prompt(self):
        if self._mode == _PIN:
            return PROMPT_PIN
        if self._mode == _CONFIRM:
            return "Type '%s'%s" % (self._confirm, CONFIRM_TAIL)
        return PROMPT_TECH if self.logged_in() else PROMPT_USER

    def greeting(self, now):
        """Banner and first prompt, for the port to send when a session starts."""
        gw = ""
        try:
            st = self.backend.status()
            gw = " on gateway %s" % _text(st.get("gateway", "?"))
        except Exception:
            pass
        text = "pilegate console%s. Type 'help' for the commands; 'login' for privileged ones.\n" % gw
        self._prompt_shown = True
        return _wire(text + self.prompt())

    def close(self, now):
        """The session ended (disconnect, Ctrl-D): log out, abandon a running request."""
        try:
            if self.logged_in():
                self._logout(now, "closed", "session closed")
            self._cancel_deferred()
        except Exception:
            pass
        self._mode = _NORMAL
        self._n = 0

    # ------------------------------------------------------------ line discipline

    def feed(self, data, now):
        """Raw bytes in; bytes to send back (echo, answers, prompts)."""
        out = bytearray()
        self._budget = 0
        self._skipped = 0
        try:
            if isinstance(data, str):
                data = data.encode("utf-8")
            for b in data:
                if self._esc and self._escape(b):
                    continue
                if b == 13 or b == 10:
                    if b == 10 and self._cr:
                        self._cr = False
                        continue
                    self._cr = b == 13
                    self._line_end(out, now)
                    continue
                self._cr = False
                if b == 8 or b == 127:
                    self._backspace(out)
                elif b == 3:
                    self._interrupt(out, now)
                elif b == 27:
                    self._esc = 1
                    self._esc_len = 0
                elif b >= 32:
                    self._put(b, out)
            if self._skipped:
                out += _wire(
                    "error: %d line(s) skipped: input arrives faster than the console can answer\n" % self._skipped
                )
                self._show_prompt(out)
        except Exception as e:  # last line of defence: never raise into the port
            self._n = 0
            self._overflow = False
            out += _wire("\nconsole error: %s\n" % _msg(e))
            self._show_prompt(out)
        return bytes(out)

    def _escape(self, b):
        """Swallow an ANSI escape sequence; False when `b` ends it abnormally (process b)."""
        self._esc_len += 1
        if b < 32 or b == 127 or self._esc_len > 16:
            self._esc = 0
            return False
        if self._esc == 1:
            self._esc = 2 if b == 0x5B else (3 if b == 0x4F else 0)
        elif self._esc == 3 or 0x40 <= b <= 0x7E:
            self._esc = 0
        return True

    def _put(self, b, out):
        if self._overflow:
            return
        if self._n >= self.max_line:
            self._overflow = True
            self._n = 0
            return
        self._buf[self._n] = b
        self._n += 1
        if self.echo and self._mode != _PIN:
            out.append(b)

    def _backspace(self, out):
        if self._overflow or self._n == 0:
            return
        n = self._n - 1
        while n > 0 and (self._buf[n] & 0xC0) == 0x80:
            n -= 1
        self._n = n
        if self.echo and self._mode != _PIN:
            out += b"\x08 \x08"

    def _interrupt(self, out, now):
        had_line = self._n > 0 or self._overflow
        self._n = 0
        self._overflow = False
        text = ""
        if self._mode == _PIN:
            self._mode = _NORMAL
            text = "login cancelled\n"
        elif self._mode == _CONFIRM:
            self._mode = _NORMAL
            self._audit(now, "factory-reset", [], "cancelled", "Ctrl-C at the confirmation")
            text = "factory reset cancelled\n"
        elif not had_line and self._deferred is not None:
            text = "%s cancelled\n" % self._deferred.kind
            self._cancel_deferred()
        out += b"^C\r\n" if self.echo else b"\r\n"
        out += _wire(text + self._drain())
        self._show_prompt(out)

    def _line_end(self, out, now):
        if self.echo:
            out += b"\r\n"
        if self._overflow:
            self._overflow = False
            self._n = 0
            text = "error: line longer than %d bytes: ignored\n" % self.max_line
        else:
            raw = self._buf[: self._n]
            self._n = 0
            if self._budget > self.max_output:
                self._skipped += 1
                if self._mode != _NORMAL:  # never take a skipped line for a PIN
                    self._mode = _NORMAL
                return
            try:
                line = str(raw, "utf-8")
            except UnicodeError:
                line = None
            if line is None:
                text = "error: input is not valid UTF-8: line ignored\n"
                if self._mode == _PIN:
                    self._mode = _NORMAL
                    text += "login cancelled\n"
            else:
                text = self.execute(line, now)
        w = _wire(text)
        self._budget += len(w)
        out += w
        if not (self._deferred is not None and self._deferred_held):
            self._show_prompt(out)

    def _show_prompt(self, out):
        out += _wire(self.prompt())
        if self.echo and self._mode != _PIN and self._n:
            out += self._buf[: self._n]
        self._prompt_shown = True
        self._completed = False

    # ------------------------------------------------------------ commands

    def execute(self, line, now):
        """One command line -> its output (str, "\\n" line ends; the prompt is not included)."""
        try:
            return self._execute(line, now)
        except Exception as e:
            return "error: %s\n" % _msg(e)

    def _execute(self, line, now):
        self._deferred_held = False
        notice = self._check_idle(now)
        if self._mode == _PIN:
            return notice + self._pin_line(line, now)
        if self._mode == _CONFIRM:
            return notice + self._confirm_line(line, now)
        words = line.split()
        if not words:
            return notice
        js = "--json" in words
        if js:
            words = [w for w in words if w != "--json"]
            if not words:
                return notice + _err(js, "--json needs a command")
        name = words[0].lower()
        args = words[1:]
        spec = _spec(name)
        if spec is None:
            shown = "" if name.isdigit() else " '%s'" % _text(name[:32])  # a mistyped PIN is not repeated
            return notice + _err(js, "unknown command%s: type help" % shown)
        if self.logged_in():
            self._active = now
        if spec[1] and not self.logged_in():
            why = NO_PIN if self.auth.record is None else "'%s' needs a technician login: type login" % name
            self._audit(now, name, args, "refused", "not logged in")
            return notice + _err(js, why)
        handler = getattr(self, "_c_" + name.replace("-", "_"))
        token = self._token
        try:
            out = handler(args, now, js)
        except _Usage as e:
            out = _err(js, "%s (usage: %s)" % (_msg(e), spec[2]))
        except _Fail as e:
            out = _err(js, _msg(e))
        except Exception as e:
            out = _err(js, "%s failed: %s" % (name, _msg(e)))
        out = self._bound(out, js)
        if self._deferred is not None and self._deferred.token != token:
            self._deferred_held = True
            self._prompt_shown = False
        return notice + out + self._drain()

    def _bound(self, out, js):
        if len(out) <= self.max_output:
            return out
        if js:
            return _err(True, "answer too large (%d characters, limit %d): ask for less" % (len(out), self.max_output))
        cut = out[: self.max_output]
        return cut + "\n... output truncated (%d more characters)\n" % (len(out) - len(cut))

    # read-only ----------------------------------------------------------------

    def _c_help(self, args, now, js):
        if args:
            spec = _spec(args[0].lower())
            if spec is None:
                raise _Fail("no command '%s': type help" % _text(args[0][:32]))
            who = "logged-in technician" if spec[1] else "anyone"
            if js:
                return _json({"name": spec[0], "usage": spec[2], "summary": spec[3], "privileged": spec[1]})
            return "%s\n  %s\n  who: %s\n  add --json for one JSON object\n" % (spec[2], spec[3], who)
        if js:
            return _json(
                {"commands": [{"name": c[0], "usage": c[2], "summary": c[3], "privileged": c[1]} for c in commands()]}
            )
        width = max([len(c[2]) for c in commands()])
        lines = ["Commands anyone may run:"]
        for priv in (False, True):
            if priv:
                lines.append("Commands for a logged-in technician (login first):")
            for c in commands():
                if c[1] == priv:
                    lines.append("  %-*s  %s" % (width, c[2], c[3]))
        lines.append(
            "Add --json to any command for one JSON object. Ctrl-C clears the line or cancels a running mbread/scan."
        )
        return "\n".join(lines) + "\n"

    def _c_status(self, args, now, js):
        st = _clean(self.backend.status())
        if js:
            return _json(st)
        return _kv(
            st,
            (
                "gateway",
                "site",
                "firmware",
                "board",
                "uptime_s",
                "time",
                "time_sync",
                "mem_free",
                "mem_total",
                "config_hash",
                "kid",
            ),
        )

    def _c_piles(self, args, now, js):
        rows = _clean(self.backend.piles())
        if js:
            return _json({"piles": rows})
        if not rows:
            return "no piles configured\n"
        return _table(
            rows,
            (
                "id",
                "name",
                "state",
                "power_w",
                "energy_wh",
                "bus",
                "address",
                "serial",
                "metered",
                "interlock",
                "faults",
            ),
        )

    def _c_meter(self, args, now, js):
        if len(args) != 1:
            raise _Usage("which pile?")
        m = self.backend.meter(args[0])
        if m is None:
            raise _Fail("no pile '%s' (piles: %s)" % (_text(args[0][:32]), self._ids(self.backend.piles(), "id")))
        m = _clean(m)
        if js:
            return _json(m)
        return _kv(m, ("pile", "profile", "bus", "address", "serial", "identity", "state", "t"))

    def _c_bays(self, args, now, js):
        rows = _clean(self.backend.bays())
        if js:
            return _json({"bays": rows})
        if not rows:
            return "no bays configured\n"
        return _table(rows, ("bay", "id", "pile", "state", "plugged", "charging", "arrival", "duration_s", "fee"))

    def _c_bay(self, args, now, js):
        if len(args) != 1:
            raise _Usage("which bay?")
        b = self.backend.bay(args[0])
        if b is None:
            raise _Fail("no bay '%s' (bays: %s)" % (_text(args[0][:32]), self._ids(self.backend.bays(), "bay")))
        b = _clean(b)
        if js:
            return _json(b)
        return _kv(b, ("bay", "pile", "state", "t"))

    def _c_events(self, args, now, js):
        n = 10
        if len(args) > 1:
            raise _Usage("too many arguments")
        if args:
            n = _int(args[0], 1, MAX_EVENTS, "n")
        evs = _clean(self.backend.events(n))
        if js:
            return _json({"events": evs})
        if not evs:
            return "no events\n"
        lines = []
        for ev in evs:
            if not isinstance(ev, dict):
                lines.append(_fmt(ev))
                continue
            rest = ["%s=%s" % (k, _fmt(ev[k], k)) for k in sorted(ev) if k not in ("t", "type")]
            lines.append("%s  %-20s %s" % (_fmt(ev.get("t"), "t"), _text(ev.get("type", "?")), " ".join(rest)))
        return "\n".join(lines) + "\n"

    def _c_mqtt(self, args, now, js):
        m = _clean(self.backend.mqtt())
        if js:
            return _json(m)
        return _kv(m, ("broker", "state", "connected", "since_t", "last_publish_t", "outbox", "oldest_unsent_t"))

    def _c_bus(self, args, now, js):
        buses = _clean(self.backend.bus())
        if js:
            return _json({"buses": buses})
        if not buses:
            return "no buses\n"
        rows = []
        for name in sorted(buses):
            row = {"bus": name}
            st = buses[name]
            if isinstance(st, dict):
                for k in st:
                    if not isinstance(st[k], dict):
                        row[k] = st[k]
            rows.append(row)
        out = [
            _table(
                rows,
                (
                    "bus",
                    "requests",
                    "replies",
                    "timeouts",
                    "crc_errors",
                    "exceptions",
                    "other_errors",
                    "busy_ms",
                    "queued_jobs",
                ),
            )
        ]
        for name in sorted(buses):
            devs = buses[name].get("devices") if isinstance(buses[name], dict) else None
            if devs:
                drows = []
                for key in sorted(devs):
                    d = {"device": key}
                    if isinstance(devs[key], dict):
                        d.update(devs[key])
                    drows.append(d)
                out.append("\n%s devices:\n" % name)
                out.append(
                    _table(
                        drows,
                        (
                            "device",
                            "address",
                            "requests",
                            "replies",
                            "timeouts",
                            "errors",
                            "latency_ms",
                            "srtt_ms",
                            "failures",
                        ),
                    )
                )
        return "".join(out)

    def _c_log(self, args, now, js):
        level = None
        if args:
            level = args[0].lower()
            if level not in LOG_LEVELS or len(args) > 1:
                raise _Usage("level is one of %s" % ", ".join(LOG_LEVELS))
        lines = _clean(self.backend.log(level))
        if js:
            return _json({"level": level, "lines": lines})
        out = []
        for ln in lines:
            if isinstance(ln, dict):
                out.append(
                    "%s %-7s %s" % (_fmt(ln.get("t"), "t"), _text(ln.get("level", "")), _text(ln.get("msg", "")))
                )
            else:
                out.append(_text(ln))
        return ("\n".join(out) + "\n") if out else "no log lines\n"

    def _c_selftest(self, args, now, js):
        checks = []
        for item in self.backend.selftest():
            name, ok, detail = item[0], item[1], item[2] if len(item) > 2 else ""
            checks.append({"name": _text(name), "ok": ok is True, "detail": _text(detail)})
        good = len([c for c in checks if c["ok"]])
        if js:
            return _json({"ok": good == len(checks), "checks": checks})
        rows = [{"result": "PASS" if c["ok"] else "FAIL", "check": c["name"], "detail": c["detail"]} for c in checks]
        tail = (
            "all %d checks passed\n" % good
            if good == len(checks)
            else "%d of %d checks FAILED\n" % (len(checks) - good, len(checks))
        )
        return (_table(rows, ("result", "check", "detail")) if rows else "") + tail

    def _c_keys(self, args, now, js):
        k = self.backend.keys()
        kid = _text(k.get("kid", ""))
        pem = k.get("pem", "") or ""
        if "PRIVATE" in pem:  # defence in depth: a port bug must not leak the key here
            raise _Fail("the backend offered a private key: refused, nothing shown")
        if js:
            return _json({"kid": kid, "pem": pem})
        return "kid  %s\n%s" % (kid, _text(pem, keep_newlines=True) + ("" if pem.endswith("\n") else "\n"))

    def _c_login(self, args, now, js):
        if self.logged_in():
            return "already logged in\n"
        if self.auth.record is None:
            raise _Fail(NO_PIN)
        wait = self.auth.wait_s(now)
        if wait:
            raise _Fail("login locked after %d failed attempt(s): try again in %d s" % (self.auth.failures, wait))
        self._mode = _PIN
        self._mode_deadline = now + PIN_TIMEOUT_S
        return ""

    def _pin_line(self, line, now):
        self._mode = _NORMAL
        pin = line.strip()
        if not pin:
            return "login cancelled\n"
        if self.auth.record is None:
            return "error: %s\n" % NO_PIN
        wait = self.auth.wait_s(now)
        if wait:  # another session failed meanwhile: no parallel guessing
            return "error: login locked: try again in %d s\n" % wait
        try:
            ok = pinhash.check(pin, self.auth.record)
        except ValueError as e:
            self._audit(now, "login", [], "failed", "PIN record malformed")
            return "error: the stored PIN record is malformed (%s): provision the PIN again\n" % _msg(e)
        if not ok:
            d = self.auth.failed(now)
            self._audit(now, "login", [], "failed", "wrong PIN (%d in a row)" % self.auth.failures)
            return "wrong PIN: next attempt allowed in %d s\n" % d
        self.auth.succeeded()
        self._logged_in = True
        self._login_gen = self.auth.generation
        self._since = now
        self._active = now
        self._audit(now, "login", [], "ok", "")
        return "logged in as technician: privileged commands enabled; idle logout after %d s\n" % self.idle_logout_s

    def _c_logout(self, args, now, js):
        if not self.logged_in():
            return "not logged in\n"
        self._logout(now, "ok", "logout")
        return "logged out\n"

    def _logout(self, now, result, detail):
        self._audit(now, "logout", [], result, detail)
        self._logged_in = False

    def _c_whoami(self, args, now, js):
        li = self.logged_in()
        info = {"user": "technician" if li else "anonymous", "logged_in": li, "origin": self.origin, "echo": self.echo}
        if li:
            info["idle_logout_in_s"] = _ceil(self._active + self.idle_logout_s - now)
        if js:
            return _json(info)
        if li:
            return "technician (logged in) on %s; logs out after %d s without a command\n" % (
                _text(self.origin),
                info["idle_logout_in_s"],
            )
        return "anonymous (read-only) on %s; type login for privileged commands\n" % _text(self.origin)

    def _c_echo(self, args, now, js):
        if args:
            if args[0] not in ("on", "off") or len(args) > 1:
                raise _Usage("on or off")
            self.echo = args[0] == "on"
        if js:
            return _json({"echo": self.echo})
        return "echo %s\n" % ("on" if self.echo else "off")

    def _c_mbread(self, args, now, js):
        if len(args) != 5:
            raise _Usage("needs 5 arguments")
        bus = args[0]
        addr = _int(args[1], 1, 247, "addr")
        fc = _int(args[2], 1, 4, "fc (1-4: reads only)")
        reg = _int(args[3], 0, 65535, "reg")
        count = _int(args[4], 1, 125 if fc >= 3 else 2000, "count")
        if reg + count > 65536:
            raise _Usage("reg + count passes 65535")
        return self._start(("mbread", bus, addr, fc, reg, count), now, js, MBREAD_TIMEOUT_S)

    def _c_scan(self, args, now, js):
        if not 1 <= len(args) <= 2:
            raise _Usage("which bus?")
        first, last = 1, 247
        if len(args) == 2:
            parts = args[1].split("-")
            if len(parts) != 2:
                raise _Usage("range is from-to, e.g. 1-32")
            first = _int(parts[0], 1, 247, "from")
            last = _int(parts[1], first, 247, "to")
        return self._start(("scan", args[0], first, last), now, js, SCAN_IDLE_S)

    def _start(self, request, now, js, timeout):
        if self._deferred is not None:
            raise _Fail("busy: a %s is running in this session (Ctrl-C cancels it)" % self._deferred.kind)
        self._token += 1
        d = Deferred(self, self._token, request, js)
        d.deadline = now + timeout
        self._deferred = d
        try:
            getattr(self.backend, request[0])(d)
        except Exception:
            self._deferred = None
            raise
        if self._deferred is d and not js:
            what = "addresses %d-%d" % (request[2], request[3]) if request[0] == "scan" else "address %d" % request[2]
            return "%s on bus %s, %s: queued; Ctrl-C cancels\n" % (request[0], _text(request[1]), what)
        return ""

    # privileged ---------------------------------------------------------------

    def _c_set(self, args, now, js):
        if not args:
            st = _clean(self.backend.settings())
            self._audit(now, "set", [], "ok", "listed settings")
            if js:
                return _json({"settings": st})
            return _kv(st, ()) if st else "no settable keys\n"
        key = args[0]
        if len(args) < 2:
            raise _Usage("set needs a key and a value")
        value = " ".join(args[1:])
        shown = MASK if is_secret(key) else value
        if _binding(key):
            self._audit(now, "set", [key, shown], "refused", "meter binding")
            raise _Fail(BINDING_REFUSED)
        settable = self.backend.settings()
        if key not in settable:
            self._audit(now, "set", [key, shown], "refused", "not a settable key")
            raise _Fail(
                "'%s' is not a setting the console may change; settable: %s"
                % (_text(key[:64]), ", ".join(sorted(settable)) or "none")
            )
        try:
            ok, msg = self.backend.set_setting(key, value)
        except Exception as e:
            self._audit(now, "set", [key, shown], "failed", _msg(e))
            raise
        self._audit(now, "set", [key, shown], "ok" if ok else "refused", _text(msg))
        if js:
            return _json({"ok": ok is True, "key": key, "value": shown, "message": _text(msg)})
        if ok:
            return "%s = %s%s\n" % (_text(key), _text(shown), ("  (%s)" % _text(msg)) if msg else "")
        raise _Fail("refused: %s" % _text(msg))

    def _c_interlock(self, args, now, js):
        if len(args) != 2 or args[1] not in ("on", "off", "auto"):
            raise _Usage("needs a pile and on, off or auto")
        try:
            ok, msg = self.backend.interlock(args[0], args[1])
        except Exception as e:
            self._audit(now, "interlock", args, "failed", _msg(e))
            raise
        self._audit(now, "interlock", args, "ok" if ok else "refused", _text(msg))
        if js:
            return _json({"ok": ok is True, "pile": args[0], "mode": args[1], "message": _text(msg)})
        if ok:
            return "interlock %s %s: %s\n" % (_text(args[0]), args[1], _text(msg) or "done")
        raise _Fail("refused: %s" % _text(msg))

    def _c_reboot(self, args, now, js):
        self._audit(now, "reboot", [], "ok", "accepted")
        self._action = (now + ACTION_DELAY_S, "reboot")
        return _json({"ok": True, "action": "reboot"}) if js else "rebooting in %d s\n" % ACTION_DELAY_S

    def _c_repl(self, args, now, js):
        if getattr(self.backend, "repl", None) is None:
            self._audit(now, "repl", [], "refused", "no REPL on this port")
            raise _Fail("there is no REPL on this port (ESP32 only)")
        self._audit(now, "repl", [], "ok", "accepted")
        self._action = (now + ACTION_DELAY_S, "repl")
        return "leaving the console: the MicroPython REPL takes over this UART (Ctrl-C enabled) until the next reset\n"

    def _c_factory_reset(self, args, now, js):
        gw = None
        try:
            gw = self.backend.status().get("gateway")
        except Exception:
            pass
        self._confirm = "factory-reset %s" % (_text(gw) if gw else "NOW")
        self._mode = _CONFIRM
        self._mode_deadline = now + PIN_TIMEOUT_S
        return (
            "This wipes the device key, the telemetry backlog and the technician PIN, and "
            "restarts the gateway. It cannot be undone.\n"
        )

    def _confirm_line(self, line, now):
        self._mode = _NORMAL
        if not self.logged_in():
            self._audit(now, "factory-reset", [], "refused", "logged out before confirming")
            return "factory reset cancelled: the session is no longer logged in\n"
        if line.strip() != self._confirm:
            self._audit(now, "factory-reset", [], "cancelled", "confirmation did not match")
            return "factory reset cancelled (the confirmation did not match)\n"
        self._audit(now, "factory-reset", [], "ok", "confirmed")
        self._action = (now + ACTION_DELAY_S, "factory_reset")
        return "factory reset confirmed: wiping keys, backlog and credentials in %d s\n" % ACTION_DELAY_S

    # ------------------------------------------------------------ deferred results

    def progress(self, token, info):
        """A progress report for the running request `token`; False when it is not running."""
        d = self._deferred
        if d is None or d.token != token:
            return False
        d.touched = True
        if d.kind != "scan" or not isinstance(info, dict):
            if not d.js:
                self._enqueue("  %s\n" % _text(info))
            self._wake()
            return True
        d.seen += 1
        addr = info.get("addr")
        if info.get("answered"):
            d.found.append(addr)
            if not d.js:
                self._enqueue("  address %s answered\n" % _fmt(addr))
        elif not d.js and isinstance(addr, int) and (addr % 16 == 0 or addr == d.request[3]):
            self._enqueue("  scanned up to %d, %d found\n" % (addr, len(d.found)))
        self._wake()
        return True

    def complete(self, token, result):
        """The result of the running request `token`; False when it is not running."""
        d = self._deferred
        if d is None or d.token != token:
            return False
        self._deferred = None
        try:
            text = self._result_text(d, _clean(result) if result is not None else {})
        except Exception as e:
            text = _err(d.js, "%s: bad result from the port: %s" % (d.kind, _msg(e)))
        self._enqueue(self._bound(text, d.js), True)
        self._completed = True
        self._wake()
        return True

    def _result_text(self, d, res):
        if not isinstance(res, dict):
            res = {"error": "not a dict: %s" % _fmt(res)}
        req = d.request
        if req[0] == "mbread":
            obj = {"bus": req[1], "addr": req[2], "fc": req[3], "reg": req[4], "count": req[5]}
        else:
            obj = {"bus": req[1], "from": req[2], "to": req[3]}
            if "found" not in res and "error" not in res:
                res["found"] = d.found
        for k in res:
            obj[k] = res[k]
        if d.js:
            return _json(obj)
        head = (
            "mbread %s addr %d fc %d reg %d count %d" % (_text(req[1]), req[2], req[3], req[4], req[5])
            if req[0] == "mbread"
            else "scan %s %d-%d" % (_text(req[1]), req[2], req[3])
        )
        if res.get("error"):
            return "%s: error: %s\n" % (head, _fmt(res["error"]))
        extra = ["%s=%s" % (k, _fmt(res[k], k)) for k in sorted(res) if k not in ("values", "found")]
        tail = ("  (%s)" % " ".join(extra)) if extra else ""
        if req[0] == "scan":
            found = res.get("found") or []
            return "%s: %d device(s) answered%s%s\n" % (head, len(found), (": " + _fmt(found)) if found else "", tail)
        values = res.get("values") or []
        rows = []
        for i in range(len(values)):
            v = values[i]
            if req[3] <= 2:
                rows.append({"coil" if req[3] == 1 else "input": req[4] + i, "value": 1 if v else 0})
            else:
                v = int(v) & 0xFFFF
                rows.append(
                    {"reg": req[4] + i, "hex": "0x%04X" % v, "unsigned": v, "signed": v - 65536 if v >= 32768 else v}
                )
        cols = ("coil", "input", "value") if req[3] <= 2 else ("reg", "hex", "unsigned", "signed")
        return "%s%s\n%s" % (head, tail, _table(rows, cols) if rows else "no values\n")

    def _cancel_deferred(self):
        d = self._deferred
        if d is None:
            return
        self._deferred = None
        d.cancelled = True
        cancel = getattr(self.backend, "cancel", None)
        if cancel is not None:
            try:
                cancel(d)
            except Exception:
                pass

    # ------------------------------------------------------------ time-driven output

    def poll(self, now):
        """Output that is due by time: results, progress, idle logout, prompt timeouts."""
        out = bytearray()
        try:
            notice = self._check_idle(now)
            if notice:
                self._enqueue(notice, True)
            if self._mode != _NORMAL and self._mode_deadline is not None and now >= self._mode_deadline:
                what = "login" if self._mode == _PIN else "factory reset"
                if self._mode == _CONFIRM:
                    self._audit(now, "factory-reset", [], "cancelled", "no confirmation in time")
                self._mode = _NORMAL
                self._n = 0
                self._enqueue("%s cancelled: no answer within %d s\n" % (what, PIN_TIMEOUT_S), True)
            d = self._deferred
            if d is not None:
                if d.touched:
                    d.touched = False
                    if d.kind == "scan":
                        d.deadline = now + SCAN_IDLE_S
                elif now >= d.deadline:
                    self._cancel_deferred()
                    self._enqueue(_err(d.js, "%s: the bus gave no answer in time; request abandoned" % d.kind), True)
                    self._completed = True
            if self._action is not None and now >= self._action[0]:
                self._run_action(now)
            text = self._drain()
            if text:
                if self._prompt_shown:
                    out += b"\r\n"
                out += _wire(text)
                if self._prompt_shown or self._completed:
                    self._show_prompt(out)
                self._completed = False
        except Exception as e:
            out += _wire("\nconsole error: %s\n" % _msg(e))
        return bytes(out)

    def _run_action(self, now):
        name = self._action[1]
        self._action = None
        try:
            getattr(self.backend, name)()
        except Exception as e:
            self._audit(now, name.replace("_", "-"), [], "failed", _msg(e))
            self._enqueue("error: %s failed: %s\n" % (name.replace("_", "-"), _msg(e)), True)
            return
        if name == "factory_reset":
            self.auth.set_record(None)  # credentials are gone: every session logs out
            self._logged_in = False

    def _check_idle(self, now):
        if not self._logged_in:
            return ""
        if self._login_gen != self.auth.generation:
            self._logged_in = False
            return "the technician PIN changed: logged out\n"
        if self.idle_logout_s and now - self._active >= self.idle_logout_s:
            self._logout(now, "idle", "idle for %d s" % self.idle_logout_s)
            return "idle for %d s: logged out\n" % self.idle_logout_s
        return ""

    def _enqueue(self, text, force=False):
        if not force and self._queued + len(text) > self.max_queue:
            self._dropped += 1
            return
        self._queue.append(text)
        self._queued += len(text)

    def _drain(self):
        if not self._queue and not self._dropped:
            return ""
        text = "".join(self._queue)
        if self._dropped:
            text += "(%d progress line(s) dropped: the terminal reads slower than they come)\n" % self._dropped
        self._queue = []
        self._queued = 0
        self._dropped = 0
        return text

    def _wake(self):
        if self.wakeup is not None:
            try:
                self.wakeup()
            except Exception:
                pass

    # ------------------------------------------------------------ helpers

    def _audit(self, now, cmd, args, result, detail):
        ev = {
            "type": "console.audit",
            "t": now,
            "who": "technician" if self.logged_in() else "anonymous",
            "origin": self.origin,
            "cmd": cmd,
            "args": _mask_args(cmd, args),
            "result": result,
            "detail": detail,
        }
        try:
            self.backend.audit(ev)
        except Exception as e:
            self._enqueue("warning: the audit event could not be recorded: %s\n" % _msg(e), True)

    def _ids(self, rows, key):
        try:
            ids = [str(r.get(key, r.get("id", "?"))) for r in rows]
        except Exception:
            return "?"
        return _text(", ".join(ids)) if ids else "none"


# ---------------------------------------------------------------- module helpers


def _msg(e):
    s = str(e)
    return _text(s) if s else type(e).__name__


def _err(js, text):
    if js:
        return _json({"error": text})
    return "error: %s\n" % text


def _json(obj):
    return jsonc.dumps(obj) + "\n"


def _ceil(x):
    i = int(x)
    return i + 1 if x > i else i


def _int(s, lo, hi, what):
    try:
        v = int(s[2:], 16) if s[:2].lower() == "0x" else int(s)
    except ValueError:
        raise _Usage("%s must be a number, not '%s'" % (what, _text(s[:16])))
    if not lo <= v <= hi:
        raise _Usage("%s must be %d..%d" % (what, lo, hi))
    return v


def _words(key):
    out = []
    for part in key.lower().replace("-", "_").split("."):
        for w in part.split("_"):
            if w:
                out.append(w)
    return out


def is_secret(key):
    """Does a setting or field name look like it holds a secret? (its value is shown as ****)"""
    if not isinstance(key, str):
        return False
    w = _words(key)
    if not w:
        return False
    if w[-1] in _SECRET_WORDS:
        return True
    for x in w:
        if x in _STRONG_WORDS:
            return True
    return "pin" in w and ("record" in w or "hash" in w or "code" in w or "console" in w)


def _binding(key):
    """Is this key part of a meter-to-pile binding (commissioning only)?"""
    w = _words(key)
    for x in w:
        if x in ("meter", "meters", "binding", "bindings", "bound"):
            return True
    return len(w) > 0 and w[0] in ("pile", "piles") and ("address" in w or "serial" in w or "bus" in w)


def _mask_args(cmd, args):
    out = [_text(a[:64]) for a in args]
    if cmd == "set" and len(out) > 1 and is_secret(args[0]):
        out[1:] = [MASK]
    return out


def _clean(obj, depth=0):
    """Backend data made safe to show: secrets masked, JSON-encodable, bounded depth."""
    if depth > 8:
        return "..."
    if obj is None or obj is True or obj is False:
        return obj
    if isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        out = {}
        for k in obj:
            v = obj[k]
            sk = k if isinstance(k, str) else str(k)
            if is_secret(sk) and v not in (None, ""):
                out[sk] = MASK
            else:
                out[sk] = _clean(v, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_clean(x, depth + 1) for x in obj]
    if isinstance(obj, (bytes, bytearray)):
        return "".join(["%02x" % b for b in obj])
    return str(obj)


def _text(s, keep_newlines=False):
    """A string without control characters (a terminal must not be steered by device data)."""
    if not isinstance(s, str):
        s = str(s)
    bad = False
    for ch in s:
        if ch < " " or ch == "\x7f":
            bad = True
            break
    if not bad:
        return s
    out = []
    for ch in s:
        if (ch < " " or ch == "\x7f") and not (keep_newlines and ch == "\n"):
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def _is_time(key):
    return key in ("t", "time", "since", "arrival") or key.endswith("_t") or key.endswith("_at")


def _duration(s):
    s = int(s)
    d, s = s // 86400, s % 86400
    text = "%02d:%02d:%02d" % (s // 3600, (s // 60) % 60, s % 60)
    return ("%dd %s" % (d, text)) if d else text


def _fmt(v, key=""):
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    if isinstance(v, int):
        if _is_time(key) and v >= 1000000000:
            try:
                return civiltime.iso_utc(v)
            except ValueError:
                return str(v)
        if key == "uptime_s" and v >= 0:
            return _duration(v)
        return str(v)
    if isinstance(v, float):
        s = "%.3f" % v
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        return s
    if isinstance(v, (list, tuple)):
        return ", ".join([_fmt(x) for x in v]) if v else "-"
    if isinstance(v, dict):
        return " ".join(["%s=%s" % (_text(k), _fmt(v[k], k)) for k in sorted(v)])
    return _text(v)


def _ordered(keys, preferred):
    keys = list(keys)
    first = [k for k in preferred if k in keys]
    return first + sorted([k for k in keys if k not in first])


def _flatten(d, prefix, out):
    for k in d:
        v = d[k]
        name = prefix + str(k)
        if isinstance(v, dict) and v:
            _flatten(v, name + ".", out)
        else:
            out[name] = v


def _kv(d, preferred):
    """Aligned `key  value` lines; nested dicts flattened with dotted keys."""
    if not isinstance(d, dict):
        return _fmt(d) + "\n"
    flat = {}
    _flatten(d, "", flat)
    keys = _ordered(flat, preferred)
    if not keys:
        return "-\n"
    w = min(32, max([len(k) for k in keys]))
    lines = []
    for k in keys:
        last = k.split(".")[-1]
        lines.append("%-*s  %s" % (w, _text(k), _fmt(flat[k], last)))
    return "\n".join(lines) + "\n"


def _table(rows, preferred):
    """Aligned columns: the preferred ones present, then any other scalar column, sorted."""
    present = []
    for r in rows:
        if isinstance(r, dict):
            for k in r:
                if k not in present and not isinstance(r[k], dict):
                    present.append(k)
    cols = _ordered(present, preferred)
    if not cols:
        return "\n".join([_fmt(r) for r in rows]) + "\n"
    cells = [[_text(c) for c in cols]]
    for r in rows:
        if isinstance(r, dict):
            cells.append([_fmt(r.get(c), c) for c in cols])
    widths = [0] * len(cols)
    for row in cells:
        for i in range(len(cols)):
            if len(row[i]) > widths[i]:
                widths[i] = len(row[i])
    lines = []
    for row in cells:
        parts = []
        for i in range(len(cols)):
            parts.append(row[i] if i == len(cols) - 1 else "%-*s" % (widths[i], row[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def _wire(text):
    """Text to terminal bytes: CRLF line ends, no other control characters."""
    if not text:
        return b""
    return _text(text, keep_newlines=True).replace("\n", "\r\n").encode("utf-8")
