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
- the plate reader (`pilefw.plates`, a second MQTT client on the cameras' broker) when the
  site names `[bays] plate_broker`;
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
import sys

from pilecore import VERSION, ecdsa, envelope
from pilecore.envelope import Chain
from pilecore.gateway import SiteDriver
from pilecore.site import SiteCore
from pilefw import keystore
from pilefw.clock import MonotonicMs, WallClock, epoch_offset
from pilefw.metering import Buses
from pilefw.mqtt import Link
from pilefw.outbox import Outbox, OutboxFull
from pilefw.rtu import RtuMaster
from pilefw.ticks import ticks_diff

# Modules only the start needs (check_config): dropped from RAM once the App is built
BOOT_ONLY = ("pilecore.config", "pilecore.schema")
_ON_MICROPYTHON = sys.implementation.name == "micropython"
EMBEDDED = ("version", "board_def", "profiles", "sensor_profiles")
WDT_TIMEOUT_MS = 60000
LOG_RING = 40
NTP_RETRY_S = 60
NTP_REFRESH_S = 6 * 3600


class StartRefused(Exception):
    """The App cannot start safely (the start counter cannot be stored on the flash: nothing
    may be signed under an epoch that a restart could reuse).  The Pi exits 74 for the same."""


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
    from pilecore import config  # the validators: needed at start only (App forgets them)

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
    its hash (load_config_file).  The App is the ESP32's hands for the core's `SiteDriver`
    (actuate, read_input, set_clock, resend, save, log): every decision is the driver's."""

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
        self.running = True
        self.on_step = None  # a test hook: called with "main" at every pass of the main loop
        self.clock = WallClock(hw.time, epoch_offset(hw.gmtime))
        self.state = keystore.StateDir(self.root + "/state")
        self._unsaved = {}  # state objects the flash refused, retried each second
        self.keys = keystore.KeyStore(self.root, rand=hw.urandom)
        if self.keys.load_or_create():
            self.log("info", "generated a new device key (kid %s)" % self.keys.kid)
        self.outbox = self._open_outbox()
        try:
            self.epoch = self.state.next_epoch()
        except OSError as e:
            raise StartRefused(
                "cannot store the start counter on the flash (%s): nothing is signed until it can;"
                " free space on the flash (or replace a failing board) and restart" % e
            )
        seq, head = recover_chain(self.outbox)
        self.chain = Chain(self.gw, self.site_id, self.keys.kid, self.keys.sign_raw, self.epoch, seq, head)
        sign = cfg.get("signing", {})
        core = SiteCore(cfg, self.keys.sign_der, self.gw, fw_version, self.state.load("core"))
        ident = {
            "fw": fw_version,
            "platform": "esp32",
            "board": cfg["gateway"]["board"],
            "config_hash": config_hash,
            "kid": self.keys.kid,
            "pubkey": self.keys.pem,
        }
        self.driver = SiteDriver(
            cfg,
            core,
            self.chain,
            self,
            ident,
            self.state.load("settings"),
            self.state.load("replay"),
            self._platform_key(sign.get("platform_key")),
        )
        self.core = core
        self.recent = self.driver.recent
        self.metering = Buses(self.driver, self._open_buses(), self._relays(), self.ms)
        mq = cfg["mqtt"]
        self.prefix = "%s/%s/%s" % (mq.get("prefix", "pilegate/v1"), self.site_id, self.gw)
        self.link = Link(
            hw.mqtt_factory(mq, mq.get("client_id") or self.gw, 5),
            self.outbox,
            self.prefix,
            will=lambda: self._state_msg("offline", "connection lost"),
            online=lambda: self._state_msg("online", self._online_reason),
            on_command=self.command,
            keepalive_s=mq.get("keepalive_s", 30),
            rand=hw.urandom,
        )
        self.plates = self._plate_reader(cfg.get("bays", {}))
        self.auth = None  # the console's AuthState while a session is loaded
        self.console = None
        self.console = self._open_console()
        self.wdt = hw.wdt(WDT_TIMEOUT_MS)
        self.next_tick_ms = self.ms()
        self.net_up = False
        self.next_ntp_ms = self.ms()
        self.driver.started(self.clock.now(), self.epoch)
        self._online_reason = self._reported_oom()
        self.flush()
        if _ON_MICROPYTHON:  # the validators' bytecode is heap on the board; nothing else needs them
            from pilefw.uart_console import forget

            forget(BOOT_ONLY)

    # ------------------------------------------------------------ settings the console reads

    @property
    def interval_s(self):
        return self.driver.interval_s

    @interval_s.setter
    def interval_s(self, v):
        self.driver.set_interval(v)

    @property
    def poll_s(self):
        return self.driver.poll_s

    @poll_s.setter
    def poll_s(self, v):
        self.driver.set_poll_s(v)

    @property
    def log_level(self):
        return self.driver.log_level

    @log_level.setter
    def log_level(self, v):
        self.driver.set_log_level(v)

    def _save_settings(self):
        self.driver.save_settings()

    # ------------------------------------------------------------ wiring

    def _open_outbox(self):
        flash = self.board.get("flash_mb", 4) * 1024 * 1024
        want = self.cfg.get("telemetry", {}).get("outbox_mb", 64) * 1024 * 1024
        max_bytes = min(want, flash // 8)  # 512 KiB on a 4 MB board
        return Outbox(self.root + "/outbox", max_bytes=max_bytes, segment_bytes=32 * 1024)

    def _plate_reader(self, bays):
        """The cameras' broker ([bays] plate_broker), or None: pilefw.plates is imported only
        when the site has one, so a site without cameras pays no RAM for it."""
        url = bays.get("plate_broker")
        if not url:
            return None
        from pilefw.plates import PlateReader

        self._plates_up = None
        factory = self.hw.mqtt_factory({"url": url}, self.gw + "-plates", 5)
        topic = bays.get("plate_topic", "pilegate/local/plates")
        self.log("info", "plate readers: %s, topic %s" % (url, topic))
        return PlateReader(factory, topic, self._plate, rand=self.hw.urandom)

    def _plate(self, payload):
        """One message from the cameras' broker: the driver's; an unusable one is a warning."""
        try:
            why = self.driver.plate(self.clock.now(), payload)
        except MemoryError:
            raise
        except Exception as e:  # the core's defect must not stop the gateway for one read
            why = "plate reader message not used (%s: %s)" % (type(e).__name__, e)
        if why:
            self.log("warning", "%s: %r" % (why, bytes(payload[:120])))

    def _plates_step(self, now_ms):
        """The plate reader's bounded step; its connection changes go to the log, once each."""
        p = self.plates
        did = p.step(now_ms)
        up = True if p.connected else (False if p.failures else None)
        if up is not None and up != self._plates_up:
            self._plates_up = up
            if up:
                self.log("info", "plate broker connected")
            else:
                self.log("warning", "plate broker not reachable (retrying): %s" % p.last_error)
        return did

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
        """The console UART (a `LazyConsole`: the interpreter is imported when someone types)."""
        for u in self.board["uart"]:
            if u["role"] == "console":
                port = self.hw.console_port(u)
                if port is None:
                    return None
                from pilefw.uart_console import LazyConsole

                self.log("info", "console on serial port %s" % u["name"])
                self._console_uart = u["name"]
                return LazyConsole(port, self._console_session, self.gw)
        return None

    def _console_session(self, saved_auth):
        """A console session on the console UART (LazyConsole's `build`): the interpreter, its
        backend and the login state, from the PIN record at the first session, else as the
        last session left it (`saved_auth`: the AuthState fields, the lockout included)."""
        from pilecore.console import AuthState, Console
        from pilefw.backend import ConsoleBackend
        from pilefw.uart_console import UartConsole

        auth = AuthState(self._pin_record())
        for k in saved_auth or ():
            setattr(auth, k, saved_auth[k])
        self.auth = auth
        idle = self.cfg.get("console", {}).get("idle_logout_s", 600)
        c = Console(
            ConsoleBackend(self),
            auth=auth,
            echo=True,
            origin="serial " + self._console_uart,
            idle_logout_s=idle,
            greet_on_input=True,  # a terminal attached after the start gets the banner on its first key
        )
        return UartConsole(self.console.port, c)

    # ------------------------------------------------------------ the driver's hands

    def actuate(self, relay, on):
        self.metering.actuate(relay, on)

    def read_input(self, name):
        pins = getattr(self, "_inputs", None)
        if pins is None:
            pins = self._inputs = {}
        pin = pins.get(name)
        if pin is None:
            for i in self.board.get("input", ()):
                if i["name"] == name:
                    pin = pins[name] = self.hw.pin(i["pin"], False)
        return None if pin is None else pin.value()

    def set_clock(self, t):
        return self.clock.set_platform(t)

    def resend(self, first, last):
        return self.link.resend(first, last)

    def save(self, name, obj):
        """Persist a state object; a flash that refuses (full, failing) never ends the App: the
        object is held in memory, reported in driver.storage["state_unsaved"] and retried each
        second (and by the next save of the same name)."""
        held = self._unsaved
        held[name] = obj
        try:
            self.state.save(name, obj)
        except OSError as e:
            d = getattr(self, "driver", None)
            if d is not None and d.storage.get("state_unsaved") != sorted(held):
                self.log("error", "state %s not saved (kept in memory, retried): %s" % (name, e))
            self._note_unsaved()
            return False
        del held[name]
        self._note_unsaved()
        return True

    def _note_unsaved(self):
        d = getattr(self, "driver", None)
        if d is not None:
            d.storage["state_unsaved"] = sorted(self._unsaved)

    def _retry_saves(self):
        for name in list(self._unsaved):
            if not self.save(name, self._unsaved[name]):
                return

    def log(self, level, msg):
        self.logs.append({"t": self.clock.now(), "level": level, "msg": msg})
        if len(self.logs) > LOG_RING:
            self.logs.pop(0)

    # ------------------------------------------------------------ time, events

    def uptime_s(self):
        return (self.ms() - self.started_ms) // 1000

    def emit(self, events):
        self.driver.emit(events)

    # ------------------------------------------------------------ chain and outbox

    def flush(self):
        """Sign what the driver has waiting and store it (one put per message, stopping at the
        first the outbox refuses); the driver keeps or counts the rest."""
        d = self.driver
        now = self.clock.now()
        d.outbox_dropped(now, self.outbox.take_dropped())
        hist = not self.link.connected or self.outbox.depth() > 0
        prepared = d.seal(now, self.clock.tsync, hist)
        n = 0
        why = None
        for p in prepared:
            try:
                ok = self.outbox.put(p.seq, p.kind, self.prefix + "/" + p.kind, p.jws.encode())
            except OutboxFull as e:
                ok, why = False, "outbox full: %s" % e
            except OSError as e:  # the flash refused the write: nothing was stored
                ok, why = False, "flash error: %s" % e
            if not ok:
                why = why or "outbox full"
                break
            n += 1
        d.stored(prepared, n, now, why)
        return n

    def _state_msg(self, state, reason=None):
        return self.driver.state_message(self.clock.now(), self.clock.tsync, state, reason)

    def birth(self):
        return self.driver.birth()

    def telemetry(self):
        return self.driver.telemetry(self.clock.now())

    # ------------------------------------------------------------ the main loop

    def step(self):
        """One pass of the main loop (see the module docstring)."""
        if self.on_step is not None:
            self.on_step("main")
        did = self.metering.step(self.ms(), self.clock.now())
        now_ms = self.ms()
        if now_ms >= self.next_tick_ms:
            self.next_tick_ms += 1000
            if now_ms >= self.next_tick_ms:
                self.next_tick_ms = now_ms + 1000  # fell behind: do not try to catch up
            self._second(now_ms)
            did = True
        if self.net_up:
            did = self.link.step(self.ms()) or did
            if self.plates is not None:
                did = self._plates_step(self.ms()) or did
        if self.console is not None:
            did = self.console.step(self.clock.now()) or did
        if self.driver.reboot_due(self.ms(), self.outbox.depth()):
            self.link.close(self._state_msg("offline", "rebooting"))
            self.hw.reset()
        self.wdt.feed()
        return did

    def run(self):
        """The main loop, until `running` is cleared; sleeps a little when a pass was idle.

        No silent stop: an unexpected exception is logged, the retained offline state says
        "crashed", and the exception ends the loop (main.py resets the board).  A MemoryError
        is a handled state: `out_of_memory` restarts the gateway cleanly."""
        try:
            while self.running:
                try:
                    if not self.step():
                        self.hw.sleep_ms(5)
                except MemoryError as e:
                    self.out_of_memory(e)
                    return
        except Exception as e:
            self.crashed(e)
            raise

    def out_of_memory(self, exc):
        """The heap ran out in the main loop (docs/esp32.md, Out of memory): free what can go,
        record it in state/oom.json (the next start reports it: event `gateway.out_of_memory`
        and the first `state` online with reason "restarted after out of memory"), say so on
        the console, publish the retained `state` offline with reason "out of memory" if that
        still works, close the outbox (the chain continues from it after the restart), reset.
        Every step is tried on its own: memory may still be short.  Should the reset not come,
        the watchdog, no longer fed, resets the board within WDT_TIMEOUT_MS."""
        import gc

        self.running = False
        self.logs = []  # the log ring can go; events stay with the driver for the outbox
        gc.collect()
        msg = "out of memory"
        try:
            msg = "out of memory: %s" % exc
            old = self.state.load("oom", {})
            count = old.get("count", 0) + 1 if isinstance(old, dict) else 1
            self.state.save("oom", {"t": self.clock.now(), "count": count, "error": str(exc)[:120]})
        except Exception:
            pass
        port = getattr(self.console, "port", None)
        if port is not None:
            try:
                port.write(b"\r\npilegate: out of memory; restarting (outbox and chain kept)\r\n")
            except Exception:
                pass
        for last in (self.flush, lambda: self.driver.save_state(self.clock.now(), True)):
            try:
                last()
            except Exception:
                pass
        try:
            self.link.close(self._state_msg("offline", "out of memory"))
        except Exception:
            pass
        try:
            self.outbox.close()
        except Exception:
            pass
        self.log("error", msg)
        self.hw.reset()

    def _reported_oom(self):
        """At start: the out-of-memory restart recorded by `out_of_memory`, reported once."""
        oom = self.state.load("oom")
        if not isinstance(oom, dict) or oom.get("reported"):
            return None
        oom["reported"] = True
        self.state.save("oom", oom)
        self.driver.emit(
            [{"type": "gateway.out_of_memory", "t": oom.get("t"), "count": oom.get("count"), "error": oom.get("error")}]
        )
        return "restarted after out of memory"

    def crashed(self, exc):
        """What can still be done after an unexpected exception: log it, store what waits,
        publish the offline state with the reason."""
        self.log("error", "gateway crashed: %s: %s" % (type(exc).__name__, exc))
        try:
            self.flush()
            self.driver.save_state(self.clock.now(), True)
        except Exception:
            pass
        try:
            self.link.close(self._state_msg("offline", "crashed: %s" % type(exc).__name__))
        except Exception:
            pass

    def close(self, reason="stopped"):
        """A clean stop: pending events out to the outbox, state saved, the retained offline
        state published, the outbox and the UARTs closed."""
        self.flush()
        self.driver.save_state(self.clock.now(), True)
        for _ in range(8):  # a bounded last drain, as the Pi does for 2 s
            if not self.link.connected or not self.outbox.depth():
                break
            self.link.step(self.ms())
        self.link.close(self._state_msg("offline", reason))
        if self.plates is not None:
            self.plates.close()
        self.outbox.close()
        self.metering.close()
        if self.console is not None:
            deinit = getattr(self.console.port, "deinit", None)
            if deinit is not None:
                deinit()

    def _second(self, now_ms):
        if self._unsaved:
            self._retry_saves()
        self._network(now_ms)
        self.driver.second(self.clock.now(), now_ms, self.clock.tsync)
        self.flush()

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

    # ------------------------------------------------------------ commands

    def command(self, payload):
        """Check and apply one command (the driver's); its signed ack is stored at once."""
        ack = self.driver.command(payload, self.clock.now(), self.ms())
        self.flush()
        return ack

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
