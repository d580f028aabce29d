"""Control flow of the ESP32's MQTT adapter (firmware/pilefw/mqtt.py), on both interpreters.

A tiny stand-in client with umqtt.simple's method names records calls and raises on demand:
this checks the adapter's own logic (order of the connect sequence, backoff and jitter, what is
acked when, keepalive, queued commands).  The same adapter against the real umqtt.simple and a
real mosquitto is tests/gateway/test_fw_mqtt.py.
"""

from pilefw import mqtt


class Sock:
    def __init__(self):
        self.timeout = "unset"
        self.closed = False
        self.incoming = []

    def settimeout(self, t):
        self.timeout = t

    def setblocking(self, flag):
        self.timeout = None if flag else 0

    def read(self, n):
        return self.incoming.pop(0) if self.incoming else None

    def write(self, buf, n=None):
        return len(buf) if n is None else n

    def close(self):
        self.closed = True


class Client:
    """umqtt.simple.MQTTClient's method names; `fail` maps a method name to an exception."""

    def __init__(self, log, fail=None, inbound=None):
        self.log = log
        self.fail = fail or {}
        self.inbound = inbound or []
        self.sock = None
        self.cb = None
        self.keepalive = 0
        self.ssl = None

    def _do(self, name, *args):
        self.log.append((name,) + args)
        exc = self.fail.get(name)
        if exc is not None:
            raise exc

    def set_callback(self, cb):
        self.cb = cb

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self._do("will", topic, msg, retain, qos)

    def connect(self, clean_session=True, timeout=None):
        self._do("connect", timeout)
        self.sock = Sock()

    def publish(self, topic, msg, retain=False, qos=0):
        self._do("publish", topic, msg, retain, qos)

    def subscribe(self, topic, qos=0):
        self._do("subscribe", topic, qos)

    def ping(self):
        self._do("ping")

    def check_msg(self):
        self._do("check_msg")
        if self.inbound:
            topic, msg = self.inbound.pop(0)
            self.sock.sock.incoming.append(b"\x30")
            self.sock.read(1)  # bytes arrive through the adapter's bounded socket
            self.cb(topic, msg)

    def disconnect(self):
        self._do("disconnect")


class Box:
    """The outbox methods the link uses."""

    def __init__(self, n=0):
        self.recs = [(s, "telemetry", "p/t", b"m%d" % s) for s in range(1, n + 1)]
        self.acked = []

    def depth(self):
        return len([r for r in self.recs if r[0] not in self.acked])

    def pending(self, limit=16, after=-1):
        return [r for r in self.recs if r[0] not in self.acked][:limit]

    def ack(self, seq):
        self.acked.append(seq)

    def get(self, seq):
        for r in self.recs:
            if r[0] == seq:
                return r
        return None


def make(box=None, fail=None, inbound=None, rand=None, **kw):
    log = []
    clients = []
    cmds = []

    def factory():
        c = Client(log, dict(fail or {}), inbound)
        clients.append(c)
        return c

    link = mqtt.Link(
        factory,
        box or Box(),
        "p",
        will=lambda: "WILL",
        online=lambda: "ONLINE",
        on_command=cmds.append,
        rand=rand or (lambda n: b"\x00" * n),
        **kw,
    )
    return link, log, clients, cmds


def test_parse_url():
    assert mqtt.parse_url("mqtts://broker.example:8884") == (True, "broker.example", 8884)
    assert mqtt.parse_url("mqtts://broker.example") == (True, "broker.example", 8883)
    assert mqtt.parse_url("mqtt://127.0.0.1") == (False, "127.0.0.1", 1883)


def test_backoff_doubles_to_the_cap_and_jitters_within_half():
    lo = lambda n: b"\x00\x00"  # noqa: E731
    hi = lambda n: b"\xff\xff"  # noqa: E731
    assert [mqtt.backoff_delay(f, 1000, 60000, hi) for f in range(1, 9)] == [
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        60000,
        60000,
    ]
    assert [mqtt.backoff_delay(f, 1000, 60000, lo) for f in range(1, 9)] == [
        500,
        1000,
        2000,
        4000,
        8000,
        16000,
        30000,
        30000,
    ]
    mid = mqtt.backoff_delay(3, 1000, 60000, lambda n: b"\x80\x00")
    assert 2000 < mid < 4000
    assert mqtt.backoff_delay(1000, 1000, 60000, hi) == 60000  # no overflow after many failures


def test_connect_registers_the_will_then_announces_online_and_subscribes():
    link, log, clients, _ = make(keepalive_s=40, timeout_ms=2500)
    assert link.step(0) and link.connected
    assert [e[0] for e in log] == ["will", "connect", "publish", "subscribe"]
    assert log[0] == ("will", b"p/state", b"WILL", True, 1)
    assert log[1] == ("connect", 2.5)  # the CONNACK wait is bounded too
    assert log[2] == ("publish", b"p/state", b"ONLINE", True, 1)
    assert log[3] == ("subscribe", b"p/cmd", 1)
    assert clients[0].keepalive == 40
    assert clients[0].sock.raw.timeout == 2.5  # blocking waits are bounded


