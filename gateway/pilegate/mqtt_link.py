"""The Pi's MQTT link (paho-mqtt): TLS by default, QoS 1, will, backlog drain from the outbox.

- TLS with certificate and host-name verification unless the site config explicitly allows an
  insecure lab setup; never falls back from TLS to plain.
- The will (retained `state` = offline) is registered at connect; `state` = online is published
  after every connection.
- A drain thread publishes unacked outbox messages oldest first with a bounded window of
  messages in flight; each PUBACK marks its message acked in the outbox.  After a reconnect
  paho sends its unacknowledged messages again; after a restart everything unacked in the
  outbox is published again (the receiver drops duplicates by seq and hash).
- Every failed attempt, whatever refused it (TCP, TLS, the broker's CONNACK, a connection
  lost before it was proven), backs off exponentially with jitter, as the ESP32 port does:
  attempt n waits a delay drawn from [d/2, d], d = backoff_min_s * 2**(n-1) capped at
  backoff_max_s, so a fleet after a credential rotation does not storm the broker.  The count
  is reset only by a connection that really worked: the broker acknowledged a publish on it.
- The log names the cause (`describe_failure`): bad user name or password, not authorised,
  the broker wants a client certificate, the broker refused the client certificate, TLS
  verification of the broker failed, connection refused, ... instead of paho's
  "Unspecified error".
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pilecore.config import parse_mqtt_url
from pilegate.outbox import Outbox

log = logging.getLogger("pilegate.mqtt")


def parse_url(url: str) -> tuple[bool, str, int]:
    """(tls, host, port) of mqtt[s]://host[:port]: the core's parser, the same on both ports."""
    return parse_mqtt_url(url)


def backoff_delay(failures: int, min_s: float, max_s: float, rand: Callable[[], float]) -> float:
    """Seconds to wait after `failures` (1, 2, ...) consecutive failures: drawn from [d/2, d],
    d = min_s * 2**(failures-1) capped at max_s; `rand()` is uniform in [0, 1]."""
    d = min(max_s, min_s * 2 ** min(max(failures - 1, 0), 30))
    return d / 2 + (d / 2) * rand()


# TLS alerts the broker sends about OUR certificate, and what they mean to an installer.
_CLIENT_CERT_REFUSED = (
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "UNSUPPORTED_CERTIFICATE",
    "DECRYPT_ERROR",
    "ACCESS_DENIED",
)


def describe_failure(error: BaseException | str, host: str = "", port: int = 0) -> str:
    """What refused a connection, in words an installer can act on.

    `error` is an exception from connecting, a paho CONNACK reason (its text) or the text of a
    socket error paho logged ("failed to receive on socket: ...")."""
    text = str(error)
    where = f"{host}:{port}" if host else "the broker"
    if isinstance(error, ssl.SSLCertVerificationError):
        why = getattr(error, "verify_message", None) or text
        return (
            f"TLS verification of the broker failed: certificate verify failed: {why} "
            "(check mqtt.ca_file, the host name in mqtt.url and the gateway's clock)"
        )
    if "CERTIFICATE_REQUIRED" in text:
        return "the broker wants a client certificate: set mqtt.cert_file and mqtt.key_file"
    if any(f"ALERT_{name}" in text for name in _CLIENT_CERT_REFUSED):
        return f"the broker refused the client certificate ({text}): check mqtt.cert_file, mqtt.key_file"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused: nothing listens on {where} (check mqtt.url, the broker, a firewall)"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {host or 'the broker host'}: {text} (check mqtt.url and DNS)"
    if isinstance(error, TimeoutError | socket.timeout):
        return f"no answer from {where} (check the network and mqtt.url)"
    low = text.lower()
    if "bad user name or password" in low:
        return "bad user name or password: check mqtt.username and the file mqtt.password_file"
    if "not authori" in low:
        return (
            "not authorised: the broker refused this client's credentials "
            "(check mqtt.username, mqtt.password_file, the client certificate and the broker's ACL)"
        )
    if "unspecified error" in low or not text:
        return "connection lost"
    return text


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
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
        rand: Callable[[], float] = random.random,
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
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.rand = rand
        self.attempts = 0  # connection attempts made (TCP connects)
        self.failures = 0  # consecutive failures since a connection last really worked
        self.delays: collections.deque[float] = collections.deque(maxlen=16)  # the last backoff delays
        self._proven = False  # the broker acknowledged a publish on this connection
        self._refusal: str | None = None  # why the broker refused this attempt (CONNACK)
        self._sock_error: str | None = None  # the last socket error paho logged
        self.client = self._make_client(client_id)
        self._resend: list[tuple[str, bytes]] = []  # (topic, payload) to publish again
        self._drainer = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/{kind}"

    def _make_client(self, client_id: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
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
        c.reconnect_delay_set(self.backoff_min_s, self.backoff_max_s)  # type: ignore[arg-type]
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_log = self._on_log
        c.will_set(self.topic("state"), self.will(), qos=1, retain=True)
        self._wrap_reconnect(c)
        return c

    def _wrap_reconnect(self, c: mqtt.Client) -> None:
        """paho retries failed connections silently: count each attempt and back off on a
        failure to connect (TCP, DNS, TLS), naming the cause."""
        original = c.reconnect

        def reconnect() -> Any:
            self.attempts += 1
            self._refusal = self._sock_error = None
            self._proven = False
            try:
                return original()
            except OSError as exc:
                self._failed(describe_failure(exc, self.host, self.port))
                raise

        c.reconnect = reconnect  # type: ignore[method-assign]

    def _failed(self, cause: str) -> None:
        """One failed attempt (or a lost connection): choose the next delay, say why."""
        self.failures += 1
        delay = backoff_delay(self.failures, self.backoff_min_s, self.backoff_max_s, self.rand)
        self.delays.append(delay)
        # paho waits its current delay before the next attempt; min = max makes it ours.
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        text = f"cannot connect to {self.host}:{self.port}: {cause}"
        if text != self.last_error:
            log.warning("MQTT %s; retrying with backoff (next attempt in %.3g s)", text, delay)
        else:
            log.info("MQTT attempt %d failed again: %s; next attempt in %.3g s", self.failures, cause, delay)
        self.last_error = text

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and buf.startswith("failed to receive on socket"):
            self._sock_error = buf.partition(": ")[2]

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

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            # paho calls _on_disconnect next, which counts the failure and backs off
            self._refusal = describe_failure(str(reason_code), self.host, self.port)
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

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        if self._stop.is_set():
            return
        if self._proven:  # a connection that worked: start the backoff from the beginning
            self.failures = 0
            self._proven = False
        self._failed(self._refusal or describe_failure(self._sock_error or str(reason_code), self.host, self.port))
        client.will_set(self.topic("state"), self.will(), qos=1, retain=True)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if not self._proven:  # the broker takes our messages: this connection really works
            self._proven = True
            self.failures = 0
            self.last_error = None
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

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
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

    @property
    def proven(self) -> bool:
        """The current connection really works: the broker acknowledged a message on it."""
        return self._proven and self.connected.is_set()

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)
