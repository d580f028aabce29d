"""Issue 9, defect #2: a full ESP32 outbox loses no event, ack or billing record.

The ESP32 App on CPython (fake `machine`, the real flash outbox on real files, real mosquitto):
while the broker is away its outbox fills up with events.  From then on the outbox refuses;
the App keeps applying commands, and their acks and the events wait in memory (the same held
queue as billing records), telemetry is counted as not stored, and the chain does not move.
When the broker returns and acks the backlog, signing resumes by itself: every held message
arrives, in one unbroken chain, with `outbox.full` and `outbox.resumed` declaring what happened.
"""

from __future__ import annotations

import time

import machine  # the fake, from tests/helpers
from e2e import Platform, compile_esp32_site, wait_for, write_site
from fwhw import FakeHw
from simsite import pile_block

from pilefw.app import App, load_config_file
from pilehil import ConstantLoad


def test_a_full_esp32_outbox_keeps_events_and_acks_in_memory_and_resumes_by_itself(sim_site, broker, tmp_path):
    s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="10000001"), loads={1: ConstantLoad(2000, 1)})
    platform = Platform(tmp_path, broker)
    compile_esp32_site(
        write_site(s, tmp_path, broker, platform, "\n[telemetry]\ninterval_s = 1\n").read_text(), tmp_path
    )
    cfg, digest = load_config_file(str(tmp_path / "config.json"))
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    (tmp_path / "data").mkdir()
    app = App(cfg, FakeHw(tmp_path / "data"), digest)
    platform.listen(app.keys.pem)
    broker.stop()  # the platform is away: nothing will be acked
    try:
        n = 0
        while not app.driver.storage["full"]:  # events, as the console's audit events arrive
            app.emit([{"type": "test.filler", "t": app.clock.now(), "n": n, "pad": "x" * 600}])
            app.flush()
            n += 1
            assert n < 5000, "the outbox never filled"
        head = app.chain.seq
        ack = app.command(platform.command("f-1", "set_interval", {"interval_s": 2}).encode())
        assert ack["ok"] and app.interval_s == 2 and app.chain.seq == head  # applied; its ack waits
        assert [kind for kind, _ in app.driver.keep] == ["ack"]
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 > 3, 10, "three seconds of a full outbox", 0.005, app.step)
        assert app.chain.seq == head and app.driver.storage["telemetry_not_stored"] >= 1
        assert any(line["level"] == "error" and "outbox refuses" in line["msg"] for line in app.logs)
        broker.start()
        wait_for(platform.sub.subscribed.is_set, 20, "the verifier to subscribe again")
        wait_for(lambda: any(a["cmd_id"] == "f-1" for a in platform.acks), 120, "the held ack", 0.002, app.step)
        wait_for(lambda: "outbox.resumed" in [e["type"] for e in platform.event_log], 30, "resumed", 0.002, app.step)
        acct = platform.account
        wait_for(lambda: acct().high == app.chain.seq and not acct().gaps(), 30, "every message", 0.002, app.step)
    finally:
        app.close()
    a = acct()
    assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0 and not a.gaps()
    fillers = sorted(e["n"] for e in platform.event_log if e["type"] == "test.filler")
    assert fillers == list(range(n))  # the events of the refused flush too, none lost
    resumed = next(e for e in platform.event_log if e["type"] == "outbox.resumed")
    assert resumed["telemetry_not_stored"] >= 1 and resumed["events_given_up"] == resumed["keep_given_up"] == 0
    full = next(e for e in platform.event_log if e["type"] == "outbox.full")
    assert full["reason"].startswith("outbox full")