def test_records_are_acked_only_after_publish_returned():
    box = Box(6)
    link, log, clients, _ = make(box, batch=4)
    link.step(0)
    link.step(10)
    assert box.acked == [1, 2, 3, 4]  # one bounded batch per step, in order
    clients[0].fail["publish"] = OSError(110, "timed out")  # PUBACK never came for seq 5
    link.step(20)
    assert box.acked == [1, 2, 3, 4] and not link.connected
    assert clients[0].sock.sock.closed  # the socket is closed at once
    assert link.failures == 1 and link.next_try_ms == 20 + 500
    assert link.step(400) is False and len(clients) == 1  # not before the backoff ran out
    link.step(520)
    assert len(clients) == 2 and link.connected
    assert log.count(("subscribe", b"p/cmd", 1)) == 2  # subscribed again after the reconnect
    link.step(530)
    assert box.acked == [1, 2, 3, 4, 5, 6]
    assert log[-1] == ("publish", "p/t".encode(), b"m6", False, 1)


def test_birth_is_retained_and_resends_are_not():
    box = Box(0)
    box.recs = [(1, "birth", "p/birth", b"b1"), (2, "event", "p/event", b"e2")]
    link, log, _, _ = make(box)
    link.step(0)
    link.step(1)
    pubs = [e for e in log if e[0] == "publish"][1:]
    assert pubs == [("publish", b"p/birth", b"b1", True, 1), ("publish", b"p/event", b"e2", False, 1)]
    assert link.resend(1, 3) == (2, 1)  # (resent, not_stored): seq 3 was never stored
    link.step(2)
    pubs = [e for e in log if e[0] == "publish"][3:]
    assert pubs == [("publish", b"p/birth", b"b1", False, 1), ("publish", b"p/event", b"e2", False, 1)]


def test_failures_grow_the_delay_and_a_connection_resets_it():
    seq = [b"\xff\xff"] * 10
    link, log, clients, _ = make(
        fail={"connect": OSError(111, "refused")}, rand=lambda n: seq.pop(), backoff_min_ms=100, backoff_max_ms=1000
    )
    now = 0
    for _ in range(5):
        link.step(now)
        now = link.next_try_ms
    assert link.delays == [100, 200, 400, 800, 1000]
    assert "refused" in link.last_error and not link.connected
    link.factory = lambda: Client(log)
    link.step(now)
    assert link.connected and link.failures == 0 and link.last_error is None


def test_commands_are_queued_by_the_callback_and_delivered_after_the_client_call():
    inbound = [(b"p/cmd", b"C1"), (b"p/other", b"X"), (b"p/cmd", b"C2")]
    link, log, clients, cmds = make(inbound=inbound)
    link.step(0)
    link.step(1)
    assert cmds == [b"C1", b"C2"]
    assert link.last_rx_ms == 1


def test_inbox_is_bounded():
    link, _, _, cmds = make()
    link.on_command = None
    for i in range(20):
        link._on_message(b"p/cmd", b"c%d" % i)
    assert len(link.inbox) == mqtt.MAX_INBOX and link.dropped_cmds == 20 - mqtt.MAX_INBOX


def test_keepalive_pings_when_idle_and_declares_a_silent_broker_dead():
    link, log, clients, _ = make(keepalive_s=10)
    link.step(0)
    link.step(4000)
    assert ("ping",) not in log
    link.step(5000)
    assert log.count(("ping",)) == 1  # idle for keepalive/2
    link.step(9000)
    assert log.count(("ping",)) == 1
    link.step(10000)
    assert log.count(("ping",)) == 2
    link.step(15001)  # nothing received for 1.5 x keepalive
    assert not link.connected and "no answer from the broker" in link.last_error


def test_close_publishes_the_offline_state_and_disconnects():
    link, log, _, _ = make()
    link.step(0)
    link.close("BYE")
    assert log[-2:] == [("publish", b"p/state", b"BYE", True, 1), ("disconnect",)]
    assert not link.connected


def test_an_older_umqtt_without_a_connect_timeout_still_connects():
    class OldClient(Client):
        def connect(self, clean_session=True):  # umqtt.simple 1.3.4's signature
            self._do("connect")
            self.sock = Sock()

    log = []
    link = mqtt.Link(
        lambda: OldClient(log), Box(), "p", will=lambda: "W", online=lambda: "O", rand=lambda n: b"\x00" * n
    )
    link.step(0)
    assert link.connected and ("connect",) in log
