"""End to end, issue 9 defect #1: `pilegate run` with data_dir on a real small file system
(a tmpfs mounted by the test) that fills up while the broker is down.

Before the fix the outbox stopped signing for good at the first refusal ("cannot rollback - no
transaction is active" ended the telemetry task) and nothing was reported.  Now: the outbox
meets the full disk, says so, fits its budget to what the disk holds and keeps signing by
thinning telemetry, declared lost; a charging session during the outage is billed; once space
is freed the budget is restored by itself, and when the broker is back the platform receives
and verifies everything, with no seq missing except the declared drops.  (Storage refusing
outright, with events and billing held in memory, is tested on the outbox and the core:
tests/gateway/test_outbox_sqlite.py, tests/core.)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pyocmf
import pytest
from e2e import OneSession, Platform, billing, device_pem, spki_hex, start_gateway, stop, wait_for, write_site
from simsite import pile_block
from smallfs import small_fs

from pilehil.broker import Broker

pytestmark = pytest.mark.slow


def test_a_full_disk_while_the_broker_is_down_thins_declares_and_resumes(sim_site, tmp_path):
    # a broker that keeps the platform's session and its queued messages over the outage
    broker = Broker(tmp_path / "broker", persistence=True).start()
    platform = Platform(tmp_path, broker)
    try:
        with small_fs(tmp_path / "fs", 32 * 1024) as fs:
            body = pile_block("P1", 1, "eastron-sdm120", serial="12345678")
            s = sim_site(body, loads={1: OneSession(3, 13)})
            extra = "\n[sessions]\nstart_after_s = 0\nstop_after_s = 0\n"
            site_path = write_site(s, tmp_path, broker, platform, extra)
            data = fs.path / "data"
            pem = device_pem(site_path, data)
            platform.listen(pem)
            log = tmp_path / "gateway.log"
            gw = start_gateway(site_path, data, log=log)
            text = lambda: log.read_text(errors="replace")  # noqa: E731

            def until(
                pred: Callable[[], object], timeout: float, what: str, tick: Callable[[], object] | None = None
            ) -> None:
                """wait_for, and on a timeout show what the gateway said and what arrived."""
                try:
                    wait_for(pred, timeout, what, tick=tick)
                except AssertionError as exc:
                    lines = [ln for ln in text().splitlines() if " DEBUG " not in ln][-25:]
                    events = [e.get("type") for e in platform.events()]
                    raise AssertionError(f"{exc}\nevents: {events}\ngateway log:\n" + "\n".join(lines)) from None

            try:
                until(lambda: platform.account() and platform.account().messages >= 3, 30, "the first messages")
                broker.stop()  # the platform is unreachable: nothing is acked from here on
                fs.fill()  # a runaway log takes every free byte of data_dir's file system
                until(lambda: "storage refused to write" in text(), 60, "the outbox meeting the full disk")
                # a car charges (the simulator's clock runs at twice real speed): its billing
                # record is made while the disk is full
                until(lambda: s.clock() >= 1016, 60, "the charging session", tick=lambda: s.clock.advance(0.1))
                fs.free()  # the log is deleted
                until(lambda: "storage accepts writes again" in text(), 60, "the budget restored by itself")
                broker.start()  # and the platform is back (the link may be up to 60 s into its backoff)
                until(lambda: billing(platform), 120, "the billing record of the session")
                high = platform.account().high
                until(lambda: platform.account().high > high + 2, 30, "fresh telemetry after the outage")
            finally:
                out = stop(gw)
            wait_for(lambda: not platform.account().gaps(), 30, "the backlog at the receiver")
    finally:
        if platform.sub is not None:
            platform.sub.stop()
        broker.stop()
    assert "cannot rollback" not in out + text() and "Traceback" not in text()
    acct = platform.account()
    report, clean = platform.receiver.report()
    assert clean, report  # every message verifies, no gap except declared drops
    assert acct.bad_signatures == 0 and not acct.gaps()
    assert acct.declared_lost, "telemetry was thinned and declared lost (outbox.dropped)"
    types = [e.get("type") for e in platform.events()]
    assert "outbox.dropped" in types
    rec = billing(platform)[0]
    assert pyocmf.OCMF.from_string(rec["ocmf"], strict=True).verify_signature(spki_hex(pem)) is True


def test_a_gateway_started_on_a_full_disk_says_so_and_exits(sim_site, tmp_path):
    """No traceback and no half-made chain: the start counter cannot be stored, so nothing is
    signed; the gateway names the file system and exits with EX_IOERR for systemd to retry."""
    with small_fs(tmp_path / "fs", 2048) as fs:
        s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="12345678"))
        site_path = tmp_path / "site.toml"
        site_path.write_text(s.path.read_text())
        data = fs.path / "data"
        device_pem(site_path, data)  # the device key exists already
        fs.fill()
        proc = subprocess.run(
            [sys.executable, "-m", "pilegate.cli", "run", str(site_path), "--data-dir", str(data)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 74, proc.stderr
    assert "storage refused to" in proc.stderr and "free space in data_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
