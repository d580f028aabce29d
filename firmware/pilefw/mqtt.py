"""The ESP32's MQTT link: micropython-lib's umqtt.simple behind a non-blocking adapter.

umqtt.simple is small and synchronous: `publish(qos=1)` writes the message and then waits inside
for the PUBACK, `check_msg()` processes at most one incoming packet, and nothing reconnects.
`Link` turns it into what the gateway needs, one bounded `step(now_ms)` at a time so the main
loop keeps polling meters and feeding the watchdog (`now_ms` is a millisecond count that does not
wrap: pilefw.clock.MonotonicMs on the ESP32):

- **connect** (when due): a fresh client from `factory()`; the will (retained `state` =
  offline, an unchained JWS from `will()`) is registered first, then CONNECT with a clean
  session (bounded by `timeout_ms`), then the retained `state` = online (`online()`) and SUBSCRIBE to `cmd` (QoS 1).
  This happens after every reconnect, so the subscription is never lost.
- **drain**: at most `batch` outbox records per step, oldest first, each published with QoS 1
  (retained for `birth`) and acked in the outbox only after `publish()` returned, i.e. after
  umqtt saw the PUBACK.  A record whose PUBACK never came is published again after the
  reconnect (the receiver drops the duplicate by seq and hash).
- **bounded waits**: after connecting, the client's socket is wrapped (`BoundedSocket`) so that
  every blocking read -- umqtt's wait for PUBACK, SUBACK, the rest of a packet -- gives up
  after `timeout_ms` and raises OSError instead of hanging.  umqtt's `wait_msg()` calls
  `setblocking(True)`, which would clear a plain socket timeout; the wrapper maps it to
  `settimeout(timeout)`.  With TLS the timeout goes to the TCP socket under the TLS layer (a
  MicroPython SSLSocket has no settimeout): the device factory hands umqtt an SSL context
  wrapper that keeps that socket as `.raw` (see `CaptureTls`).
- **keepalive**: a PINGREQ when nothing was sent for keepalive/2; the link is declared down
  when nothing at all (PINGRESP, PUBACK, a command) arrived for 1.5 x keepalive.
- **commands**: `check_msg()` up to 4 packets per step; umqtt's callback only queues the
  payload (at most 8 waiting, the rest counted in `dropped_cmds`), and `on_command(payload)`
  runs after the client calls, never inside umqtt.
- **failure**: any exception from the client (OSError, a timeout, umqtt's MQTTException or its
  asserts on a garbled packet) closes the socket and schedules a reconnect after an
  exponential backoff (`backoff_min_ms` doubling to `backoff_max_ms`) with jitter: the delay is
  drawn uniformly from [d/2, d] with `rand` (os.urandom), so a fleet that lost the same broker
  does not come back in lockstep.
- **resend**: `resend(a, b)` queues stored messages a..b; they go out `batch` per step after
  the backlog, not retained (a resent birth must not replace the current one).

umqtt.simple talks MQTT 3.1.1 only and publishes topics and payloads as given (bytes here).
"""

MAX_INBOX = 8
MAX_IN_PER_STEP = 4


def parse_url(url):
    """(tls, host, port) of mqtt[s]://host[:port]: the core's parser, the same on both ports."""
    from pilecore.config import parse_mqtt_url

    return parse_mqtt_url(url)


def backoff_delay(failures, min_ms, max_ms, rand):
    """Delay before reconnect attempt number `failures` (1, 2, ...): from [d/2, d] where
    d = min_ms * 2**(failures-1), capped at max_ms.  `rand(2)` supplies the jitter."""
    n = failures - 1 if failures > 1 else 0
    if n > 20:
        n = 20
    d = min_ms << n
    if d > max_ms:
        d = max_ms
    half = d // 2
    r = int.from_bytes(rand(2), "big")  # 0..65535
    return half + ((d - half) * r) // 65535


class CaptureTls:
    """Wraps an SSL context for umqtt so the adapter can reach the TCP socket under TLS.

    umqtt calls `ssl.wrap_socket(sock, server_hostname=...)`; this keeps `sock` as `.raw`,
    gives it the timeout and passes everything to the real context."""

    def __init__(self, ctx, timeout_s):
        self.ctx = ctx
        self.timeout_s = timeout_s
        self.raw = None

    def wrap_socket(self, sock, **kw):
        self.raw = sock
        sock.settimeout(self.timeout_s)
        return self.ctx.wrap_socket(sock, **kw)


class TimedSockets:
    """A stand-in for umqtt's `socket` module whose sockets start with a timeout, so the TCP
    connect and the CONNACK wait are bounded too (install: umqtt.simple.socket = this)."""

    def __init__(self, module, timeout_s):
        self.module = module
        self.timeout_s = timeout_s

    def socket(self, *args):
        s = self.module.socket(*args)
        s.settimeout(self.timeout_s)
        return s

    def getaddrinfo(self, *args):
        return self.module.getaddrinfo(*args)


