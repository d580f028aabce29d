"""The console's commands: the table (name, who, usage, summary) and one handler per command.

`Commands` is the half of `pilecore.console.Console` that knows what each command does; the
session half (pilecore.console) owns the line discipline, login state, deferred requests and
time-driven output, and dispatches a line to `_c_<name>(args, now, js)` here.  Every handler
returns the answer text (or JSON line) or raises `Usage`/`Fail` (pilecore.console_text).

Privilege is decided by the table alone: a command whose `privileged` flag is False must only
read (tests/core/test_console_authz.py walks the table as anonymous and checks it).
"""

from pilecore import pinhash
from pilecore.console_text import (
    BAY_FIELDS,
    MASK,
    MQTT_FIELDS,
    PILE_FIELDS,
    STATUS_FIELDS,
    Fail,
    Usage,
    ceil_int,
    clean_data,
    fmt_value,
    is_binding,
    is_secret,
    json_text,
    kv_lines,
    msg_of,
    parse_int,
    safe_text,
    table_lines,
)

MBREAD_TIMEOUT_S = 15
SCAN_IDLE_S = 30
PIN_TIMEOUT_S = 60
ACTION_DELAY_S = 1
MAX_EVENTS = 100
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_LOG_LINES = 100

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

IDLE_KEY = "console.idle_logout_s"  # the one setting the console applies itself

_NORMAL = 0
_PIN = 1
_CONFIRM = 2

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


def spec(name):
    for c in commands():
        if c[0] == name:
            return c
    return None


def filter_log(lines, level=None, limit=MAX_LOG_LINES):
    """The last `limit` lines at `level` or above (all levels when None).  Reading only."""
    floor = LOG_LEVELS.index(level) if level in LOG_LEVELS else 0
    out = []
    for ln in lines:
        lv = ln.get("level") if isinstance(ln, dict) else None
        if (LOG_LEVELS.index(lv) if lv in LOG_LEVELS else len(LOG_LEVELS) - 1) >= floor:
            out.append(ln)
    return out[-limit:]


def _storage_text(sto):
    """One line for the text view: "ok", or "FULL since ...: why; what was not kept"."""
    if not sto.get("full"):
        return "ok"
    lost = []
    for key, what in (
        ("telemetry_not_stored", "telemetry not stored"),
        ("events_given_up", "events given up"),
        ("keep_given_up", "billing/acks given up"),
    ):
        if sto.get(key):
            lost.append("%s %s" % (fmt_value(sto[key]), what))
    return "FULL since %s: %s%s" % (
        fmt_value(sto.get("since"), "since"),
        fmt_value(sto.get("reason")),
        ("; " + ", ".join(lost)) if lost else "",
    )


