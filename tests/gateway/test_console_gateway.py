"""The technician console on a running gateway (`pilegate run`) over a real pseudo-terminal.

Read-only commands show the simulator's values; a wrong PIN is refused and locks out; a
privileged command after login works and becomes a signed audit event the platform verifies;
mbread and scan go through the bus scheduler while polling and publishing go on; random bytes
thrown at the console leave the gateway polling, publishing and bounded in memory.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from e2e import Platform, device_pem, start_gateway, stop, wait_for, write_site
from ptyterm import Terminal
from simsite import pile_block

from pilehil import ConstantLoad


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.fixture
def running(sim_site, broker, tmp_path):
    s = sim_site(
        pile_block("P1", 1, "eastron-sdm120", serial="12345678") + pile_block("P2", 2, "eastron-sdm120"),
        loads={1: ConstantLoad(3000, 1), 2: ConstantLoad(5000, 1)},
    )
    s.clock.advance(3600)
    term = Terminal()
    platform = Platform(tmp_path, broker)
    sock = tmp_path / "run" / "console.sock"
    site_path = write_site(
        s, tmp_path, broker, platform, f'\n[console]\nserial_port = "{term.path}"\nsocket = "{sock}"\n'
    )
    data = tmp_path / "data"
    prov = subprocess.run(
        [
            sys.executable,
            "-m",
            "pilegate.cli",
            "provision",
            str(site_path),
            "--data-dir",
            str(data),
            "--console-pin",
            "--iterations",
            "2000",
        ],
        capture_output=True,
        text=True,
    )
    assert prov.returncode == 0, prov.stderr
    pin = re.search(r"technician PIN for GW-T1: (\d+)", prov.stdout).group(1)
    assert (data / "console-pin").stat().st_mode & 0o777 == 0o600
    assert pin not in (data / "console-pin").read_text()
    platform.listen(device_pem(site_path, data))
    gw = start_gateway(site_path, data)
    wait_for(lambda: platform.account() and platform.account().last_telemetry, 30, "telemetry")
    term.read_until(r"pilegate> $", 60)  # the greeting sent when the console opened
    term.send("\r")  # a technician who attaches later presses Enter: the banner comes again
    assert "pilegate console on gateway GW-T1" in term.read_until(r"pilegate> $", 60)
    yield SimpleNamespace(s=s, term=term, platform=platform, gw=gw, pin=pin)
    stop(gw)
    platform.sub.stop()


def test_read_only_commands_show_the_simulators_values(running):
    s = running.s
    term = running.term
    out = term.command("piles")
    assert "P1" in out and s.meter(1).serial in out and "P2" in out
    wait_for(lambda: '"energy_wh": null' not in term.command("meter P1 --json"), 20, "a reading of P1")
    data = json.loads(term.command("meter P1 --json").split("\n", 1)[1].rsplit("\n", 1)[0])
    assert data["identity"] == s.meter(1).serial
    assert data["values"]["energy_wh"] == pytest.approx(s.meter(1).energy_wh, abs=2)
    assert abs(data["values"]["power_w"] - 3000) < 1
    status = term.command("status")
    assert "GW-T1" in status and "kid" in status
    keys = term.command("keys")
    assert "BEGIN PUBLIC KEY" in keys and "PRIVATE" not in keys
    assert "bus1" in term.command("bus")
    assert "outbox" in term.command("mqtt")


def test_login_lockout_privileged_command_and_audit_event(running):
    term = running.term
    platform = running.platform
    pin = running.pin
    out = term.command("set telemetry.interval_s 2")
    assert "login" in out.lower()
    term.send("login\r")
    term.read_until("PIN: $")
    term.send(pin + "\r")
    assert "pilegate# " in term.read_until(r"pilegate[>#] $")
    out = term.command("set telemetry.interval_s 2")
    assert "telemetry.interval_s = 2" in out
    out = term.command("set pile.P1.meter.serial 999")
    assert "commissioning" in out
    term.command("logout")
    # a wrong PIN is refused, and the next attempt is locked out for a while
    term.send("login\r")
    term.read_until("PIN: $")
    term.send("000000\r")
    out = term.read_until(r"pilegate[>#] $")
    assert "wrong" in out.lower() or "refused" in out.lower() or "incorrect" in out.lower()
    out = term.command("login")
    assert "wait" in out.lower() or "locked" in out.lower()
    assert pin not in out

    # the privileged command reached the platform as a signed, verified audit event
    def audited():
        return [
            e
            for e in platform.events()
            if e.get("type") == "console.audit" and e.get("cmd") == "set" and e.get("result") == "ok"
        ]

    wait_for(lambda: audited(), 20, "a verified audit event")
    ev = audited()[0]
    assert ev["args"][0] == "telemetry.interval_s" and pin not in json.dumps(platform.events())


def test_mbread_and_scan_share_the_bus_without_disturbing_polling(running):
    term = running.term
    platform = running.platform
    before = platform.account().messages
    out = term.command("mbread bus1 1 4 72 2 --json")
    values = json.loads(out.split("\n", 1)[1].rsplit("\n", 1)[0])["values"]
    assert len(values) == 2
    out = term.command("scan bus1 1-6", timeout=60)
    assert re.search(r"found.*\b1\b.*\b2\b", out, re.S), out
    out = term.command("bus --json")
    stats = json.loads(out.split("\n", 1)[1].rsplit("\n", 1)[0])["buses"]["bus1"]
    assert stats["devices"]["P1"]["replies"] > 0 and stats["devices"]["P2"]["failures"] == 0
    wait_for(lambda: platform.account().messages >= before + 3, 20, "publishing to go on")


def test_fuzzing_the_console_leaves_the_gateway_working(running):
    term = running.term
    platform = running.platform
    gw = running.gw
    rng = random.Random(7)
    rss0 = rss_kb(gw.pid)
    m0 = platform.account().messages
    end = time.monotonic() + 5
    sent = 0
    while time.monotonic() < end:
        choice = rng.random()
        if choice < 0.4:
            chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        elif choice < 0.7:
            chunk = ("x" * rng.randrange(200, 3000)).encode()  # overlong line
        elif choice < 0.9:
            chunk = rng.choice([b"piles\r", b"status --json\r", b"help\r", b"\x03", b"\x1b[A", b"\x7f\x7f"])
        else:
            chunk = b"mbread bus1 1 4 72 " + str(rng.randrange(200)).encode() + b"\r"
        term.send(chunk)
        sent += len(chunk)
        term.drain()
    term.send(b"\x03\r")
    term.drain()
    out = term.command("status", timeout=20)
    assert "GW-T1" in out
    wait_for(lambda: platform.account().messages >= m0 + 3, 20, "publishing during and after the fuzz")
    cycles = json.loads(term.command("bus --json").split("\n", 1)[1].rsplit("\n", 1)[0])["buses"]["bus1"]
    assert cycles["replies"] > 0
    assert rss_kb(gw.pid) - rss0 < 30_000, (rss0, rss_kb(gw.pid))
    assert sent > 20_000
