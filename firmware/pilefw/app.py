"""The ESP32 gateway: the Pi runtime's job on MicroPython primitives, one main loop.

`App(cfg, hw)` wires the compiled site configuration (what `pilegate check --json` prints,
validated again here) to:

- the device key (`pilefw.keystore`, generated on first start), the start counter and the state
  files (core snapshot, command replay guard, settings);
- one `RtuMaster` per RS-485 bus on the board's UART and DE pin, driven by a core
  `BusScheduler` (`pilefw.metering`), and `SiteCore` for every decision;
- the signed chain (`pilecore.envelope.Chain`) and the flash outbox (`pilefw.outbox`): every
  message is signed, stored, and only then published; at boot seq and prev are recovered from
  `outbox.last()` (prev = SHA-256 of that record's signing input);
- the MQTT link (`pilefw.mqtt.Link` over umqtt.simple) and signed downlink commands
  (`pilecore.commands`);
- the technician console on the board's console UART (`pilefw.uart_console`, `pilefw.backend`);
- the watchdog, fed once per main-loop pass.

`step()` is one pass of the main loop: at most one Modbus transaction per bus, the once-a-second
housekeeping when due (supervision, bay inputs, interlocks, telemetry, events and billing
records, state), a bounded MQTT step, the console, the watchdog.  `run()` repeats it until
`running` is cleared (the console's `repl`).

`hw` is the hardware abstraction (pilefw.hw.DeviceHw on the ESP32; a fake in the CPython tests):
    root                                  directory for key, outbox and state ("/data")
    uart(id, baud, parity, stop, tx, rx)  a machine.UART-like object; parity "N" | "E" | "O"
    pin(n, out)                           a machine.Pin-like object
    wdt(timeout_ms)                       an object with feed()
    time(), gmtime                        the port's time.time() and time.gmtime
    ticks_ms(), sleep_ms(ms), urandom(n)
    network_up() -> bool                  (re)connects the network when needed
    ntp_sync() -> bool                    ntptime.settime(); True on success
    mqtt_factory(mqtt_cfg, client_id, timeout_s) -> factory() of umqtt.simple clients
    console_port(uart_def) -> object with any(), read(n), write(b), or None
    mem() -> (free, total) or None;  reset();  repl()
"""

import json

from pilecore import VERSION, commands, config, ecdsa, envelope
from pilecore.console import AuthState
from pilecore.envelope import Chain
from pilecore.site import SiteCore
from pilefw import keystore
from pilefw.clock import MonotonicMs, WallClock, epoch_offset
from pilefw.metering import Metering
from pilefw.mqtt import Link
from pilefw.outbox import Outbox, OutboxFull
from pilefw.rtu import RtuMaster
from pilefw.ticks import ticks_diff

EMBEDDED = ("version", "board_def", "profiles", "sensor_profiles")
WDT_TIMEOUT_MS = 60000
EVENT_RING = 100
LOG_RING = 40
SAVE_EVERY_S = 10
RESET_GRACE_MS = 5000
NTP_RETRY_S = 60
NTP_REFRESH_S = 6 * 3600


class ConfigError(Exception):
    """The configuration cannot be used; `problems` is a list of (key, message)."""

    def __init__(self, problems):
        super().__init__("; ".join(["%s: %s" % (k, m) for k, m in problems]))
        self.problems = problems


def check_config(cfg):
    """Validate a compiled configuration again on the device: (compiled, problems).

    The compiled JSON embeds its board definition (`board_def`) and the meter and sensor
    profiles it uses; they are validated with the site, exactly as `pilegate check` did."""
    if not isinstance(cfg, dict):
        return None, [("(file)", "not a JSON object: load what `pilegate check --json site.toml` prints")]
    problems = []
    if cfg.get("version") != config.COMPILED_VERSION:
        problems.append(
            (
                "version",
                "is %r, this firmware reads compiled version %d: compile the site "
                "again with this release's `pilegate check --json`" % (cfg.get("version"), config.COMPILED_VERSION),
            )
        )
    board = cfg.get("board_def")
    profiles = cfg.get("profiles")
    sensors = cfg.get("sensor_profiles", {})
    for key, value in (("board_def", board), ("profiles", profiles), ("sensor_profiles", sensors)):
        if not isinstance(value, dict):
            problems.append(
                (key, "missing or not an object: this is not the compiled JSON of `pilegate check --json site.toml`")
            )
    if problems:
        return None, problems
    try:
        board_ok, errs = config.validate_board(board, board.get("id"))
    except Exception as e:  # a validator that trips over damaged data is a problem too
        board_ok, errs = None, [("", "damaged, cannot be checked: %s %s" % (type(e).__name__, e))]
    problems += [(("board_def." + k) if k else "board_def", m) for k, m in errs]
    if board_ok is not None and not board_ok["platform"].startswith("esp32"):
        problems.append(
            (
                "gateway.board",
                "%r is a %s board; this firmware runs on ESP32 boards" % (board_ok["id"], board_ok["platform"]),
            )
        )
    if problems:
        return None, problems
    site = {}
    for k in cfg:
        if k not in EMBEDDED:
            site[k] = cfg[k]
    try:
        return config.validate_site(site, {board["id"]: board}, profiles, sensors)
    except Exception as e:
        return None, [("(file)", "cannot be checked: %s %s" % (type(e).__name__, e))]