class Commands:
    """The command handlers, mixed into `pilecore.console.Console` (see the module docstring)."""

    def _c_help(self, args, now, js):
        if args:
            c = spec(args[0].lower())
            if c is None:
                raise Fail("no command '%s': type help" % safe_text(args[0][:32]))
            who = "logged-in technician" if c[1] else "anyone"
            if js:
                return json_text({"name": c[0], "usage": c[2], "summary": c[3], "privileged": c[1]})
            return "%s\n  %s\n  who: %s\n  add --json for one JSON object\n" % (c[2], c[3], who)
        if js:
            return json_text(
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
        st = clean_data(self.backend.status())
        if js:
            return json_text(st)
        if isinstance(st.get("storage"), dict):
            st["storage"] = _storage_text(st["storage"])
        return kv_lines(st, STATUS_FIELDS)

    def _c_piles(self, args, now, js):
        rows = clean_data(self.backend.piles())
        if js:
            return json_text({"piles": rows})
        if not rows:
            return "no piles configured\n"
        return table_lines(rows, PILE_FIELDS)

    def _c_meter(self, args, now, js):
        if len(args) != 1:
            raise Usage("which pile?")
        m = self.backend.meter(args[0])
        if m is None:
            raise Fail("no pile '%s' (piles: %s)" % (safe_text(args[0][:32]), self._ids(self.backend.piles(), "id")))
        m = clean_data(m)
        if js:
            return json_text(m)
        return kv_lines(
            m, ("pile", "profile", "bus", "address", "serial", "identity", "state", "metered", "faults", "error", "t")
        )

    def _c_bays(self, args, now, js):
        rows = clean_data(self.backend.bays())
        if js:
            return json_text({"bays": rows})
        if not rows:
            return "no bays configured\n"
        return table_lines(rows, BAY_FIELDS)

    def _c_bay(self, args, now, js):
        if len(args) != 1:
            raise Usage("which bay?")
        b = self.backend.bay(args[0])
        if b is None:
            raise Fail("no bay '%s' (bays: %s)" % (safe_text(args[0][:32]), self._ids(self.backend.bays(), "bay")))
        b = clean_data(b)
        if js:
            return json_text(b)
        return kv_lines(b, ("bay", "pile", "state", "t"))

    def _c_events(self, args, now, js):
        n = 10
        if len(args) > 1:
            raise Usage("too many arguments")
        if args:
            n = parse_int(args[0], 1, MAX_EVENTS, "n")
        evs = clean_data(self.backend.events(n))
        if js:
            return json_text({"events": evs})
        if not evs:
            return "no events\n"
        lines = []
        for ev in evs:
            if not isinstance(ev, dict):
                lines.append(fmt_value(ev))
                continue
            rest = ["%s=%s" % (k, fmt_value(ev[k], k)) for k in sorted(ev) if k not in ("t", "type")]
            lines.append("%s  %-20s %s" % (fmt_value(ev.get("t"), "t"), safe_text(ev.get("type", "?")), " ".join(rest)))
        return "\n".join(lines) + "\n"

    def _c_mqtt(self, args, now, js):
        m = clean_data(self.backend.mqtt())
        if js:
            return json_text(m)
        return kv_lines(m, MQTT_FIELDS)

    def _c_bus(self, args, now, js):
        buses = clean_data(self.backend.bus())
        if js:
            return json_text({"buses": buses})
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
            table_lines(
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
                    table_lines(
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
                raise Usage("level is one of %s" % ", ".join(LOG_LEVELS))
        # Reading only: the level filters what is shown and never changes what is logged
        # (that is the privileged `set log.level`).  Filtered here too, whatever the port did.
        lines = clean_data(filter_log(self.backend.log(level), level))
        if js:
            return json_text({"level": level, "lines": lines})
        out = []
        for ln in lines:
            if isinstance(ln, dict):
                out.append(
                    "%s %-7s %s"
                    % (fmt_value(ln.get("t"), "t"), safe_text(ln.get("level", "")), safe_text(ln.get("msg", "")))
                )
            else:
                out.append(safe_text(ln))
        return ("\n".join(out) + "\n") if out else "no log lines\n"

    def _c_selftest(self, args, now, js):
        checks = []
        for item in self.backend.selftest():
            name, ok, detail = item[0], item[1], item[2] if len(item) > 2 else ""
            checks.append({"name": safe_text(name), "ok": ok is True, "detail": safe_text(detail)})
        good = len([c for c in checks if c["ok"]])
        if js:
            return json_text({"ok": good == len(checks), "checks": checks})
        rows = [{"result": "PASS" if c["ok"] else "FAIL", "check": c["name"], "detail": c["detail"]} for c in checks]
        tail = (
            "all %d checks passed\n" % good
            if good == len(checks)
            else "%d of %d checks FAILED\n" % (len(checks) - good, len(checks))
        )
        return (table_lines(rows, ("result", "check", "detail")) if rows else "") + tail

    def _c_keys(self, args, now, js):
        k = self.backend.keys()
        kid = safe_text(k.get("kid", ""))
        pem = k.get("pem", "") or ""
        if "PRIVATE" in pem:  # defence in depth: a port bug must not leak the key here
            raise Fail("the backend offered a private key: refused, nothing shown")
        if js:
            return json_text({"kid": kid, "pem": pem})
        return "kid  %s\n%s" % (kid, safe_text(pem, keep_newlines=True) + ("" if pem.endswith("\n") else "\n"))

    def _c_login(self, args, now, js):
        if self.logged_in():
            return "already logged in\n"
        if self.auth.record is None:
            raise Fail(NO_PIN)
        wait = self.auth.wait_s(now)
        if wait:
            raise Fail("login locked after %d failed attempt(s): try again in %d s" % (self.auth.failures, wait))
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
            return "error: the stored PIN record is malformed (%s): provision the PIN again\n" % msg_of(e)
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
            info["idle_logout_in_s"] = ceil_int(self._active + self.idle_logout_s - now)
        if js:
            return json_text(info)
        if li:
            return "technician (logged in) on %s; logs out after %d s without a command\n" % (
                safe_text(self.origin),
                info["idle_logout_in_s"],
            )
        return "anonymous (read-only) on %s; type login for privileged commands\n" % safe_text(self.origin)

    def _c_echo(self, args, now, js):
        if args:
            if args[0] not in ("on", "off") or len(args) > 1:
                raise Usage("on or off")
            self.echo = args[0] == "on"
        if js:
            return json_text({"echo": self.echo})
        return "echo %s\n" % ("on" if self.echo else "off")

    def _c_mbread(self, args, now, js):
        if len(args) != 5:
            raise Usage("needs 5 arguments")
        bus = args[0]
        addr = parse_int(args[1], 1, 247, "addr")
        fc = parse_int(args[2], 1, 4, "fc (1-4: reads only)")
        reg = parse_int(args[3], 0, 65535, "reg")
        count = parse_int(args[4], 1, 125 if fc >= 3 else 2000, "count")
        if reg + count > 65536:
            raise Usage("reg + count passes 65535")
        return self._start(("mbread", bus, addr, fc, reg, count), now, js, MBREAD_TIMEOUT_S)

    def _c_scan(self, args, now, js):
        if not 1 <= len(args) <= 2:
            raise Usage("which bus?")
        first, last = 1, 247
        if len(args) == 2:
            parts = args[1].split("-")
            if len(parts) != 2:
                raise Usage("range is from-to, e.g. 1-32")
            first = parse_int(parts[0], 1, 247, "from")
            last = parse_int(parts[1], first, 247, "to")
        return self._start(("scan", args[0], first, last), now, js, SCAN_IDLE_S)

    # privileged ---------------------------------------------------------------

    def _c_set(self, args, now, js):
        if not args:
            st = clean_data(self.backend.settings())
            if IDLE_KEY in st:
                st[IDLE_KEY] = self.auth.idle_logout_s  # the console's own setting: its value
            self._audit(now, "set", [], "ok", "listed settings")
            if js:
                return json_text({"settings": st})
            return kv_lines(st, ()) if st else "no settable keys\n"
        key = args[0]
        if len(args) < 2:
            raise Usage("set needs a key and a value")
        value = " ".join(args[1:])
        shown = MASK if is_secret(key) else value
        if is_binding(key):
            self._audit(now, "set", [key, shown], "refused", "meter binding")
            raise Fail(BINDING_REFUSED)
        settable = self.backend.settings()
        if key not in settable:
            self._audit(now, "set", [key, shown], "refused", "not a settable key")
            raise Fail(
                "'%s' is not a setting the console may change; settable: %s"
                % (safe_text(key[:64]), ", ".join(sorted(settable)) or "none")
            )
        try:
            ok, msg = self.backend.set_setting(key, value)
        except Exception as e:
            self._audit(now, "set", [key, shown], "failed", msg_of(e))
            raise
        self._audit(now, "set", [key, shown], "ok" if ok else "refused", safe_text(msg))
        if ok and key == IDLE_KEY and value.isdigit():
            self.auth.idle_logout_s = int(value)  # shared: every session, and new ones, use it
        msg = safe_text(msg or ("applied" if ok else "refused"))
        if js:
            return json_text({"ok": ok is True, "key": key, "value": shown, "message": msg})
        if ok:
            # The answer names the key and value once; a backend message that repeats them
            # ("telemetry.interval_s = 7") is not shown again.
            note = "applied" if key in msg else msg
            return "%s = %s  (%s)\n" % (safe_text(key), safe_text(shown), note)
        raise Fail("refused: %s" % safe_text(msg))

    def _c_interlock(self, args, now, js):
        if len(args) != 2 or args[1] not in ("on", "off", "auto"):
            raise Usage("needs a pile and on, off or auto")
        try:
            ok, msg = self.backend.interlock(args[0], args[1])
        except Exception as e:
            self._audit(now, "interlock", args, "failed", msg_of(e))
            raise
        self._audit(now, "interlock", args, "ok" if ok else "refused", safe_text(msg))
        if js:
            return json_text({"ok": ok is True, "pile": args[0], "mode": args[1], "message": safe_text(msg)})
        if ok:
            return "interlock %s %s: %s\n" % (safe_text(args[0]), args[1], safe_text(msg) or "done")
        raise Fail("refused: %s" % safe_text(msg))

    def _c_reboot(self, args, now, js):
        self._audit(now, "reboot", [], "ok", "accepted")
        self._action = (now + ACTION_DELAY_S, "reboot")
        return json_text({"ok": True, "action": "reboot"}) if js else "rebooting in %d s\n" % ACTION_DELAY_S

    def _c_repl(self, args, now, js):
        if getattr(self.backend, "repl", None) is None:
            self._audit(now, "repl", [], "refused", "no REPL on this port")
            raise Fail("there is no REPL on this port (ESP32 only)")
        self._audit(now, "repl", [], "ok", "accepted")
        self._action = (now + ACTION_DELAY_S, "repl")
        return "leaving the console: the MicroPython REPL takes over this UART (Ctrl-C enabled) until the next reset\n"

    def _c_factory_reset(self, args, now, js):
        gw = None
        try:
            gw = self.backend.status().get("gateway")
        except Exception:
            pass
        self._confirm = "factory-reset %s" % (safe_text(gw) if gw else "NOW")
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

    def _result_text(self, d, res):
        if not isinstance(res, dict):
            res = {"error": "not a dict: %s" % fmt_value(res)}
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
            return json_text(obj)
        head = (
            "mbread %s addr %d fc %d reg %d count %d" % (safe_text(req[1]), req[2], req[3], req[4], req[5])
            if req[0] == "mbread"
            else "scan %s %d-%d" % (safe_text(req[1]), req[2], req[3])
        )
        if res.get("error"):
            return "%s: error: %s\n" % (head, fmt_value(res["error"]))
        extra = ["%s=%s" % (k, fmt_value(res[k], k)) for k in sorted(res) if k not in ("values", "found")]
        tail = ("  (%s)" % " ".join(extra)) if extra else ""
        if req[0] == "scan":
            found = res.get("found") or []
            return "%s: %d device(s) answered%s%s\n" % (
                head,
                len(found),
                (": " + fmt_value(found)) if found else "",
                tail,
            )
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
        return "%s%s\n%s" % (head, tail, table_lines(rows, cols) if rows else "no values\n")

    def _ids(self, rows, key):
        try:
            ids = [str(r.get(key, r.get("id", "?"))) for r in rows]
        except Exception:
            return "?"
        return safe_text(", ".join(ids)) if ids else "none"
