"""The Pi's MQTT link (paho-mqtt): TLS by default, QoS 1, will, backlog drain from the outbox.

- TLS with certificate and host-name verification unless the site config explicitly allows an
  insecure lab setup; never falls back from TLS to plain.
- The will (retained `state` = offline) is registered at connect; `state` = online is published
  after every connection.
- A drain thread publishes unacked outbox messages oldest first with a bounded window of
  messages in flight; each PUBACK marks its message acked in the outbox.  After a reconnect
  paho sends its unacknowledged messages again; after a restart everything unacked in the
  outbox is published again (the receiver drops duplicates by seq and hash).
- Reconnects back off exponentially; the first delay is randomised per disconnect so a fleet
  that lost the same broker does not reconnect in lockstep.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from pilecore.gateway import parse_mqtt_url
from pilegate.outbox import Outbox

log = logging.getLogger("pilegate.mqtt")


def parse_url(url: str) -> tuple[bool, str, int]:
    """(tls, host, port) of mqtt[s]://host[:port]: the core's parser, the same on both ports."""
    return parse_mqtt_url(url)


class MqttLink:
    """See the module docstring."""

    def __init__(
        self,
        mqtt_cfg: dict[str, Any],
        client_id: str,
        prefix: str,
        outbox: Outbox,
        will: Callable[[], str],
        online: Callable[[], str],
        on_command: Callable[[bytes], None] | None = None,
        window: int = 256,
    ):
        self.cfg = mqtt_cfg
        self.prefix = prefix
        self.outbox = outbox
        self.will = will
        self.online = online
        self.on_command = on_command
        self.window = window
        self.tls, self.host, self.port = parse_url(mqtt_cfg["url"])
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._early: set[int] = set()  # PUBACKs that beat the mid bookkeeping
        self._sent_upto = 0
        self.last_publish: float | None = None
        self.published = 0
        self.acked = 0
        self.connects = 0
        self.last_error: str | None = None
        self.client = self._make_client(client_id)
        self._resend: list[tuple[str, bytes]] = []  # (topic, payload) to publish again
        self._drainer = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/{kind}"

    def _make_client(self, client_id: str) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if self.tls:
            verify = self.cfg.get("tls_verify", True) or not self.cfg.get("allow_insecure", False)
            c.tls_set(
                ca_certs=self.cfg.get("ca_file"),
                certfile=self.cfg.get("cert_file"),
                keyfile=self.cfg.get("key_file"),
                cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            )
            if not verify:
                c.tls_insecure_set(True)
                log.warning("TLS certificate verification is OFF (allow_insecure lab setting)")
        elif not self.cfg.get("allow_insecure", False):
            # The config validator refuses this too; a second guard costs nothing.
            raise ValueError("plain mqtt:// needs allow_insecure = true")
        if self.cfg.get("username"):
            password = None
            if self.cfg.get("password_file"):
                password = Path(self.cfg["password_file"]).read_text().strip()
            c.username_pw_set(self.cfg["username"], password)
        c.max_inflight_messages_set(self.window)
        c.reconnect_delay_set(1, 60)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.will_set(self.topic("state"), self.will(), qos=1, retain=True)
        self._wrap_reconnect(c)
        return c

    def _wrap_reconnect(self, c: mqtt.Client) -> None:
        """paho retries failed connections silently; say why (TLS, refused, DNS) once per cause."""
        original = c.reconnect

        def reconnect() -> Any:
            try:
                return original()
            except OSError as exc:
                text = f"cannot connect to {self.host}:{self.port}: {exc}"
                if text != self.last_error:
                    log.warning("MQTT %s", text)
                self.last_error = text
                raise

        c.reconnect = reconnect  # type: ignore[method-assign]

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=self.cfg.get("keepalive_s", 30))
        self.client.loop_start()
        self._drainer.start()

    def stop(self, publish_offline: str | None = None, timeout: float = 5.0) -> None:
        """Stop; if connected and asked, publish a final retained offline state first."""
        self._stop.set()
        self._kick.set()
        if publish_offline and self.connected.is_set():
            info = self.client.publish(self.topic("state"), publish_offline, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._drainer.join(timeout)

    def kick(self) -> None:
        """Something new is in the outbox."""
        self._kick.set()

    def resend(self, first: int, last: int) -> tuple[int, int]:
        """Publish the stored messages first..last again, through this link's drain (the
        `resend` command).  Returns (resent, not_stored): how many of the range are stored and
        will be published, how many are not (acked and reclaimed, or thinned)."""
        found = []
        for seq in range(first, last + 1):
            msg = self.outbox.get(seq)
            if msg is not None:
                found.append((msg[2], msg[3]))
        with self._lock:
            self._resend.extend(found)
        self._kick.set()
        return len(found), last - first + 1 - len(found)

    # ------------------------------------------------------------ paho callbacks (paho's thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.warning(self.last_error)
            return
        self.connects += 1
        self.last_error = None
        # paho keeps its unacknowledged QoS 1 messages across reconnects and sends them again
        # itself, so the in-flight bookkeeping stays as it is.
        client.publish(self.topic("state"), self.online(), qos=1, retain=True)
        if self.on_command is not None:
            client.subscribe(self.topic("cmd"), qos=1)
        self.connected.set()
        self._kick.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            self.last_error = f"disconnected: {reason_code}"
            log.info("MQTT %s", self.last_error)
            client.reconnect_delay_set(random.randint(1, 3), 60)
            client.will_set(self.topic("state"), self.will(), qos=1, retain=True)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early.add(mid)
            low = len(self._inflight) <= self.window // 2
        if seq is not None:
            self._acked(seq, low)

    def _acked(self, seq: int, wake: bool = True) -> None:
        self.outbox.ack(seq)
        self.acked += 1
        if wake:  # wake the drain only when half the window is free again
            self._kick.set()

    def _on_message(self, client, userdata, msg) -> None:
        if self.on_command is not None and msg.topic == self.topic("cmd"):
            self.on_command(bytes(msg.payload))

    # ------------------------------------------------------------ drain thread

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(0.5)
            self._kick.clear()
            self.outbox.flush_acks()
            self._drain_resend()
            while self.connected.is_set() and not self._stop.is_set():
                with self._lock:
                    room = self.window - len(self._inflight)
                    after = self._sent_upto
                # refill in batches (half a window at least): one outbox query per batch, not
                # one per PUBACK
                if room <= 0 or (room < self.window // 2 and self._inflight):
                    break
                batch = self.outbox.pending(room, after=after)
                if not batch:
                    break
                ok = True
                for seq, kind, topic, payload in batch:
                    # paho's lock is taken inside publish(); never call it holding ours
                    info = self.client.publish(topic, payload, qos=1, retain=(kind == "birth"))
                    # NO_CONN: the link dropped, but paho queued the message and will send it
                    # after reconnecting; anything else means it was not queued.
                    if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                        ok = False
                        break
                    with self._lock:
                        early = info.mid in self._early
                        self._early.discard(info.mid)
                        if not early:
                            self._inflight[info.mid] = seq
                        self._sent_upto = seq
                    if early:
                        self._acked(seq)
                    self.published += 1
                    self.last_publish = time.time()
                if not ok:
                    break

    def _drain_resend(self) -> None:
        """Messages asked for again: QoS 1, not retained, outside the in-flight bookkeeping
        (they are acked in the outbox already, or will be by their first publication)."""
        while self.connected.is_set() and not self._stop.is_set():
            with self._lock:
                if not self._resend:
                    return
                topic, payload = self._resend.pop(0)
            self.client.publish(topic, payload, qos=1, retain=False)
            self.published += 1

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)