def load_config_file(path):
    """(compiled config, config hash) from the JSON file; ConfigError with every problem.

    The hash is the SHA-256 of the canonical JSON, the same `config_hash` the Pi reports."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([("(file)", "%s cannot be read (%s): copy the compiled site there" % (path, e))])
    raw = raw.strip()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ConfigError([("(file)", "%s is not valid JSON: %s" % (path, e))])
    compiled, problems = check_config(data)
    if problems:
        raise ConfigError(problems)
    return compiled, envelope.sha256_hex(raw)


def signing_input_hash(jws):
    """SHA-256 (hex) of a stored JWS's signing input: the `prev` of the next message."""
    return envelope.sha256_hex(bytes(jws).rsplit(b".", 1)[0])


def recover_chain(outbox):
    """(seq, head) of the newest message ever stored, or (0, zero hash) for a new gateway."""
    last = outbox.last()
    if last is None:
        return 0, envelope.ZERO_HASH
    return last[0], signing_input_hash(last[1])


def uart_id(name):
    """machine.UART id of a board UART name such as "uart2"."""
    digits = ""
    for ch in name:
        if "0" <= ch <= "9":
            digits += ch
    if not digits:
        raise ConfigError([("board_def.uart", "UART %r has no number in its name" % name)])
    return int(digits)