class BoundedSocket:
    """The client's socket with every blocking wait bounded (see the module docstring).

    `sock` is what umqtt reads and writes (the TLS socket with TLS), `raw` the TCP socket that
    carries the timeout.  `got` turns True whenever bytes arrive."""

    def __init__(self, sock, raw, timeout_s, max_read=None):
        self.sock = sock
        self.raw = raw
        self.timeout_s = timeout_s
        self.max_read = max_read
        self.got = False

    def read(self, n):
        if self.max_read is not None and n > self.max_read:
            raise OSError("a packet of more than %d bytes (%d): refused unread" % (self.max_read, n))
        data = self.sock.read(n)
        if data:
            self.got = True
        return data

    def write(self, buf, n=None):
        if n is None:
            return self.sock.write(buf)
        return self.sock.write(buf, n)

    def setblocking(self, flag):
        if flag:
            self.raw.settimeout(self.timeout_s)
        else:
            self.raw.setblocking(False)

    def settimeout(self, t):
        self.raw.settimeout(t)

    def close(self):
        self.sock.close()


class Session:
    """One umqtt client kept connected, a bounded `step(now_ms)` at a time: connect when due
    (`_prepare` before CONNECT, `_ready` after it), bounded waits (`BoundedSocket`), up to
    MAX_IN_PER_STEP incoming packets per step, keepalive, and on any failure a close and a
    reconnect after the jittered exponential backoff (see the module docstring).  `Link` (the
    platform's broker) and `pilefw.plates.PlateReader` (the cameras' broker) are the two.

    factory() -> a new umqtt.simple.MQTTClient-like object (not connected)
    rand(n)   random bytes for the jitter (os.urandom on the device)
    """

    max_read = None  # the longest single read (bytes) a kind accepts; None: no limit

    def __init__(self, factory, keepalive_s=30, timeout_ms=5000, backoff_min_ms=1000, backoff_max_ms=60000, rand=None):
        self.factory = factory
        self.keepalive_ms = keepalive_s * 1000
        self.timeout_ms = timeout_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        if rand is None:
            import os

            rand = os.urandom
        self.rand = rand
        self.client = None
        self.sock = None
        self.connected = False
        self.next_try_ms = None  # None: try at the next step
        self.failures = 0
        self.delays = []  # the last few backoff delays (console, tests)
        self.last_error = None
        self.connects = 0
        self.last_tx_ms = 0
        self.last_rx_ms = 0

    # ------------------------------------------------------------ what the kinds add

    def _prepare(self, client):
        """Before CONNECT (the will)."""

    def _ready(self, client):
        """After CONNECT, on the bounded socket (SUBSCRIBE, the online state)."""

    def _work(self, now_ms):
        """The step's own work while connected; True when something was done."""
        return False

    def _deliver(self):
        """Hand what umqtt's callback queued to the application, outside the client's calls."""

    def _on_message(self, topic, msg):
        """umqtt's callback, called from inside its calls: only queue."""

    # ------------------------------------------------------------ the main-loop step

    def step(self, now_ms):
        """A bounded amount of work; returns True when something was done."""
        if not self.connected:
            if self.next_try_ms is not None and now_ms < self.next_try_ms:
                return False
            return self._connect(now_ms)
        did = False
        try:
            did = self._receive(now_ms) or did
            did = self._work(now_ms) or did
            if not did:
                self._keepalive(now_ms)
        except Exception as e:  # whatever the client raised: the link is unusable
            self._down(now_ms, e)
            did = True
        self._deliver()
        return did

    def _connect(self, now_ms):
        try:
            client = self.factory()
            self.client = client
            client.keepalive = self.keepalive_ms // 1000
            client.set_callback(self._on_message)
            self._prepare(client)
            self._client_connect(client)
            raw = getattr(getattr(client, "ssl", None), "raw", None) or client.sock
            self.sock = BoundedSocket(client.sock, raw, self.timeout_ms / 1000, self.max_read)
            client.sock = self.sock
            self.sock.setblocking(True)
            self._ready(client)
        except Exception as e:
            self._down(now_ms, e)
            return True
        self.connected = True
        self.connects += 1
        self.failures = 0
        self.last_error = None
        self.last_tx_ms = self.last_rx_ms = now_ms
        self._deliver()
        return True

    def _client_connect(self, client):
        """CONNECT with a bounded wait.  umqtt.simple >= 1.4 takes `timeout` (and would set
        None, i.e. blocking, without it); 1.3.4 takes no such argument and relies on the
        socket module's default (TimedSockets)."""
        try:
            client.connect(True, self.timeout_ms / 1000)
        except TypeError:
            if client.sock is not None:
                raise  # it failed inside connect, not on the argument
            client.connect()

    def _receive(self, now_ms):
        did = False
        for _ in range(MAX_IN_PER_STEP):
            self.sock.got = False
            self.client.check_msg()
            if not self.sock.got:
                break
            self.last_rx_ms = now_ms
            did = True
        return did

    def _keepalive(self, now_ms):
        if self.keepalive_ms <= 0:
            return
        if now_ms - self.last_rx_ms > self.keepalive_ms * 3 // 2:
            raise OSError("no answer from the broker for %d s" % (self.keepalive_ms * 3 // 2000))
        if now_ms - self.last_tx_ms >= self.keepalive_ms // 2:
            self.client.ping()
            self.last_tx_ms = now_ms

    def _down(self, now_ms, exc):
        self.last_error = "%s: %s" % (type(exc).__name__, exc)
        self._close_socket()
        self.connected = False
        self.failures += 1
        delay = backoff_delay(self.failures, self.backoff_min_ms, self.backoff_max_ms, self.rand)
        self.delays.append(delay)
        if len(self.delays) > 8:
            self.delays.pop(0)
        self.next_try_ms = now_ms + delay

    def close(self):
        """Clean stop: DISCONNECT if connected, close the socket.  Never raises: a broker
        already gone is the usual case at a stop."""
        if self.connected:
            try:
                self.client.disconnect()
            except Exception:
                pass
        self._close_socket()
        self.connected = False

    def _close_socket(self):
        c = self.client
        sock = getattr(c, "sock", None) if c is not None else None
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass
        self.sock = None


class Link(Session):
    """The platform's broker (see the module docstring).

    factory()       -> a new umqtt.simple.MQTTClient-like object (not connected)
    outbox          pilefw.outbox.Outbox (or anything with pending/ack/get/depth)
    prefix          "<prefix>/<site>/<gateway>"; topics are prefix + "/" + kind
    will(), online() -> the JWS text of the state messages, signed when called
    on_command(payload bytes) for every message on <prefix>/cmd
    rand(n)         random bytes for the jitter (os.urandom on the device)
    """

    def __init__(
        self,
        factory,
        outbox,
        prefix,
        will,
        online,
        on_command=None,
        keepalive_s=30,
        timeout_ms=5000,
        backoff_min_ms=1000,
        backoff_max_ms=60000,
        batch=4,
        rand=None,
    ):
        super().__init__(factory, keepalive_s, timeout_ms, backoff_min_ms, backoff_max_ms, rand)
        self.outbox = outbox
        self.prefix = prefix
        self.will = will
        self.online = online
        self.on_command = on_command
        self.batch = batch
        self.t_state = (prefix + "/state").encode()
        self.t_cmd = (prefix + "/cmd").encode()
        self.published = 0
        self.last_publish_ms = None
        self.inbox = []
        self.dropped_cmds = 0
        self._resend = None  # [next seq, last seq]

    def topic(self, kind):
        return self.prefix + "/" + kind

    def _prepare(self, client):
        client.set_last_will(self.t_state, self.will().encode(), True, 1)

    def _ready(self, client):
        client.publish(self.t_state, self.online().encode(), True, 1)
        client.subscribe(self.t_cmd, 1)

    def _work(self, now_ms):
        return self._drain(now_ms)

    def _publish(self, now_ms, topic, payload, retain):
        if isinstance(topic, str):
            topic = topic.encode()
        self.client.publish(topic, payload, retain, 1)  # returns after the PUBACK
        self.last_tx_ms = self.last_rx_ms = now_ms
        self.published += 1
        self.last_publish_ms = now_ms

    def _drain(self, now_ms):
        n = 0
        if self.outbox.depth():
            for seq, kind, topic, payload in self.outbox.pending(self.batch):
                self._publish(now_ms, topic, payload, kind == "birth")
                self.outbox.ack(seq)
                n += 1
        while self._resend is not None and n < self.batch:
            seq, last = self._resend
            self._resend = [seq + 1, last] if seq < last else None
            rec = self.outbox.get(seq)
            if rec is not None:
                self._publish(now_ms, rec[2], rec[3], False)
                n += 1
        return n > 0

    def _on_message(self, topic, msg):
        """umqtt's callback, called from inside its calls: only queue."""
        if bytes(topic) != self.t_cmd:
            return
        if len(self.inbox) >= MAX_INBOX:
            self.dropped_cmds += 1
            return
        self.inbox.append(bytes(msg))

    def _deliver(self):
        while self.inbox:
            payload = self.inbox.pop(0)
            if self.on_command is not None:
                self.on_command(payload)

    # ------------------------------------------------------------ for the application

    def resend(self, first, last):
        """Publish the stored messages first..last again, `batch` per step (the `resend`
        command).  Returns (resent, not_stored): how many of the range are stored and will be
        published, how many are not (acked and reclaimed, or thinned)."""
        stored = 0
        has = getattr(self.outbox, "has", None)  # cheap on the flash outbox: no read
        for seq in range(first, last + 1):
            if has(seq) if has is not None else self.outbox.get(seq) is not None:
                stored += 1
        self._resend = [first, last]
        return stored, last - first + 1 - stored

    def close(self, offline=None):
        """Clean stop: publish the retained offline state (if given and connected), disconnect."""
        if self.connected and offline is not None:
            try:
                self.client.publish(self.t_state, offline.encode(), True, 1)
            except Exception:
                pass
        Session.close(self)

    def status(self):
        return {
            "connected": self.connected,
            "connects": self.connects,
            "failures": self.failures,
            "published": self.published,
            "last_error": self.last_error,
            "dropped_commands": self.dropped_cmds,
        }
