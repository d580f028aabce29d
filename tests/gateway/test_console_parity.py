"""One console contract, two ports: the Pi gateway and the ESP32 app answer field by field alike.

The same simulated meters are read first by `pilegate run` (console on a pseudo-terminal), then
by the ESP32 app on CPython (its console on another pseudo-terminal).  Both answers to the read
commands and to `set` are compared with the Fields table of docs/console.md (the contract), and
with each other wherever the docs do not say the ports differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import machine  # the fake, from tests/helpers
import pytest
from e2e import Platform, compile_esp32_site, start_gateway, stop, wait_for, write_site
from fwhw import FakeHw, FwTerminal
from ptyterm import Terminal as PiTerminal
from simsite import pile_block

from pilecore import pinhash
from pilefw.app import App, load_config_file
from pilehil import ConstantLoad

ROOT = Path(__file__).resolve().parents[2]
READS = ("status", "piles", "meter P1", "bays", "mqtt")
# Fields the docs allow to differ between ports or between two runs (docs/console.md, Fields).
PORT_FIELDS = {"platform", "board", "mem_free", "mem_total", "uptime_s", "time", "kid", "config_hash"}
RUN_FIELDS = {"time_sync", "epoch", "seq", "t", "last_publish_t", "connects", "oldest_unsent_seq", "oldest_unsent_t"}
RUN_FIELDS |= {"outbox", "polls", "failures", "error"}  # a poll may fail on a loaded machine


def documented_fields() -> dict[str, list[str]]:
    """The Fields table of docs/console.md: command -> field names."""
    text = (ROOT / "docs" / "console.md").read_text()
    section = text.split("### Fields", 1)[1].split("\n### ", 1)[0]
    out = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cmd, fields = line.split("|")[1:3]
        out[re.match(r"\s*`([^`<]+?)\s*(<[^>]*>)?`", cmd).group(1)] = re.findall(r"`([^`]+)`", fields)
    return out


def ask(command: Callable[[str], str], pin: str) -> dict[str, Any]:
    """Every read command and the settings, as JSON, through one console session."""
    out = {}
    for cmd in READS:
        out[cmd] = _json_line(command(cmd + " --json"))
    command("login")
    assert "logged in as technician" in command(pin)
    out["set"] = _json_line(command("set --json"))
    command("logout")
    return out


def _json_line(text: str) -> Any:
    return json.loads(next(ln for ln in text.splitlines() if ln.startswith("{")))


def pi_answers(s: Any, broker: Any, platform: Platform, tmp_path: Path, pin_record: str, pin: str) -> dict[str, Any]:
    term = PiTerminal()
    extra = f'\n[console]\nserial_port = "{term.path}"\nsocket = "{tmp_path / "run" / "console.sock"}"\n'
    site_path = write_site(s, tmp_path, broker, platform, extra)
    data = tmp_path / "pi-data"
    data.mkdir()
    (data / "console-pin").write_text(pin_record)
    (data / "console-pin").chmod(0o600)
    gw = start_gateway(site_path, data)
    try:
        term.read_until(r"pilegate> $", 60)

        def metered() -> bool:
            rows = _json_line(term.command("piles --json"))["piles"]
            return all(r["metered"] and r["power_w"] for r in rows)

        wait_for(metered, 60, "both piles metered on the Pi")

        def command(line: str) -> str:
            term.send(line + "\r")
            return term.read_until(r"(pilegate[>#] |PIN: )$", 60)

        return ask(command, pin)
    finally:
        stop(gw)
        term.close()


def esp32_answers(s: Any, tmp_path: Path, pin_record: str, pin: str) -> dict[str, Any]:
    compile_esp32_site((tmp_path / "gw-site.toml").read_text().split("\n[console]\n")[0], tmp_path)
    cfg, digest = load_config_file(str(tmp_path / "config.json"))
    machine.UART_DEVICES[2] = s.sim.endpoints["bus1"]
    term = FwTerminal()
    data = tmp_path / "esp-data"
    data.mkdir()
    (data / "console.pin").write_text(pin_record)
    app = App(cfg, FakeHw(data, term.path), digest)
    try:

        def command(line: str) -> str:
            term.out = b""
            term.send(line.encode() + b"\r")
            wait_for(lambda: re.search(rb"(pilegate[>#]|PIN:) $", term.read()), 60, line, step=0.005, tick=app.step)
            return term.read().decode()

        wait_for(lambda: b"pilegate> " in term.read(), 60, "the ESP32 prompt", step=0.005, tick=app.step)

        def metered() -> bool:
            rows = _json_line(command("piles --json"))["piles"]
            return all(r["metered"] and r["power_w"] for r in rows)

        wait_for(metered, 60, "both piles metered on the ESP32", step=0.005, tick=app.step)
        return ask(command, pin)
    finally:
        app.close()
        term.close()


def _rows(answer: Any, cmd: str) -> list[dict[str, Any]]:
    if cmd in ("piles", "bays"):
        return answer[cmd]
    if cmd == "set":
        return [answer["settings"]]
    return [answer]


def test_pi_and_esp32_console_answers_agree_with_the_docs_and_each_other(sim_site, broker, tmp_path):
    s = sim_site(
        pile_block("P1", 1, "eastron-sdm120", serial="12345678")
        + pile_block("P2", 2, "eastron-sdm120", serial="12345679"),
        loads={1: ConstantLoad(3000, 1), 2: ConstantLoad(5000, 1)},
    )
    s.clock.advance(3600)
    pin = "482916"
    record = pinhash.make_record(pin, b"saltsalt", 1000)
    platform = Platform(tmp_path, broker)
    pi = pi_answers(s, broker, platform, tmp_path, record, pin)
    esp = esp32_answers(s, tmp_path, record, pin)
    docs = documented_fields()
    assert set(docs) == {"status", "piles", "meter", "bays", "mqtt", "set"}, docs
    for cmd in (*READS, "set"):
        fields = docs[cmd.split()[0]]
        for port, answer in (("pi", pi), ("esp32", esp)):
            for row in _rows(answer[cmd], cmd.split()[0]):
                assert sorted(row) == sorted(fields), (port, cmd, sorted(row), fields)
        for a, b in zip(_rows(pi[cmd], cmd.split()[0]), _rows(esp[cmd], cmd.split()[0]), strict=True):
            for k in a:
                if k in PORT_FIELDS or k in RUN_FIELDS or k in ("state", "power_w", "energy_wh", "values", "stats"):
                    continue
                if cmd == "set" and k in ("metering.poll_s", "telemetry.interval_s"):
                    continue  # the Pi test run overrides them on its command line
                assert a[k] == b[k], (cmd, k, a[k], b[k])
    # values that differ only in run or port still have the same kind on both ports
    for k in ("time", "uptime_s", "epoch", "seq"):
        assert isinstance(pi["status"][k], int) and isinstance(esp["status"][k], int), k
    assert {pi["status"]["time_sync"], esp["status"]["time_sync"]} <= {"ntp", "platform", "none"}
    assert pi["status"]["platform"] == "rpi" and esp["status"]["platform"] == "esp32"
    for k in ("mem_free", "mem_total"):
        assert isinstance(pi["status"][k], int) and (esp["status"][k] is None or isinstance(esp["status"][k], int))
    for port in (pi, esp):
        for row in port["piles"]["piles"]:
            assert row["state"] in ("charging", "idle", "offline", "unknown") and isinstance(row["t"], int)
        assert sorted(port["meter P1"]["values"]) == sorted(pi["meter P1"]["values"])
        assert port["piles"]["piles"][0]["power_w"] == pytest.approx(3000, abs=2)
        assert isinstance(port["mqtt"]["outbox"], int) and port["mqtt"]["connected"] is True
    assert pi["set"]["settings"]["console.idle_logout_s"] == esp["set"]["settings"]["console.idle_logout_s"] == 600