class App:
    """See the module docstring.  `cfg` is the compiled configuration (dict); `config_hash`
    its hash (load_config_file)."""

    def __init__(self, cfg, hw, config_hash="", fw_version=VERSION):
        compiled, problems = check_config(cfg)
        if problems:
            raise ConfigError(problems)
        self.cfg = cfg = compiled
        self.hw = hw
        self.config_hash = config_hash
        self.fw_version = fw_version
        self.board = cfg["board_def"]
        self.gw = cfg["gateway"]["id"]
        self.site_id = cfg["gateway"]["site"]
        self.root = hw.root
        self.ms = MonotonicMs(hw.ticks_ms, ticks_diff)  # never wraps (ESP32 ticks do)
        self.started_ms = self.ms()
        self.logs = []
        self.recent = []
        self.events = []
        self.running = True
        self.reset_at_ms = None
        self.clock = WallClock(hw.time, epoch_offset(hw.gmtime))
        self.state = keystore.StateDir(self.root + "/state")
        self.keys = keystore.KeyStore(self.root, rand=hw.urandom)
        if self.keys.load_or_create():
            self.log("info", "generated a new device key (kid %s)" % self.keys.kid)
        self.outbox = self._open_outbox()
        self.epoch = self.state.next_epoch()
        seq, head = recover_chain(self.outbox)
        self.chain = Chain(self.gw, self.site_id, self.keys.kid, self.keys.sign_raw, self.epoch, seq, head)
        settings = self.state.load("settings", {})
        tele = cfg.get("telemetry", {})
        self.interval_s = settings.get("interval_s") or tele.get("interval_s", 30)
        self.poll_s = settings.get("poll_s") or cfg.get("metering", {}).get("poll_s", 10)
        self.log_level = settings.get("log_level", "info")
        self.replay = commands.ReplayGuard(self.state.load("replay"))
        sign = cfg.get("signing", {})
        self.platform_pub = self._platform_key(sign.get("platform_key"))
        self.max_cmd_age = sign.get("command_max_age_s", 300)
        self.core = SiteCore(cfg, self.keys.sign_der, self.gw, fw_version, self.state.load("core"))
        self.metering = Metering(
            cfg,
            self.core,
            self._open_buses(),
            self.emit,
            self.clock.now,
            self.ms,
            self._tsync,
            self._input,
            self._relays(),
            self.poll_s,
        )
        self._saved = None
        self._saved_at = None
        mq = cfg["mqtt"]
        self.prefix = "%s/%s/%s" % (mq.get("prefix", "pilegate/v1"), self.site_id, self.gw)
        self.link = Link(
            hw.mqtt_factory(mq, mq.get("client_id") or self.gw, 5),
            self.outbox,
            self.prefix,
            will=lambda: self._state_msg("offline", "connection lost"),
            online=lambda: self._state_msg("online"),
            on_command=self.command,
            keepalive_s=mq.get("keepalive_s", 30),
            rand=hw.urandom,
        )
        self.auth = AuthState(self._pin_record())
        self.console = self._open_console()
        self.wdt = hw.wdt(WDT_TIMEOUT_MS)
        self.last_telemetry_t = 0
        self.next_tick_ms = self.ms()
        self.next_telemetry_ms = self.ms() + 1000 * min(self.interval_s, 5)
        self.net_up = False
        self.next_ntp_ms = self.ms()
        self.events.append(
            {
                "type": "gateway.started",
                "t": self.clock.now(),
                "epoch": self.epoch,
                "fw": fw_version,
                "config_hash": config_hash,
            }
        )
        self.seal("birth", self.birth())

    # ------------------------------------------------------------ wiring

    def _open_outbox(self):
        flash = self.board.get("flash_mb", 4) * 1024 * 1024
        want = self.cfg.get("telemetry", {}).get("outbox_mb", 64) * 1024 * 1024
        max_bytes = min(want, flash // 8)  # 512 KiB on a 4 MB board
        return Outbox(self.root + "/outbox", max_bytes=max_bytes, segment_bytes=32 * 1024)

    def _uart_def(self, name):
        for u in self.board["uart"]:
            if u["name"] == name:
                return u
        return None

    def _open_buses(self):
        masters = {}
        for bus in self.cfg["bus"]:
            u = self._uart_def(bus["port"])
            uart = self.hw.uart(
                uart_id(u["name"]), bus["baud"], bus["parity"], bus["stopbits"], u.get("tx"), u.get("rx")
            )
            de = None
            if u.get("de") is not None and u.get("de_mode", "gpio") == "gpio":
                de = self.hw.pin(u["de"], True)
            masters[bus["name"]] = RtuMaster(uart, de, bus["baud"], bus["parity"], bus["stopbits"])
        return masters

    def _relays(self):
        out = {}
        used = {}
        for p in self.cfg["pile"]:
            if p.get("relay"):
                used[p["relay"]] = True
        for r in self.board.get("relay", ()):
            if r["name"] in used:
                pin = self.hw.pin(r["pin"], True)
                high = r.get("active", "high") == "high"
                pin.value(0 if high else 1)  # fail-safe: the pile is off until verified
                out[r["name"]] = (pin, high)
        return out

    def _input(self, name):
        pins = getattr(self, "_inputs", None)
        if pins is None:
            pins = self._inputs = {}
        pin = pins.get(name)
        if pin is None:
            for i in self.board.get("input", ()):
                if i["name"] == name:
                    pin = pins[name] = self.hw.pin(i["pin"], False)
        return None if pin is None else pin.value()

    def _platform_key(self, path):
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return ecdsa.parse_spki_pem(f.read())
        except (OSError, ValueError) as e:
            self.log("error", "platform key %s unusable (%s): commands are refused" % (path, e))
            return None

    def _pin_record(self):
        raw = keystore.read_bytes(self.root + "/console.pin")
        return raw.decode().strip() if raw else None

    def _open_console(self):
        for u in self.board["uart"]:
            if u["role"] == "console":
                port = self.hw.console_port(u)
                if port is None:
                    return None
                from pilecore.console import Console
                from pilefw.backend import ConsoleBackend
                from pilefw.uart_console import UartConsole

                idle = self.cfg.get("console", {}).get("idle_logout_s", 600)
                c = Console(
                    ConsoleBackend(self),
                    auth=self.auth,
                    echo=True,
                    origin="serial " + u["name"],
                    idle_logout_s=idle,
                    greet_on_input=True,  # a terminal attached later gets the banner on its first key
                )
                self.log("info", "console on serial port %s" % u["name"])
                uc = UartConsole(port, c)
                uc.greet(self.clock.now())
                return uc
        return None

    # ------------------------------------------------------------ time, log, events

    def _tsync(self):
        return self.clock.tsync

    def uptime_s(self):
        return (self.ms() - self.started_ms) // 1000

    def log(self, level, msg):
        self.logs.append({"t": self.clock.now(), "level": level, "msg": msg})
        if len(self.logs) > LOG_RING:
            self.logs.pop(0)

    def emit(self, events):
        for ev in events:
            self.events.append(ev)
            self.recent.append(ev)
        if len(self.recent) > EVENT_RING:
            del self.recent[: len(self.recent) - EVENT_RING]

    # ------------------------------------------------------------ chain and outbox

    def seal(self, kind, data):
        """Sign, store durably, then publish (by the link): the seq, or None if refused."""
        hist = not self.link.connected or self.outbox.depth() > 0
        prepared = self.chain.prepare(kind, data, self.clock.now(), self.clock.tsync, hist)
        try:
            stored = self.outbox.put(prepared.seq, kind, self.prefix + "/" + kind, prepared.jws.encode())
        except OutboxFull as e:
            self.log("error", "outbox full, %s not stored: %s" % (kind, e))
            return None
        if not stored:
            self.log("warning", "outbox full: telemetry not stored")
            return None
        self.chain.commit(prepared)
        return prepared.seq

    def _state_msg(self, state, reason=None):
        data = {"state": state, "since": self.clock.now()}
        if reason:
            data["reason"] = reason
        return self.chain.unchained("state", data, self.clock.now(), self.clock.tsync)

    def birth(self):
        cfg = self.cfg
        piles = []
        for p in cfg["pile"]:
            piles.append(
                {
                    "pile": p["id"],
                    "bus": p["meter"]["bus"],
                    "address": p["meter"]["address"],
                    "profile": p["meter"]["profile"],
                    "serial": self.core.guard.piles[p["id"]].bound,
                    "interlock": p.get("interlock", "report"),
                }
            )
        bays = [{"bay": b["id"], "pile": b["pile"]} for b in cfg.get("bay", ())]
        return {
            "fw": self.fw_version,
            "platform": "esp32",
            "board": cfg["gateway"]["board"],
            "config_hash": self.config_hash,
            "kid": self.keys.kid,
            "pubkey": self.keys.pem,
            "interval_s": self.interval_s,
            "piles": piles,
            "bays": bays,
        }

    def telemetry(self):
        data = self.core.telemetry(self.clock.now(), self.last_telemetry_t, self.interval_s)
        for item in data["piles"]:
            err = self.metering.meters[item["pile"]].error
            if err:
                item["error"] = err
        return data

    # ------------------------------------------------------------ the main loop

    def step(self):
        """One pass of the main loop (see the module docstring)."""
        hw = self.hw
        did = self.metering.step(self.ms())
        now_ms = self.ms()
        if now_ms >= self.next_tick_ms:
            self.next_tick_ms += 1000
            if now_ms >= self.next_tick_ms:
                self.next_tick_ms = now_ms + 1000  # fell behind: do not try to catch up
            self._second(now_ms)
            did = True
        if self.net_up:
            did = self.link.step(self.ms()) or did
        if self.console is not None:
            did = self.console.step(self.clock.now()) or did
        if self.reset_at_ms is not None and (self.outbox.depth() == 0 or now_ms >= self.reset_at_ms):
            self.link.close(self._state_msg("offline", "rebooting"))
            hw.reset()
            self.reset_at_ms = None
        self.wdt.feed()
        return did

    def run(self):
        """The main loop, until `running` is cleared; sleeps a little when a pass was idle."""
        while self.running:
            if not self.step():
                self.hw.sleep_ms(5)

    def close(self, reason="stopped"):
        """A clean stop: pending events out to the outbox, state saved, the retained offline
        state published, the outbox and the UARTs closed."""
        self._flush_events()
        self._save_state(True)
        for _ in range(8):  # a bounded last drain, as the Pi does for 2 s
            if not self.link.connected or not self.outbox.depth():
                break
            self.link.step(self.ms())
        self.link.close(self._state_msg("offline", reason))
        self.outbox.close()
        for master in self.metering.masters.values():
            deinit = getattr(master.uart, "deinit", None)
            if deinit is not None:
                deinit()
        if self.console is not None:
            deinit = getattr(self.console.port, "deinit", None)
            if deinit is not None:
                deinit()

    def _second(self, now_ms):
        self.metering.tick()
        self._network(now_ms)
        if now_ms >= self.next_telemetry_ms:
            self.seal("telemetry", self.telemetry())
            self.last_telemetry_t = self.clock.now()
            self.next_telemetry_ms += self.interval_s * 1000
            if now_ms >= self.next_telemetry_ms:
                self.next_telemetry_ms = now_ms + self.interval_s * 1000
        billed = False
        for record in self.core.take_billing():
            self.seal("billing", record)
            billed = True
        self._flush_events()
        self._save_state(billed)

    def _network(self, now_ms):
        up = self.hw.network_up()
        if up != self.net_up:
            self.log("info", "network up" if up else "network down")
            self.net_up = up
        if up and now_ms >= self.next_ntp_ms:
            if self.hw.ntp_sync():
                if self.clock.tsync != "ntp":
                    self.log("info", "clock set by NTP")
                self.clock.ntp_synced()
                self.next_ntp_ms = now_ms + NTP_REFRESH_S * 1000
            else:
                self.next_ntp_ms = now_ms + NTP_RETRY_S * 1000

    def _flush_events(self):
        dropped = self.outbox.take_dropped()
        if dropped:
            self.events.append(
                {
                    "type": "outbox.dropped",
                    "t": self.clock.now(),
                    "dropped": [{"seq": s, "hash": h} for s, h in dropped],
                }
            )
        if self.events:
            batch, self.events = self.events, []
            self.seal("event", {"events": batch})

    def _save_state(self, now=False):
        """Persist the core's state when it changed: at once after billing, else at most every
        SAVE_EVERY_S seconds (flash wear)."""
        version = (self.core.version, self.core.bays_version())
        if version == self._saved:
            return
        t = self.clock.now()
        if not now and self._saved_at is not None and t - self._saved_at < SAVE_EVERY_S:
            return
        self.state.save("core", self.core.snapshot())
        self._saved = version
        self._saved_at = t

    def _save_settings(self):
        self.state.save("settings", {"interval_s": self.interval_s, "poll_s": self.poll_s, "log_level": self.log_level})

    # ------------------------------------------------------------ commands

    def command(self, payload):
        """Check and apply one command; always answer with a signed ack."""
        try:
            text = bytes(payload).decode()
        except UnicodeError:
            text = ""
        now = self.clock.now()
        cmd, why = commands.check(text, self.platform_pub, self.gw, now, self.replay, self.max_cmd_age)
        reboot = False
        if cmd is None:
            ack = {"cmd_id": _peek_id(text), "ok": False, "reason": why}
            self.events.append({"type": "command.rejected", "t": now, "reason": why})
        else:
            self.state.save("replay", self.replay.snapshot())  # executed once, even if it fails
            try:
                ack = {"cmd_id": cmd["id"], "cmd": cmd["cmd"], "ok": True, "result": self._apply(cmd)}
                reboot = cmd["cmd"] == "reboot"
            except CommandFailed as e:
                ack = {"cmd_id": cmd["id"], "cmd": cmd["cmd"], "ok": False, "reason": str(e)}
        stored = self.seal("ack", ack)
        if reboot and stored is not None:
            # the ack is stored; give the link a moment to publish it, then reset
            self.reset_at_ms = self.ms() + RESET_GRACE_MS
        return ack

    def _apply(self, cmd):
        name, args = cmd["cmd"], cmd["args"]
        if name == "set_interval":
            self.interval_s = args["interval_s"]
            self._save_settings()
            return {"interval_s": self.interval_s}
        if name == "sync_time":
            return {"offset_s": self.clock.set_platform(args["t"])}
        if name == "resend":
            return {"queued": self.link.resend(args["from_seq"], args["to_seq"])}
        if name == "set_tariff":
            why = self.core.set_tariff(args["tariff"])
            if why:
                raise CommandFailed("tariff refused: %s" % why)
            self._save_state(True)
            return {"tariff": args["tariff"].get("id"), "version": args["tariff"].get("version")}
        if name == "reboot":
            return {"rebooting_in_s": RESET_GRACE_MS // 1000}
        return {}

    # ------------------------------------------------------------ console actions

    def factory_reset(self):
        """Wipe the device key, the outbox, the state and every credential file under root,
        then reset.  The configuration (/config.json) stays."""
        self.outbox.close()
        _wipe_tree(self.root)
        pw = self.cfg["mqtt"].get("password_file")
        if pw:
            keystore.remove(pw)
        self.hw.reset()


class CommandFailed(Exception):
    """A verified command whose arguments cannot be applied; nothing was changed."""


def _peek_id(text):
    """The id of a rejected command if it can be read (for the ack), else None."""
    try:
        body = json.loads(envelope.b64url_decode(text.split(".")[1]))
        cid = body.get("id")
        return cid if isinstance(cid, str) and len(cid) <= 64 else None
    except (ValueError, IndexError, AttributeError, TypeError):
        return None


def _wipe_tree(path):
    import os

    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = path + "/" + name
        try:
            os.remove(p)
        except OSError:
            _wipe_tree(p)
            try:
                os.rmdir(p)
            except OSError:
                pass
