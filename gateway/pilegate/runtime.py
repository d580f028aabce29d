"""`pilegate run`: the Raspberry Pi gateway, wiring the core to real I/O.

Metering (pymodbus through the core scheduler and guard), the signed chain (core envelope with
the device key), the durable outbox (SQLite), the MQTT link (paho) and downlink commands.  All
decisions are the core's; this module schedules them and persists what must survive:
the chain head with every message, meter bindings and the command replay guard whenever they
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt_client
from paho.mqtt.enums import CallbackAPIVersion

from pilecore import envelope
from pilecore.config import parse_mqtt_url
from pilecore.console_auth import AuthState
from pilecore.envelope import Chain
from pilecore.gateway import SiteDriver
from pilecore.site import SiteCore
from pilegate import VERSION, gpio, keys, sdnotify
from pilegate.console_backend import GatewayBackend, LogRing, load_pin_record
from pilegate.console_server import ConsoleError, ConsoleServer
from pilegate.metering_service import Metering
from pilegate.mqtt_link import MqttLink
from pilegate.outbox import Outbox, OutboxFull, signing_input_hash
from pilegate.siteconfig import Site

log = logging.getLogger("pilegate")
EXIT_REBOOT = 75  # systemd's Restart=on-failure brings the process back
EXIT_CRASH = 70  # EX_SOFTWARE: a task died from an unexpected exception (restarted too)


def ntp_synchronised() -> bool:
    """True when the kernel says the clock is synchronised (adjtimex returns TIME_OK etc.)."""
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        return libc.adjtimex(buf) not in (-1, 5)  # 5 = TIME_ERROR: not synchronised
    except (OSError, AttributeError):
        return False


class Gateway:
    """One gateway process; see the module docstring.  The Gateway is the Pi's hands for the
    core's `SiteDriver` (actuate, read_input, set_clock, resend, save, log)."""

    sd = sdnotify.Notifier({})  # replaced in run(); a no-op until then

    def __init__(
        self,
        site: Site,
        data_dir: Path | None = None,
        poll_s: float | None = None,
        interval_s: int | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        inputs: Any = None,
    ):
        self.site = site
        cfg = site.config
        self.cfg = cfg
        self.gw = cfg["gateway"]["id"]
        self.site_id = cfg["gateway"]["site"]
        self.data_dir = Path(data_dir or cfg["gateway"]["data_dir"])
        self.key, created = keys.load_or_create(self.data_dir)
        if created:
            log.info("generated a new device key (kid %s)", self.key.kid)
        tele = cfg.get("telemetry", {})
        self.outbox = Outbox(self.data_dir / "outbox.db", tele.get("outbox_mb", 64) * 1024 * 1024)
        self.epoch = self.outbox.next_epoch()
        seq, head = self._recover_chain()
        self.chain = Chain(self.gw, self.site_id, self.key.kid, self.key.sign_raw, self.epoch, seq, head)
        self._wall = wall
        # the HIL rig's seam (pilegate.cli._hil_clock): `mono` drives the schedulers and the
        # driver's milliseconds, and the once-a-second loop runs every `tick_s` real seconds
        self._mono = mono
        self.tick_s = 1.0
        self.clock_offset = 0
        self.tsync_source: str | None = None
        settings = dict(self.outbox.kv_get("settings") or {})
        if "interval_s" not in settings and self.outbox.kv_get("interval_s"):
            settings["interval_s"] = self.outbox.kv_get("interval_s")  # saved by 0.1 releases
        if interval_s:
            settings["interval_s"] = interval_s
        if poll_s:
            settings["poll_s"] = poll_s
        sign = cfg.get("signing", {})
        platform_pub = keys.load_public_pem(sign["platform_key"]) if sign.get("platform_key") else None
        self.core = SiteCore(cfg, self.key.sign_der, self.gw, VERSION, self.outbox.kv_get("core"))
        ident = {
            "fw": VERSION,
            "platform": "rpi",
            "board": cfg["gateway"]["board"],
            "config_hash": site.config_hash,
            "kid": self.key.kid,
            "pubkey": self.key.public_pem,
        }
        self.driver = SiteDriver(
            cfg,
            self.core,
            self.chain,
            self,
            ident,
            settings,
            self.outbox.kv_get("replay"),
            platform_pub,
            save_every_s=0,  # SQLite: every change is saved within the second
        )
        self.events = self.driver.events  # the console's audit events go here
        if inputs is None:
            inputs = gpio.open_inputs(cfg["board_def"])
        self.inputs = inputs
        self.relays = inputs if isinstance(inputs, gpio.BoardGpio) else None
        self.metering = Metering(cfg, clock=mono, wall=self.now, driver=self.driver)
        self.metering.on_step = self._step
        self.prefix = f"{cfg['mqtt'].get('prefix', 'pilegate/v1')}/{self.site_id}/{self.gw}"
        self.link = MqttLink(
            cfg["mqtt"],
            cfg["mqtt"].get("client_id") or self.gw,
            self.prefix,
            self.outbox,
            will=lambda: self._state_msg("offline", "connection lost"),
            online=lambda: self._state_msg("online"),
            on_command=self._command_from_mqtt,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code = 0
        self.crash: BaseException | None = None
        self.on_step: Callable[[str], None] | None = None  # test hook: called at every loop pass
        self.started = time.monotonic()
        self._stop: asyncio.Event | None = None
        self.log_ring = LogRing()
        logging.getLogger("pilegate").addHandler(self.log_ring)
        self.console: ConsoleServer | None = None

    # ------------------------------------------------------------ settings the console reads

    @property
    def interval_s(self) -> int:
        return self.driver.interval_s

    @interval_s.setter
    def interval_s(self, v: int) -> None:
        self.driver.set_interval(v)

    @property
    def recent_events(self) -> list[dict[str, Any]]:
        return self.driver.recent

    @property
    def last_telemetry_t(self) -> int:
        return self.driver.last_telemetry_t

    # ------------------------------------------------------------ time

    def now(self) -> int:
        return int(self._wall()) + self.clock_offset

    def ms(self) -> int:
        return int(self._mono() * 1000)

    def tsync(self) -> str:
        if self.tsync_source:
            return self.tsync_source
        return "ntp" if ntp_synchronised() else "none"

    # ------------------------------------------------------------ the driver's hands

    def actuate(self, relay: str, on: bool) -> None:
        if self.relays is not None:
            self.relays.set(relay, on)

    def read_input(self, name: str) -> int | None:
        return self.inputs.read(name) if self.inputs is not None else None

    def set_clock(self, t: int) -> int:
        self.clock_offset = t - int(self._wall())
        self.tsync_source = "platform"
        return self.clock_offset

    def resend(self, first: int, last: int) -> tuple[int, int]:
        return self.link.resend(first, last)

    def save(self, name: str, obj: Any) -> None:
        self.outbox.kv_put(name, obj)

    def log(self, level: str, text: str) -> None:
        log.log(logging.getLevelName(level.upper()), "%s", text)

    # ------------------------------------------------------------ chain and outbox

    def _recover_chain(self) -> tuple[int, str]:
        """The chain head is stored with every message; the newest message confirms it."""
        stored = self.outbox.chain() or (0, envelope.ZERO_HASH)
        last = self.outbox.last()
        if last is not None and last[0] > stored[0]:
            return last[0], signing_input_hash(last[1])
        return stored

    def flush(self) -> int:
        """Sign what the driver has waiting, store it in one transaction (a group commit: one
        fsync), then publish.  The driver keeps (or counts) what the outbox refused."""
        d = self.driver
        now = self.now()
        d.outbox_dropped(now, self.outbox.take_dropped())
        hist = not self.link.connected.is_set() or self.outbox.depth() > 0
        prepared = d.seal(now, self.tsync(), hist)
        if not prepared:
            return 0
        why = None
        try:
            n = self.outbox.put_many(
                [(p.seq, p.kind, f"{self.prefix}/{p.kind}", p.jws.encode(), p.hash) for p in prepared]
            )
        except OutboxFull as exc:  # any refusal of storage: nothing of the batch was stored
            n, why = 0, str(exc) or "outbox full"
        if n < len(prepared) and why is None:  # telemetry that did not fit: say why (a full disk?)
            why = self.outbox.storage_error or "outbox full"
        d.stored(prepared, n, now, why)
        if n:
            self.link.kick()
        return n

    def _state_msg(self, state: str, reason: str | None = None) -> str:
        return self.driver.state_message(self.now(), self.tsync(), state, reason)

    def birth(self) -> dict[str, Any]:
        return self.driver.birth()

    def telemetry(self) -> dict[str, Any]:
        return self.driver.telemetry(self.now())

    # ------------------------------------------------------------ loops

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    async def _seconds(self, stop: asyncio.Event) -> None:
        """Once a second: the driver's second (supervision, bays, interlocks, telemetry when
        due, billing), then the flush; a reboot when the driver says it is due."""
        next_t = time.monotonic()
        while not stop.is_set():
            self._step("second")
            self.driver.second(self.now(), self.ms(), self.tsync())
            self.metering.wake()
            self.flush()
            self.sd.ping()  # systemd's watchdog: this loop shares the event loop with every task
            if self.driver.reboot_due(self.ms(), self.outbox.depth()):
                self.request_stop(reboot=True)
            next_t += self.tick_s
            if next_t < time.monotonic():
                next_t = time.monotonic() + self.tick_s  # fell behind: do not try to catch up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_t - time.monotonic()))

    def _console(self) -> ConsoleServer | None:
        con = self.cfg.get("console", {})
        if not con.get("serial_port") and not con.get("socket"):
            return None
        auth = AuthState(load_pin_record(self.data_dir))
        return ConsoleServer(
            GatewayBackend(self, self.log_ring),
            auth,
            serial_port=con.get("serial_port"),
            baud=con.get("baud", 115200),
            socket_path=con.get("socket"),
            idle_logout_s=con.get("idle_logout_s", 600),
        )

    @staticmethod
    async def _serve_console(console: ConsoleServer, stop: asyncio.Event) -> None:
        try:
            await console.serve(stop)
        except (ConsoleError, OSError) as exc:
            log.error("technician console not available: %s", exc)

    def _start_plate_reader(self) -> mqtt_client.Client | None:
        """Plate-reader events from the cameras' local broker ([bays] plate_broker)."""
        bays = self.cfg.get("bays", {})
        url = bays.get("plate_broker")
        if not url:
            return None
        _, host, port = parse_mqtt_url(url)  # plain mqtt://: the check refuses mqtts:// here
        c = mqtt_client.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.gw}-plates")
        topic = bays.get("plate_topic", "pilegate/local/plates")
        c.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        loop = self.loop
        assert loop is not None  # started from run()

        def on_message(client: mqtt_client.Client, userdata: Any, msg: mqtt_client.MQTTMessage) -> None:
            loop.call_soon_threadsafe(self._plate, bytes(msg.payload))

        c.on_message = on_message
        c.reconnect_delay_set(1, 30)
        c.connect_async(host, port, keepalive=30)
        c.loop_start()
        return c

    def _plate(self, payload: bytes) -> None:
        why = self.driver.plate(self.now(), payload)
        if why:
            log.warning("%s: %r", why, payload[:200])

    def request_stop(self, reboot: bool = False) -> None:
        """Stop the process (systemd restarts it; a reboot request exits with EXIT_REBOOT)."""
        if reboot:
            self.exit_code = EXIT_REBOOT
        if self._stop is not None:
            self._stop.set()

    def factory_reset(self) -> None:
        """Wipe the device key, the backlog, state and the console PIN, then stop.

        The next start generates a new key, which the platform must register again."""
        log.warning("factory reset requested from the console: wiping key, outbox and credentials")
        self._wipe = True
        self.request_stop()

    def _do_wipe(self) -> None:
        for name in (keys.KEY_FILE, "outbox.db", "outbox.db-wal", "outbox.db-shm", "outbox.db.reserve", "console-pin"):
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / name).unlink()

    def _crashed(self, what: str, exc: BaseException) -> None:
        """No silent stop: an unexpected exception in any task or callback ends the gateway
        with EXIT_CRASH (systemd restarts it), after logging it with its traceback."""
        log.critical("%s died: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
        if self.crash is None:
            self.crash = exc
            self.exit_code = EXIT_CRASH
        if self._stop is not None:
            self._stop.set()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None:
            loop.default_exception_handler(context)
            return
        self._crashed(context.get("message", "a callback"), exc)

    async def run(self, stop: asyncio.Event) -> int:
        self._stop = stop
        self._wipe = False
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._loop_exception)
        loop = self.loop
        # the MQTT link's threads (paho's network loop, the drain) die loudly too
        prev_hook = threading.excepthook
        threading.excepthook = lambda a: loop.call_soon_threadsafe(
            self._crashed, f"thread {a.thread.name if a.thread else '?'}", a.exc_value or RuntimeError("?")
        )
        try:
            return await self._run(stop)
        finally:
            threading.excepthook = prev_hook

    async def _run(self, stop: asyncio.Event) -> int:
        self.driver.started(self.now(), self.epoch)
        self.flush()
        self.link.start()
        self.sd = sdnotify.Notifier()  # Type=notify unit (pilegate install): up, then pinged
        self.sd.ready(f"gateway {self.site.config['gateway']['id']} running")
        tasks = {asyncio.create_task(self.metering.run_bus(name, stop)): "bus " + name for name in self.metering.buses}
        tasks[asyncio.create_task(self._seconds(stop))] = "the once-a-second loop"
        self.console = self._console()
        plates = self._start_plate_reader()
        if self.console is not None:
            tasks[asyncio.create_task(self._serve_console(self.console, stop))] = "the console"
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        self.sd.stopping()
        self.metering.wake()
        await asyncio.wait(tasks)
        for task, what in tasks.items():
            exc = task.exception()
            if exc is not None:
                self._crashed(what, exc)
        if plates is not None:
            plates.disconnect()
            plates.loop_stop()
        if self._wipe:
            self.link.stop()
            self.outbox.close()
            self._do_wipe()
            return self.exit_code
        reason = "stopped" if self.crash is None else f"crashed: {type(self.crash).__name__}"
        try:  # store what can be stored: events (the crash too), billing, state
            self.flush()
            self.driver.save_state(self.now(), True)
        except Exception as exc:  # the crash may have been the outbox itself
            log.error("could not store the last messages: %s", exc)
        await self._drain_before_exit(2.0)
        self.link.stop(publish_offline=self._state_msg("offline", reason))
        self.outbox.close()
        return self.exit_code

    async def _drain_before_exit(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.link.connected.is_set() and self.outbox.depth() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ commands

    def _command_from_mqtt(self, payload: bytes) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.command, payload)

    def command(self, payload: bytes) -> dict[str, Any]:
        """Check and apply one command (the driver's); its signed ack is stored at once."""
        self._step("command")
        ack = self.driver.command(payload, self.now(), self.ms())
        self.flush()
        return ack
