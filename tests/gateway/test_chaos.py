"""Kill -9 the gateway at random instants while the broker is also stopped and restarted: the
platform's receiver must end with every seq exactly once, every chain link valid and no bad
signature (docs/telemetry.md sections 4, 5 and 8)."""

from __future__ import annotations

import random
import signal
import time

from e2e import Platform, device_pem, start_gateway, stored_last, wait_for, write_site
from simsite import pile_block

from pilehil import ConstantLoad
from pilehil.broker import Broker

ROUNDS = 14


def test_kill_9_and_broker_restarts_lose_nothing(sim_site, tmp_path):
    rng = random.Random(20261126)
    broker = Broker(tmp_path / "broker", persistence=True).start()
    s = sim_site(
        pile_block("P1", 1, "eastron-sdm120") + pile_block("P2", 2, "chint-dtsu666"),
        loads={1: ConstantLoad(3000, 1), 2: ConstantLoad(9000, 3)},
    )
    platform = Platform(tmp_path, broker)
    site_path = write_site(s, tmp_path, broker, platform)
    data = tmp_path / "data"
    platform.listen(device_pem(site_path, data))
    gw = start_gateway(site_path, data)
    kills = restarts = 0
    try:
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(0.3, 2.0))
            if rng.random() < 0.6:
                gw.send_signal(signal.SIGKILL)  # power cut: no clean shutdown at all
                gw.wait(10)
                kills += 1
                gw = start_gateway(site_path, data)
            else:
                broker.stop()
                time.sleep(rng.uniform(0.2, 1.5))
                broker.start()
                restarts += 1
        # let everything drain, then stop cleanly
        wait_for(lambda: stored_last(data)[1] == 0, 60, "the outbox to drain")
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.communicate(timeout=20)
    # what the last clean stop could not publish stays stored for the next start: the tail only
    last, unacked, oldest_unacked = stored_last(data)
    assert unacked == 0 or oldest_unacked == last + 1
    try:
        wait_for(
            lambda: platform.account() and platform.account().high >= last and not platform.account().gaps(),
            30,
            f"every seq up to {last} at the receiver",
        )
    except AssertionError:
        print(platform.receiver.report()[0], "stored last", last)
        raise
    platform.sub.stop()
    broker.stop()
    text, clean = platform.receiver.report()
    a = platform.account()
    assert kills >= 3 and restarts >= 2, (kills, restarts)
    assert clean, text
    assert a.base == 1 and a.high >= last and not a.gaps()  # every published seq, once
    assert a.messages == a.high
    assert a.bad_signatures == 0 and a.replays == 0 and a.broken_links == []
