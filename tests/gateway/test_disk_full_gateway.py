"""Issue 9, defect #1, the gateway's half: a full disk stops nothing for good, on the Pi.

`Gateway` runs with its data_dir on a real tmpfs of a few MiB (mounted by the test; root, as in
CI) while the broker is away.  Something else fills the disk; the gateway's events fill what is
left.  From then on storage refuses: the refusal is logged and declared (`outbox.full`), a
command is still applied and its ack waits in memory with the events, telemetry is counted as
not stored, the chain does not move and the process keeps running.  When space returns and
the broker is back, signing resumes by itself: every held message arrives, in one unbroken,
verified chain, and `outbox.resumed` says what happened.
"""

from __future__ import annotations

import asyncio
import time

from e2e import Platform, write_site
from simsite import pile_block
from smallfs import small_fs

from pilegate import siteconfig
from pilegate.runtime import Gateway
from pilehil import ConstantLoad
from pilehil.broker import Broker

RUNNING: list[Gateway] = []  # the gateway under test, for a timeout's message


def state_of(gw: Gateway) -> str:
    return (
        f"seq {gw.chain.seq}, outbox depth {gw.outbox.depth()}, held {gw.driver.storage}, "
        f"connected {gw.link.connected.is_set()} ({gw.link.last_error}), outbox {gw.outbox.state()}"
    )


async def until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            where = state_of(RUNNING[0]) if RUNNING else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {where}")
        await asyncio.sleep(0.02)


def test_a_full_disk_holds_events_and_acks_in_memory_and_signing_resumes_by_itself(sim_site, tmp_path):
    # a broker that keeps the verifier's session across its restart, as a production one does
    broker = Broker(tmp_path / "broker", persistence=True).start()
    try:
        run_scenario(sim_site, broker, tmp_path)
    finally:
        broker.stop()


def run_scenario(sim_site, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="10000001"), loads={1: ConstantLoad(2000, 1)})
    platform = Platform(tmp_path, broker)
    site, problems = siteconfig.load_site(write_site(s, tmp_path, broker, platform))
    assert site is not None, problems
    with small_fs(tmp_path / "fs", 4096) as fs:

        async def scenario() -> tuple[Gateway, int, int]:
            gw = Gateway(site, data_dir=fs.path / "data", poll_s=0.5, interval_s=1)
            RUNNING.append(gw)
            platform.listen(gw.key.public_pem)
            broker.stop()  # the platform is away: nothing is acked
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            fs.fill(leave=400 * 1024)  # something else takes the disk
            n = 0
            while not gw.driver.storage["full"]:  # events (as the console's audit events) fill the rest
                gw.driver.emit(
                    [{"type": "test.filler", "t": gw.now(), "n": n + k, "pad": "x" * 500} for k in range(50)]
                )
                n += 50
                await until(lambda: not gw.driver.events or gw.driver.storage["full"], 30, "a flush")
                assert n < 20000, "the disk never filled"
            head = gw.chain.seq
            ack = gw.command(platform.command("d-1", "set_interval", {"interval_s": 2}).encode())
            assert ack["ok"] and gw.interval_s == 2 and gw.chain.seq == head  # applied; the ack waits
            await until(lambda: gw.driver.storage["telemetry_not_stored"] >= 2, 30, "refused telemetry")
            assert gw.chain.seq == head and not run.done()  # nothing moved, nothing stopped
            fs.free()
            broker.start()
            await until(lambda: any(a["cmd_id"] == "d-1" for a in platform.acks), 120, "the held ack")
            await until(lambda: "outbox.resumed" in [e["type"] for e in platform.event_log], 60, "resumed")
            await until(lambda: platform.account().high >= gw.chain.seq and not platform.account().gaps(), 60, "all")
            stop.set()
            return gw, await run, n

        _, code, n = asyncio.run(scenario())
    assert code == 0
    a = platform.account()
    assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0 and not a.gaps()
    fillers = {e["n"] for e in platform.event_log if e["type"] == "test.filler"}
    resumed = next(e for e in platform.event_log if e["type"] == "outbox.resumed")
    assert len(fillers) + resumed["events_given_up"] == n  # every event arrived or was counted
    assert resumed["keep_given_up"] == 0 and resumed["telemetry_not_stored"] >= 2
    full = next(e for e in platform.event_log if e["type"] == "outbox.full")
    assert "disk" in full["reason"] or "full" in full["reason"], full
