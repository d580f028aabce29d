"""The Pi's MQTT link against a real mosquitto that refuses it (issue 9 defect #10).

Before: after a wrong password or a refused client certificate the link reconnected every
1-3 s forever (each disconnect reset paho's delay) and logged "Unspecified error".  Now every
kind of refusal backs off exponentially with jitter, the count resets only after a connection
that really worked, and the cause is named.  The delays are drawn with an injected `rand`, so
the schedule is exact; the broker's own log counts the attempts that reached it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from e2e import wait_for

from pilegate.mqtt_link import MqttLink, backoff_delay, describe_failure
from pilegate.outbox import Outbox
from pilehil.broker import Broker, make_pki

MIN_S, MAX_S = 0.05, 0.4
pytestmark = pytest.mark.slow  # starts brokers of its own


def _link(tmp_path: Path, cfg: dict[str, Any], rand=lambda: 1.0) -> MqttLink:
    ob = Outbox(tmp_path / "outbox.db", reserve_bytes=0)
    return MqttLink(
        cfg,
        "GW-T1",
        "pilegate/v1/s/GW-T1",
        ob,
        will=lambda: "offline",
        online=lambda: "online",
        backoff_min_s=MIN_S,
        backoff_max_s=MAX_S,
        rand=rand,
    )


def _refused(link: MqttLink, failures: int = 6) -> None:
    link.start()
    try:
        wait_for(lambda: link.failures >= failures, 30, f"{failures} refused attempts")
    finally:
        link.stop()
        link.outbox.close()


def _doubling(n: int) -> list[float]:
    return [min(MAX_S, MIN_S * 2**i) for i in range(n)]


def test_backoff_delay_doubles_with_jitter_and_caps():
    assert [backoff_delay(n, 1, 60, lambda: 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, 1, 60, lambda: 0.0) for n in (1, 2, 7)] == [0.5, 1, 30]
    assert backoff_delay(1000, 1, 60, lambda: 0.5) == 45


def test_wrong_password_backs_off_exponentially_and_says_why(tmp_path, caplog):
    broker = Broker(tmp_path / "b", users={"gw": "right"}, log_connections=True).start()
    try:
        before = broker.connection_attempts()
        pw = tmp_path / "pw"
        pw.write_text("wrong\n")
        cfg = {"url": broker.url, "allow_insecure": True, "username": "gw", "password_file": str(pw)}
        link = _link(tmp_path, cfg)
        with caplog.at_level(logging.INFO, logger="pilegate.mqtt"):
            _refused(link)
    finally:
        broker.stop()
    n = link.failures
    assert list(link.delays)[:n] == _doubling(n)  # not 1-3 s forever: doubling to the cap
    assert link.connects == 0
    assert "not authorised" in link.last_error and "mqtt.password_file" in link.last_error
    assert "Unspecified error" not in caplog.text
    assert sum("not authorised" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1
    # every attempt the link made reached the broker, and there were no others
    assert broker.connection_attempts() - before == link.attempts
    assert n <= link.attempts <= n + 1


def test_the_jitter_spreads_each_delay_over_its_upper_half(tmp_path):
    draws = iter([0.0, 0.5, 1.0, 0.25] * 10)
    broker = Broker(tmp_path / "b", users={"gw": "right"}).start()
    try:
        link = _link(tmp_path, {"url": broker.url, "allow_insecure": True}, rand=lambda: next(draws))
        _refused(link, 4)
    finally:
        broker.stop()
    d = _doubling(4)
    assert list(link.delays)[:4] == [d[0] * 0.5, d[1] * 0.75, d[2], d[3] * 0.625]


def test_broker_wants_a_client_certificate(tmp_path):
    broker = Broker(tmp_path / "b", tls=True, require_client_cert=True, log_connections=True).start()
    try:
        link = _link(tmp_path, {"url": broker.url, "ca_file": str(broker.pki.ca)})
        _refused(link, 5)
    finally:
        broker.stop()
    assert "the broker wants a client certificate" in link.last_error
    assert "mqtt.cert_file" in link.last_error
    assert list(link.delays)[:5] == _doubling(5)
    assert link.attempts - 1 <= broker.connection_attempts() <= link.attempts


def test_broker_refuses_a_client_certificate_of_another_ca(tmp_path):
    broker = Broker(tmp_path / "b", tls=True, require_client_cert=True).start()
    other = make_pki(tmp_path / "other")
    try:
        cfg = {
            "url": broker.url,
            "ca_file": str(broker.pki.ca),
            "cert_file": str(other.client_cert),
            "key_file": str(other.client_key),
        }
        link = _link(tmp_path, cfg)
        _refused(link, 4)
    finally:
        broker.stop()
    assert "the broker refused the client certificate" in link.last_error
    assert list(link.delays)[:4] == _doubling(4)


def test_broker_certificate_that_does_not_verify(tmp_path):
    broker = Broker(tmp_path / "b", tls=True, log_connections=True).start()
    other = make_pki(tmp_path / "other")
    try:
        link = _link(tmp_path, {"url": broker.url, "ca_file": str(other.ca)})
        _refused(link, 4)
    finally:
        broker.stop()
    assert "TLS verification of the broker failed" in link.last_error and "mqtt.ca_file" in link.last_error
    assert list(link.delays)[:4] == _doubling(4)
    assert link.attempts - 1 <= broker.connection_attempts() <= link.attempts


def test_backoff_restarts_only_after_a_connection_that_worked(tmp_path):
    broker = Broker(tmp_path / "b").start()
    link = _link(tmp_path, {"url": broker.url, "allow_insecure": True})
    link.start()
    try:
        wait_for(lambda: link.proven, 10, "a working connection")
        broker.kill()
        wait_for(lambda: link.failures >= 4, 30, "4 failed attempts while the broker is down")
        assert "connection refused" in link.last_error
        assert list(link.delays)[:4] == _doubling(4)
        broker.start()
        wait_for(lambda: link.proven and link.failures == 0, 30, "the link back")
        n = len(link.delays)  # the schedule so far (it may have failed more while the broker started)
        assert list(link.delays)[n - 1] > MIN_S
        broker.kill()
        wait_for(lambda: len(link.delays) > n, 30, "the next failure")
        assert list(link.delays)[n] == MIN_S  # a proven connection restarts the schedule
    finally:
        link.stop()
        link.outbox.close()
        broker.stop()


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("Bad user name or password", "bad user name or password"),
        ("Not authorized", "not authorised"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused: nothing listens on h:1"),
        ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "wants a client certificate"),
        ("[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate", "refused the client certificate"),
        ("Unspecified error", "connection lost"),
    ],
)
def test_causes_are_named(error, words):
    assert words in describe_failure(error, "h", 1)
