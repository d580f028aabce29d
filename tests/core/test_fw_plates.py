"""Control flow of the ESP32's plate reader (firmware/pilefw/plates.py), on both interpreters.

The stand-in client of tests/core/test_fw_mqtt_link.py (umqtt.simple's method names) checks the
reader's own logic: SUBSCRIBE after every connect and nothing published, reads handed over
outside the client's calls, the queue bound, a packet too large for the heap refused unread,
the backoff.  The reader against real umqtt.simple and mosquitto, in the App, is
tests/gateway/test_fw_app_plates.py.
"""

from test_fw_mqtt_link import Client

from pilefw import plates


def make(fail=None, inbound=None):
    log = []
    clients = []
    got = []

    def factory():
        c = Client(log, dict(fail or {}), inbound)
        clients.append(c)
        return c

    r = plates.PlateReader(factory, "cams/+/plates", got.append, rand=lambda n: b"\xff" * n)
    return r, log, clients, got


def test_it_subscribes_after_every_connect_and_publishes_nothing():
    r, log, clients, _ = make()
    assert r.step(0) and r.connected
    assert [e[0] for e in log] == ["connect", "subscribe"]
    assert log[1] == ("subscribe", b"cams/+/plates", 1)
    clients[0].fail["check_msg"] = OSError("reset")
    r.step(10)
    assert not r.connected and r.failures == 1 and r.last_error == "OSError: reset"
    assert r.next_try_ms == 10 + 1000  # rand all ones: the full first delay
    assert not r.step(500)  # not yet
    assert r.step(1010) and r.connected and r.connects == 2
    assert [e[0] for e in log].count("subscribe") == 2
    assert not [e for e in log if e[0] in ("publish", "will")]


def test_reads_are_handed_over_after_the_client_calls_and_the_queue_is_bounded():
    inbound = [(b"cams/c1/plates", b"read-%d" % i) for i in range(plates.MAX_QUEUE + 2)]
    r, _, _, got = make(inbound=inbound)
    r.step(0)
    r.step(1)  # up to 4 packets per step
    assert got == [b"read-0", b"read-1", b"read-2", b"read-3"]
    r.step(2)
    assert got[4:] == [b"read-4", b"read-5"] and r.received == 6 and r.dropped == 0
    r.queue = [b"x"] * plates.MAX_QUEUE  # a full queue (nothing delivered yet): the next is counted
    r._on_message(b"t", b"late")
    assert r.dropped == 1 and len(r.queue) == plates.MAX_QUEUE


def test_a_packet_larger_than_the_limit_is_refused_unread():
    r, _, clients, _ = make()
    r.step(0)
    sock = clients[0].sock
    assert sock.max_read == plates.MAX_PACKET
    sock.sock.incoming.append(b"y" * 10)
    try:
        sock.read(plates.MAX_PACKET + 1)
    except OSError as e:
        assert "refused unread" in str(e)
    else:
        raise AssertionError("a read beyond the limit was allowed")
    assert sock.sock.incoming == [b"y" * 10]  # nothing was taken from the socket
    assert sock.read(10) == b"y" * 10


def test_close_disconnects_once():
    r, log, _, _ = make()
    r.step(0)
    r.close()
    assert log[-1] == ("disconnect",) and not r.connected
    r.close()
    assert [e[0] for e in log].count("disconnect") == 1
    assert r.status()["connects"] == 1
