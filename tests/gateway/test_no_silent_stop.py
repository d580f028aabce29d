"""No silent stop (issue 9): a task or loop of the gateway that dies from an unexpected exception
is a crash of the gateway, on both ports: it is logged with its traceback, what can be stored
and published is, and the process ends non-zero (the Pi exits EXIT_CRASH for systemd to restart
it; the ESP32's main loop raises, and main.py resets the board).  The restarted gateway
continues its chain: the next seq, `prev` = the hash of the last message, checked by the
reference receiver.

The exception is injected through the public `on_step` hook each loop calls on every pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import machine  # the fake, from tests/helpers
import pytest
from e2e import Platform, compile_esp32_site, wait_for, write_site
from fwhw import FakeHw
from simsite import pile_block

from pilefw.app import App, load_config_file
from pilegate import siteconfig
from pilegate.runtime import EXIT_CRASH, Gateway
from pilehil import ConstantLoad


class Injected(RuntimeError):
    """The fault a test puts into a gateway task."""


def dies() -> None:
    raise Injected("injected into a thread")


def site_files(sim_site: Any, broker: Any, tmp_path: Path) -> tuple[Any, Platform, Path]:
    s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="11110001"), loads={1: ConstantLoad(2000, 1)})
    platform = Platform(tmp_path, broker)
    return s, platform, write_site(s, tmp_path, broker, platform)


async def run_pi(site: Any, data: Path, hook: Any, platform: Platform | None = None) -> tuple[Gateway, int]:
    gw = Gateway(site, data_dir=data, poll_s=0.2, interval_s=1)
    if platform is not None and platform.receiver is None:
        platform.listen(gw.key.public_pem)
    stop = asyncio.Event()
    gw.on_step = lambda name: hook(gw, name, stop)
    code = await asyncio.wait_for(gw.run(stop), 60)
    return gw, code


@pytest.mark.parametrize("where", ["bus:bus1", "second", "command", "thread"])
def test_a_dying_pi_task_ends_the_gateway_non_zero_and_the_restart_continues_the_chain(
    sim_site, broker, tmp_path, caplog, where
):
    _, platform, site_path = site_files(sim_site, broker, tmp_path)
    site, problems = siteconfig.load_site(site_path)
    assert site is not None, problems
    data = tmp_path / "data"

    def inject(gw: Gateway, name: str, stop: asyncio.Event) -> None:
        if where == "command" and name == "second" and gw.chain.seq >= 3 and not getattr(gw, "_sent", False):
            gw._sent = True  # type: ignore[attr-defined]
            platform.send(platform.command("c-1", "set_interval", {"interval_s": 1}))
        if where == "thread" and name == "second" and gw.chain.seq >= 3 and not getattr(gw, "_sent", False):
            gw._sent = True  # type: ignore[attr-defined]
            threading.Thread(target=dies, name="mqtt-drain", daemon=True).start()  # as the link's
        if name == where and gw.chain.seq >= 3:
            raise Injected(f"injected into {name}")

    with caplog.at_level(logging.INFO, logger="pilegate"):
        gw, code = asyncio.run(run_pi(site, data, inject, platform))
    assert code == EXIT_CRASH
    crash = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert crash and crash[0].exc_info is not None and "Injected: injected into" in crash[0].getMessage()
    last = gw.chain.seq

    def until_more(gw2: Gateway, name: str, stop: asyncio.Event) -> None:
        if gw2.chain.seq >= last + 3:
            stop.set()

    gw2, code2 = asyncio.run(run_pi(site, data, until_more))
    assert code2 == 0 and gw2.epoch == gw.epoch + 1
    acct = platform.account
    wait_for(lambda: acct() and acct().high >= gw2.chain.seq and not acct().gaps(), 20, "every message")
    a = acct()
    assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0 and not a.gaps()
    states = [m for m in platform.event_log if m.get("type") == "gateway.started"]
    assert [ev["epoch"] for ev in states] == [gw.epoch, gw2.epoch]


def test_a_dying_esp32_main_loop_raises_after_storing_and_the_restart_continues_the_chain(sim_site, broker, tmp_path):
    s, platform, site_path = site_files(sim_site, broker, tmp_path)
    compile_esp32_site(site_path.read_text(), tmp_path)
    cfg, digest = load_config_file(str(tmp_path / "config.json"))
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    data = tmp_path / "esp"
    data.mkdir()
    app = App(cfg, FakeHw(data), digest)
    platform.listen(app.keys.pem)

    def inject(name: str) -> None:
        if app.chain.seq >= 4:
            app.emit([{"type": "test.before_crash", "t": app.clock.now()}])
            raise Injected("injected into the main loop")

    app.on_step = inject
    with pytest.raises(Injected):
        app.run()
    assert any(line["level"] == "error" and "Injected" in line["msg"] for line in app.logs)
    last = app.chain.seq
    app.outbox.close()
    app.metering.close()
    app2 = App(cfg, FakeHw(data), digest)
    assert app2.epoch == app.epoch + 1 and app2.chain.seq == last + 1  # birth continues the chain
    acct = platform.account
    wait_for(lambda: acct() and acct().high >= last + 3 and not acct().gaps(), 30, "the second run", 0.005, app2.step)
    app2.close()
    wait_for(lambda: acct().high == app2.chain.seq and not acct().gaps(), 10, "the last messages")
    a = acct()
    assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0
    # the event raised just before the crash was stored by the crash handling, not lost
    assert "test.before_crash" in [ev["type"] for ev in platform.event_log]
