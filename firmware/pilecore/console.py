"""The technician console: one session of the line interpreter, for the ESP32 and the Pi.

The interpreter does no I/O and reads no clock: the port hands it the bytes a terminal sent and
the time, and sends back whatever bytes it returns (docs/console.md is the contract).

    c = Console(backend, auth=shared_auth, echo=True, origin="serial /dev/serial0")
    port.write(c.greeting(now))
    port.write(c.feed(port.read(), now))      # every chunk that arrives
    port.write(c.poll(now))                   # at least once a second, and after c.wakeup()
    c.close(now)                              # when the session ends (disconnect, Ctrl-D)

It is three things, in three modules:

- line discipline (pilecore.console_line): bytes to lines, echo, editing, escape sequences;
- commands (pilecore.console_cmds): the command table and one handler per command;
- rendering (pilecore.console_text): values, tables, masking, terminal-safe text;

and this module, the session that ties them: login state and lockout (`AuthState`, ONE per
gateway, shared by every session), asynchronous requests (`Deferred`), bounded output and
time-driven output (`poll`).  What the read commands show is built for both ports by
pilecore.console_views from a small port-neutral interface.

Bounded output: one command's output is cut at `max_output` characters (a JSON answer that would
be cut is replaced by {"error": ...}); lines arriving in one `feed` after `max_output` bytes of
answers are skipped and counted; asynchronous output waiting for `poll` is capped at
`max_queue` characters (progress lines beyond it are dropped and counted; a completion or a
notice is always kept, so the queue is bounded by max_queue + max_output).

Authentication: after a wrong PIN, `login` is refused for lockout_base_s, doubling with each
further failure up to lockout_max_s; a right PIN resets the count.  A logged-in session that
executes no command for `idle_logout_s` (held in the shared AuthState, so a change reaches every
session) logs out by itself (reported by `poll`).  Changing the record (`AuthState.set_record`)
logs out every session that logged in with the old one.  The PIN line is never echoed, never
passed to the backend, never part of any output.

Audit: every privileged command, allowed, refused or failed, and every login attempt and logout
calls backend.audit({"type": "console.audit", "t": now, "who": "technician"|"anonymous",
"origin": <port's session name>, "cmd": name, "args": [...], "result": "ok"|"refused"|"failed"|
"cancelled"|"idle"|"closed", "detail": text}); secret-looking values are masked.

Deferred protocol (mbread and scan go through the port's bus scheduler): the console validates
the arguments, makes a `Deferred` with a token and a request tuple, ("mbread", bus, address,
function, register, count) or ("scan", bus, first_address, last_address), and calls
backend.mbread(d) / backend.scan(d), which return at once after queuing the I/O.  Later the port
calls d.progress(info) and d.complete(result) ({"values": [...]}, {"found": [...]} or
{"error": "..."}).  One deferred runs per session; Ctrl-C on an empty line cancels it
(backend.cancel(d) if it exists); an mbread without an answer for MBREAD_TIMEOUT_S, or a scan
without progress for SCAN_IDLE_S, is abandoned.  reboot, factory-reset and repl are carried out
by `poll` ACTION_DELAY_S after they are accepted, so the answer reaches the terminal first.

`greet_on_input=True` (serial lines): the greeting sent at start reaches nobody when the
terminal attaches later, so the first bytes of the session bring the banner and prompt again.
"""

from pilecore.console_auth import AuthState
from pilecore.console_cmds import (  # noqa: F401  (re-exported: the console's public names)
    _CONFIRM,
    _NORMAL,
    _PIN,
    ACTION_DELAY_S,
    BINDING_REFUSED,
    LOG_LEVELS,
    MAX_EVENTS,
    MBREAD_TIMEOUT_S,
    NO_PIN,
    PIN_TIMEOUT_S,
    SCAN_IDLE_S,
    Commands,
    command_names,
    commands,
)
from pilecore.console_cmds import spec as cmd_spec
from pilecore.console_line import INTERRUPT, LINE, LineEditor
from pilecore.console_text import (  # noqa: F401
    MASK,
    Fail,
    Usage,
    clean_data,
    err_text,
    fmt_value,
    is_secret,
    mask_args,
    msg_of,
    safe_text,
    to_wire,
)

