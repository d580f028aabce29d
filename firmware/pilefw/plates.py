"""The ESP32's plate reader: a second, small MQTT client on the cameras' local broker.

`[bays] plate_broker` names the broker the plate cameras publish to and `[bays] plate_topic`
the subscription filter (docs/config.md); every message is one read, JSON
`{"camera", "plate", "colour", "t"}`, handed to the core's `SiteDriver.plate(now, payload)`
exactly as the Pi's runtime does.  The App imports this module only when `plate_broker` is set,
so a site without cameras pays nothing for it.

`PlateReader` is a `pilefw.mqtt.Session` (the main link's machinery: umqtt.simple, bounded
waits, keepalive, jittered exponential backoff), stepped from the main loop after the main link:

- **connect** (when due): CONNECT with a clean session, SUBSCRIBE to the filter (QoS 1), no
  will, nothing published.  The cameras' broker is on the site's LAN; the same bounded connect
  as the main link (TimedSockets) keeps a dead one from stalling the loop.
- **receive**: up to MAX_IN_PER_STEP packets per step; umqtt's callback only queues the payload
  (at most MAX_QUEUE waiting, the rest counted in `dropped`), and `on_plate(payload)` runs after
  the client calls, never inside umqtt.
- **size**: a packet longer than MAX_PACKET bytes is never read into RAM: the read is refused,
  the connection closed and retried after the backoff (`last_error` says why), so a broken or
  hostile publisher on the LAN cannot exhaust the ESP32's heap.  The core refuses reads longer
  than 1024 bytes anyway.
- **failure**: as the main link: close, reconnect after [d/2, d], d doubling from
  `backoff_min_ms` to `backoff_max_ms` (1 s to 30 s, as the Pi's paho client).
"""

from pilefw.mqtt import Session

MAX_QUEUE = 4
MAX_PACKET = 2048


class PlateReader(Session):
    """See the module docstring.

    factory()          -> a new umqtt.simple.MQTTClient-like object for the cameras' broker
    topic              the subscription filter (str), `[bays] plate_topic`
    on_plate(payload)  bytes of one message, called from `step`, outside umqtt
    """

    max_read = MAX_PACKET

    def __init__(
        self,
        factory,
        topic,
        on_plate,
        keepalive_s=30,
        timeout_ms=5000,
        backoff_min_ms=1000,
        backoff_max_ms=30000,
        rand=None,
    ):
        super().__init__(factory, keepalive_s, timeout_ms, backoff_min_ms, backoff_max_ms, rand)
        self.topic = topic.encode()
        self.on_plate = on_plate
        self.queue = []
        self.received = 0
        self.dropped = 0

    def _ready(self, client):
        client.subscribe(self.topic, 1)

    def _on_message(self, topic, msg):
        """umqtt's callback, called from inside its calls: only queue."""
        self.received += 1
        if len(self.queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        self.queue.append(bytes(msg))

    def _deliver(self):
        while self.queue:
            self.on_plate(self.queue.pop(0))

    def status(self):
        return {
            "connected": self.connected,
            "connects": self.connects,
            "failures": self.failures,
            "received": self.received,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }
