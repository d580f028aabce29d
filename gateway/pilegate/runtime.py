"""`pilegate run`: the Raspberry Pi gateway, wiring the core to real I/O.

Metering (pymodbus through the core scheduler and guard), the signed chain (core envelope with
the device key), the durable outbox (SQLite), the MQTT link (paho) and downlink commands.  All
decisions are the core's; this module schedules them and persists what must survive:
the chain head with every message, meter bindings and the command replay guard whenever they
change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt_client

from pilecore import commands, envelope
from pilecore.console import AuthState
from pilecore.envelope import Chain
from pilecore.site import SiteCore
from pilegate import VERSION, gpio, keys
from pilegate.console_backend import GatewayBackend, LogRing, load_pin_record
from pilegate.console_server import ConsoleError, ConsoleServer
from pilegate.metering_service import Metering
from pilegate.mqtt_link import MqttLink, parse_url
from pilegate.outbox import Outbox, OutboxFull, signing_input_hash
from pilegate.siteconfig import Site

log = logging.getLogger("pilegate")
EXIT_REBOOT = 75  # systemd's Restart=on-failure brings the process back


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
    """One gateway process; see the module docstring."""

    def __init__(
        self,
        site: Site,
        data_dir: Path | None = None,
        poll_s: float | None = None,
        interval_s: int | None = None,
        wall=time.time,
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
        self.clock_offset = 0
        self.tsync_source: str | None = None
        self.interval_s = interval_s or self.outbox.kv_get("interval_s") or tele.get("interval_s", 30)
        self.replay = commands.ReplayGuard(self.outbox.kv_get("replay"))
        sign = cfg.get("signing", {})
        self.platform_pub = keys.load_public_pem(sign["platform_key"]) if sign.get("platform_key") else None
        self.max_cmd_age = sign.get("command_max_age_s", 300)
        self.events: list[dict[str, Any]] = []
        self.core = SiteCore(cfg, self.key.sign_der, self.gw, VERSION, self.outbox.kv_get("core"))
        if inputs is None:
            inputs = gpio.open_inputs(cfg["board_def"])
        relays = inputs if isinstance(inputs, gpio.BoardGpio) else None
        self.metering = Metering(
            cfg,
            core=self.core,
            on_event=self.events.append,
            wall=self.now,
            poll_s=poll_s,
            tsync=self.tsync,
            inputs=inputs,
            relays=relays,
        )
        self._saved_version: tuple[int, int] | None = None
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
        self.started = time.monotonic()
        self.last_telemetry_t = 0
        self.recent_events: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self._stop: asyncio.Event | None = None
        self.log_ring = LogRing()
        logging.getLogger("pilegate").addHandler(self.log_ring)
        self.console: ConsoleServer | None = None

    # ------------------------------------------------------------ time

    def now(self) -> int:
        return int(self._wall()) + self.clock_offset

    def tsync(self) -> str:
        if self.tsync_source:
            return self.tsync_source
        return "ntp" if ntp_synchronised() else "none"

    # ------------------------------------------------------------ chain and outbox

    def _recover_chain(self) -> tuple[int, str]:
        """The chain head is stored with every message; the newest message confirms it."""
        stored = self.outbox.chain() or (0, envelope.ZERO_HASH)
        last = self.outbox.last()
        if last is not None and last[0] > stored[0]:
            return last[0], signing_input_hash(last[1])
        return stored

    def seal_many(self, items: list[tuple[str, Any]]) -> int:
        """Sign messages, store them in one transaction (a group commit: one fsync), then
        publish.  Returns how many of `items`, from the first, were stored: the chain advances
        by exactly those, so no seq is skipped or reused.  The caller keeps the rest."""
        if not items:
            return 0
        hist = not self.link.connected.is_set() or self.outbox.depth() > 0
        prepared = self.chain.prepare_many(items, self.now(), self.tsync(), hist=hist)
        try:
            n = self.outbox.put_many(
                [(p.seq, p.kind, f"{self.prefix}/{p.kind}", p.jws.encode(), p.hash) for p in prepared]
            )
        except OutboxFull as exc:
            log.error("%s", exc)
            return 0
        if n < len(prepared):
            log.warning("outbox full: %d message(s) not stored yet", len(prepared) - n)
        self.chain.commit_many(prepared[:n])
        if n:
            self.link.kick()
        return n

    def seal(self, kind: str, data: Any) -> int | None:
        """Sign, store durably, then publish one message: its seq, or None if refused."""
        return self.chain.seq if self.seal_many([(kind, data)]) == 1 else None

    def _state_msg(self, state: str, reason: str | None = None) -> str:
        data: dict[str, Any] = {"state": state, "since": self.now()}
        if reason:
            data["reason"] = reason
        return self.chain.unchained("state", data, self.now(), self.tsync())

    # ------------------------------------------------------------ content

    def birth(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "fw": VERSION,
            "platform": "rpi",
            "board": cfg["gateway"]["board"],
            "config_hash": self.site.config_hash,
            "kid": self.key.kid,
            "pubkey": self.key.public_pem,
            "interval_s": self.interval_s,
            "piles": [
                {
                    "pile": p["id"],
                    "bus": p["meter"]["bus"],
                    "address": p["meter"]["address"],
                    "profile": p["meter"]["profile"],
                    "serial": self.core.guard.piles[p["id"]].bound,
                    "interlock": p.get("interlock", "report"),
                }
                for p in cfg["pile"]
            ],
            "bays": [{"bay": b["id"], "pile": b["pile"]} for b in cfg.get("bay", [])],
        }

    def telemetry(self) -> dict[str, Any]:
        data = self.core.telemetry(self.now(), self.last_telemetry_t, self.interval_s)
        for item in data["piles"]:
            err = self.metering.meters[item["pile"]].error
            if err:
                item["error"] = err
        return data

    # ------------------------------------------------------------ loops

    async def _telemetry_loop(self, stop: asyncio.Event) -> None:
        next_t = time.monotonic() + min(self.interval_s, 5)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_t - time.monotonic()))
            if stop.is_set():
                break
            self.seal("telemetry", self.telemetry())
            self.last_telemetry_t = self.now()
            next_t += self.interval_s
            if next_t < time.monotonic():
                next_t = time.monotonic() + self.interval_s

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Every second: flush events and billing records, report thinned telemetry, persist
        changed state."""
        while not stop.is_set():
            self._flush_events()
            self._save_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        self._flush_events()
        self._save_state()

    def _flush_events(self) -> None:
        dropped = self.outbox.take_dropped()
        if dropped:
            self.events.append(
                {"type": "outbox.dropped", "t": self.now(), "dropped": [{"seq": s, "hash": h} for s, h in dropped]}
            )
        items: list[tuple[str, Any]] = []
        if self.events:
            batch, self.events[:] = list(self.events), []
            self.recent_events.extend(batch)
            items.append(("event", {"events": batch}))
        items += [("billing", record) for record in self.core.take_billing()]
        stored = self.seal_many(items)
        # Events and billing records are never dropped: what a full outbox refused waits here
        # for the next round (the platform's acks free space).
        for kind, data in items[stored:]:
            if kind == "event":
                self.events[:0] = data["events"]
            else:
                self.core.billing.append(data)

    def _save_state(self) -> None:
        """Persist the core's state when it changed (bindings, sessions, bays, pagination)."""
        version = (self.core.version, self.core.bays_version())
        if version != self._saved_version:
            self.outbox.kv_put("core", self.core.snapshot())
            self._saved_version = version

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
        tls, host, port = parse_url(url)
        c = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2, client_id=f"{self.gw}-plates")
        if tls:
            c.tls_set()
        topic = bays.get("plate_topic", "pilegate/local/plates")
        c.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        c.on_message = lambda client, userdata, msg: self.loop.call_soon_threadsafe(self._plate, bytes(msg.payload))
        c.reconnect_delay_set(1, 30)
        c.connect_async(host, port, keepalive=30)
        c.loop_start()
        return c

    def _plate(self, payload: bytes) -> None:
        """One plate read: {"camera", "plate", "colour", "t"(optional)}; malformed ones are logged."""
        try:
            msg = json.loads(payload)
            camera, plate, colour = msg["camera"], msg["plate"], msg["colour"]
            if not all(isinstance(v, str) for v in (camera, plate, colour)):
                raise ValueError("camera, plate and colour must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("plate reader sent an unusable message (%s): %r", exc, payload[:200])
            return
        t = msg.get("t") if isinstance(msg.get("t"), int) else self.now()
        self.events.extend(self.core.plate(min(t, self.now()), camera, plate, colour))

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
        for name in (keys.KEY_FILE, "outbox.db", "outbox.db-wal", "outbox.db-shm", "console-pin"):
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / name).unlink()

    async def run(self, stop: asyncio.Event) -> int:
        self._stop = stop
        self._wipe = False
        self.loop = asyncio.get_running_loop()
        self.events.append(
            {
                "type": "gateway.started",
                "t": self.now(),
                "epoch": self.epoch,
                "fw": VERSION,
                "config_hash": self.site.config_hash,
            }
        )
        self.seal("birth", self.birth())
        self.link.start()
        tasks = [
            asyncio.create_task(self.metering.run(stop)),
            asyncio.create_task(self._telemetry_loop(stop)),
            asyncio.create_task(self._housekeeping(stop)),
        ]
        self.console = self._console()
        plates = self._start_plate_reader()
        if self.console is not None:
            tasks.append(asyncio.create_task(self._serve_console(self.console, stop)))
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
        if plates is not None:
            plates.disconnect()
            plates.loop_stop()
        if self._wipe:
            self.link.stop()
            self.outbox.close()
            self._do_wipe()
            return self.exit_code
        await self._drain_before_exit(2.0)
        self.link.stop(publish_offline=self._state_msg("offline", "stopped"))
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
        """Check and apply one command; always answer with a signed ack."""
        try:
            text = payload.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        cmd, why = commands.check(text, self.platform_pub, self.gw, self.now(), self.replay, self.max_cmd_age)
        if cmd is None:
            ack = {"cmd_id": _peek_id(text), "ok": False, "reason": why}
            self.events.append({"type": "command.rejected", "t": self.now(), "reason": why})
        else:
            self.outbox.kv_put("replay", self.replay.snapshot())  # executed once, even if it fails
            try:
                ack = {"cmd_id": cmd["id"], "cmd": cmd["cmd"], "ok": True, "result": self._apply(cmd)}
            except CommandFailed as exc:
                ack = {"cmd_id": cmd["id"], "cmd": cmd["cmd"], "ok": False, "reason": str(exc)}
        self.seal("ack", ack)
        return ack

    def _apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name, args = cmd["cmd"], cmd["args"]
        if name == "set_interval":
            self.interval_s = args["interval_s"]
            self.outbox.kv_put("interval_s", self.interval_s)
            return {"interval_s": self.interval_s}
        if name == "sync_time":
            self.clock_offset = args["t"] - int(self._wall())
            self.tsync_source = "platform"
            return {"offset_s": self.clock_offset}
        if name == "resend":
            sent = missing = 0
            for seq in range(args["from_seq"], args["to_seq"] + 1):
                msg = self.outbox.get(seq)
                if msg is None:
                    missing += 1
                    continue
                self.link.client.publish(msg[2], msg[3], qos=1, retain=(msg[1] == "birth"))
                sent += 1
            return {"resent": sent, "not_stored": missing}
        if name == "set_tariff":
            why = self.core.set_tariff(args["tariff"])
            if why:
                raise CommandFailed(f"tariff refused: {why}")
            self._save_state()
            return {"tariff": args["tariff"].get("id"), "version": args["tariff"].get("version")}
        if name == "reboot":
            if self.loop is not None:
                self.loop.call_later(1.0, self.request_stop, True)
            return {"rebooting_in_s": 1}
        return {}


class CommandFailed(Exception):
    """A verified command whose arguments the gateway cannot apply; nothing was changed."""


def _peek_id(text: str) -> str | None:
    """The id of a rejected command if it can be read (for the ack), else None."""
    try:
        body = json.loads(envelope.b64url_decode(text.split(".")[1]))
        cid = body.get("id")
        return cid if isinstance(cid, str) and len(cid) <= 64 else None
    except (ValueError, IndexError, AttributeError):
        return None