PROMPT_USER = "pilegate> "
PROMPT_TECH = "pilegate# "
PROMPT_PIN = "PIN: "
CONFIRM_TAIL = " to confirm: "  # the factory-reset prompt ends with this


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


class Console(Commands):
    """One console session; see the module docstring."""

    def __init__(
        self,
        backend,
        auth_record=None,
        idle_logout_s=None,
        max_line=256,
        lockout_base_s=5,
        auth=None,
        echo=False,
        origin="console",
        max_output=16384,
        max_queue=4096,
        greet_on_input=False,
    ):
        self.backend = backend
        if auth is None:
            auth = AuthState(auth_record, lockout_base_s)
        if auth.idle_logout_s is None:
            auth.idle_logout_s = idle_logout_s if idle_logout_s is not None else 600
        self.auth = auth
        self.max_line = max_line
        self.echo = echo
        self.origin = origin
        self.max_output = max_output
        self.max_queue = max_queue
        self.wakeup = None  # set by the port: called when poll() has output waiting
        # A serial line has nobody on it when the greeting goes out; the first bytes a terminal
        # sends show that someone is there, so they get the banner and the prompt again.
        self._greet_pending = greet_on_input
        self._line = LineEditor(max_line)
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

    @property
    def idle_logout_s(self):
        """Seconds without a command before a technician logs out: one value per gateway, in the
        shared AuthState, so `set console.idle_logout_s` reaches every session, new ones too."""
        return self.auth.idle_logout_s

    def pending_len(self):
        """Bytes typed on the current line so far (never more than max_line)."""
        return self._line.n

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
            gw = " on gateway %s" % safe_text(st.get("gateway", "?"))
        except Exception:
            pass
        text = "pilegate console%s. Type 'help' for the commands; 'login' for privileged ones.\n" % gw
        self._prompt_shown = True
        return to_wire(text + self.prompt())

    def close(self, now):
        """The session ended (disconnect, Ctrl-D): log out, abandon a running request."""
        try:
            if self.logged_in():
                self._logout(now, "closed", "session closed")
            self._cancel_deferred()
        except Exception:
            pass
        self._mode = _NORMAL
        self._line.clear()

    # ------------------------------------------------------------ line discipline

    def feed(self, data, now):
        """Raw bytes in; bytes to send back (echo, answers, prompts)."""
        out = bytearray()
        self._budget = 0
        self._skipped = 0
        try:
            if isinstance(data, str):
                data = data.encode("utf-8")
            if data and self._greet_pending:
                self._greet_pending = False
                out += self.greeting(now)
                if not data.strip(b"\r\n"):
                    return bytes(out)  # the Enter that woke the line is answered by the greeting
            for b in data:
                ev = self._line.step(b, out, self.echo and self._mode != _PIN)
                if ev == LINE:
                    self._line_end(out, now)
                elif ev == INTERRUPT:
                    self._interrupt(out, now)
            if self._skipped:
                out += to_wire(
                    "error: %d line(s) skipped: input arrives faster than the console can answer\n" % self._skipped
                )
                self._show_prompt(out)
        except Exception as e:  # last line of defence: never raise into the port
            self._line.clear()
            out += to_wire("\nconsole error: %s\n" % msg_of(e))
            self._show_prompt(out)
        return bytes(out)

    def _interrupt(self, out, now):
        had_line = self._line.had_input()
        self._line.clear()
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
        out += to_wire(text + self._drain())
        self._show_prompt(out)

    def _line_end(self, out, now):
        if self.echo:
            out += b"\r\n"
        raw = self._line.take()
        if raw is None:
            text = "error: line longer than %d bytes: ignored\n" % self.max_line
        else:
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
        w = to_wire(text)
        self._budget += len(w)
        out += w
        if not (self._deferred is not None and self._deferred_held):
            self._show_prompt(out)

    def _show_prompt(self, out):
        out += to_wire(self.prompt())
        if self.echo and self._mode != _PIN:
            out += self._line.pending()
        self._prompt_shown = True
        self._completed = False

    # ------------------------------------------------------------ commands

    def execute(self, line, now):
        """One command line -> its output (str, "\\n" line ends; the prompt is not included)."""
        try:
            return self._execute(line, now)
        except Exception as e:
            return "error: %s\n" % msg_of(e)

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
                return notice + err_text(js, "--json needs a command")
        name = words[0].lower()
        args = words[1:]
        spec = cmd_spec(name)
        if spec is None:
            shown = "" if name.isdigit() else " '%s'" % safe_text(name[:32])  # a mistyped PIN is not repeated
            return notice + err_text(js, "unknown command%s: type help" % shown)
        if self.logged_in():
            self._active = now
        if spec[1] and not self.logged_in():
            why = NO_PIN if self.auth.record is None else "'%s' needs a technician login: type login" % name
            self._audit(now, name, args, "refused", "not logged in")
            return notice + err_text(js, why)
        handler = getattr(self, "_c_" + name.replace("-", "_"))
        token = self._token
        try:
            out = handler(args, now, js)
        except Usage as e:
            out = err_text(js, "%s (usage: %s)" % (msg_of(e), spec[2]))
        except Fail as e:
            out = err_text(js, msg_of(e))
        except Exception as e:
            out = err_text(js, "%s failed: %s" % (name, msg_of(e)))
        out = self._bound(out, js)
        if self._deferred is not None and self._deferred.token != token:
            self._deferred_held = True
            self._prompt_shown = False
        return notice + out + self._drain()

    def _bound(self, out, js):
        if len(out) <= self.max_output:
            return out
        if js:
            return err_text(
                True, "answer too large (%d characters, limit %d): ask for less" % (len(out), self.max_output)
            )
        cut = out[: self.max_output]
        return cut + "\n... output truncated (%d more characters)\n" % (len(out) - len(cut))

    # read-only ----------------------------------------------------------------

    def _start(self, request, now, js, timeout):
        if self._deferred is not None:
            raise Fail("busy: a %s is running in this session (Ctrl-C cancels it)" % self._deferred.kind)
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
            return "%s on bus %s, %s: queued; Ctrl-C cancels\n" % (request[0], safe_text(request[1]), what)
        return ""

    # ------------------------------------------------------------ deferred results

    def progress(self, token, info):
        """A progress report for the running request `token`; False when it is not running."""
        d = self._deferred
        if d is None or d.token != token:
            return False
        d.touched = True
        if d.kind != "scan" or not isinstance(info, dict):
            if not d.js:
                self._enqueue("  %s\n" % safe_text(info))
            self._wake()
            return True
        d.seen += 1
        addr = info.get("addr")
        if info.get("answered"):
            d.found.append(addr)
            if not d.js:
                self._enqueue("  address %s answered\n" % fmt_value(addr))
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
            text = self._result_text(d, clean_data(result) if result is not None else {})
        except Exception as e:
            text = err_text(d.js, "%s: bad result from the port: %s" % (d.kind, msg_of(e)))
        self._enqueue(self._bound(text, d.js), True)
        self._completed = True
        self._wake()
        return True

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
                self._line.clear()
                self._enqueue("%s cancelled: no answer within %d s\n" % (what, PIN_TIMEOUT_S), True)
            d = self._deferred
            if d is not None:
                if d.touched:
                    d.touched = False
                    if d.kind == "scan":
                        d.deadline = now + SCAN_IDLE_S
                elif now >= d.deadline:
                    self._cancel_deferred()
                    self._enqueue(
                        err_text(d.js, "%s: the bus gave no answer in time; request abandoned" % d.kind), True
                    )
                    self._completed = True
            if self._action is not None and now >= self._action[0]:
                self._run_action(now)
            text = self._drain()
            if text:
                if self._prompt_shown:
                    out += b"\r\n"
                out += to_wire(text)
                if self._prompt_shown or self._completed:
                    self._show_prompt(out)
                self._completed = False
        except Exception as e:
            out += to_wire("\nconsole error: %s\n" % msg_of(e))
        return bytes(out)

    def _run_action(self, now):
        name = self._action[1]
        self._action = None
        try:
            getattr(self.backend, name)()
        except Exception as e:
            self._audit(now, name.replace("_", "-"), [], "failed", msg_of(e))
            self._enqueue("error: %s failed: %s\n" % (name.replace("_", "-"), msg_of(e)), True)
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
            "args": mask_args(cmd, args),
            "result": result,
            "detail": detail,
        }
        try:
            self.backend.audit(ev)
        except Exception as e:
            self._enqueue("warning: the audit event could not be recorded: %s\n" % msg_of(e), True)
