"""``python -m pilehil`` and its helpers (pilehil.cli)."""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pilehil.cli import build_parser, build_site, main, parse_meter, run_site_forever
from pilehil.load import ConstantLoad, EvSessions
from pilehil.probe import client_for, read_registers

PROFILE_TOML = """
id = "tiny"
kind = "meter"
phases = 1
function = 4
byte_order = "big"
word_order = "big"
max_block = 10
response_ms = 10

[values.energy_import]
register = 0x0000
type = "u32"
scale = 0.001
unit = "kWh"
min = 0.0
max = 999999.0

[values.power]
register = 0x0002
type = "s32"
scale = 1
unit = "W"
min = -50000
max = 50000

[identity]
kind = "serial"
register = 0x0010
type = "u32"
count = 2
function = 3
"""


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(PROFILE_TOML)
    return path


def test_parse_meter():
    assert parse_meter("b1:3:eastron-sdm120:42") == ("b1", 3, "eastron-sdm120", "42", None)
    assert parse_meter("b1:3:x.toml:42:constant:7000") == ("b1", 3, "x.toml", "42", "constant:7000")
    for bad in ("b1:3:x.toml", "b1:three:x.toml:42", "b1::x.toml:42"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_meter(bad)


def test_build_site_from_arguments(profile_file):
    args = build_parser().parse_args(
        [
            "--meter",
            f"a:1:{profile_file}:100",
            "--meter",
            f"a:2:{profile_file}:200:constant:500",
            "--meter",
            f"b:1:{profile_file}:300:idle",
            "--transport",
            "rtu+tcp",
            "--baud",
            "19200",
            "--parity",
            "E",
            "--speed",
            "50",
        ]
    )
    site = build_site(args)
    assert sorted(site.buses) == ["a", "b"]
    assert site.bus("a").transport == "rtu+tcp" and site.bus("a").baud == 19200
    assert site.bus("a").parity == "E"
    assert isinstance(site.meter("a", 1).load, EvSessions)
    assert isinstance(site.meter("a", 2).load, ConstantLoad)
    assert site.meter("a", 2).power_w == 500 and site.meter("b", 1).power_w == 0
    assert (
        site.meter("a", 1).load.seed
        != build_site(build_parser().parse_args(["--meter", f"a:2:{profile_file}:100"])).meter("a", 2).load.seed
    )
    assert site.clock.speed == 50


def test_main_returns_usage_errors(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["--meter", "nonsense"]) == 2


def test_main_reports_a_missing_profile(capsys):
    assert main(["--meter", "b:1:/nonexistent/profile.toml:1"]) == 1
    assert "nonexistent" in capsys.readouterr().err


def test_run_site_forever_stops_on_event(profile_file):
    args = build_parser().parse_args(["--meter", f"a:1:{profile_file}:100"])
    site = build_site(args)
    stop = threading.Event()
    worker = threading.Thread(target=run_site_forever, args=(site, stop))
    worker.start()
    deadline = time.monotonic() + 10
    while not site.endpoints and time.monotonic() < deadline:
        time.sleep(0.01)
    assert site.endpoints["a"].startswith("/dev/pts/")
    stop.set()
    worker.join(10)
    assert not worker.is_alive() and not site.running


def read_lines(stream, n, deadline_s=20.0):
    """``n`` lines from a child's stdout; fewer if they do not come before the deadline (the
    reading thread is a daemon, so a silent child cannot hang the test)."""
    lines = []

    def reader():
        for _ in range(n):
            lines.append(stream.readline())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(deadline_s)
    return list(lines)


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_cli_serves_until_ctrl_c(profile_file, transport):
    cmd = [
        sys.executable,
        "-m",
        "pilehil",
        "--meter",
        f"bus1:5:{profile_file}:4242:constant:3600",
        "--meter",
        f"bus2:1:{profile_file}:7",
        "--transport",
        transport,
        "--speed",
        "3600",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        endpoints = dict(line.split() for line in read_lines(proc.stdout, 2))
        assert sorted(endpoints) == ["bus1", "bus2"]
        client = client_for(endpoints["bus1"], timeout=2.0)
        try:
            assert read_registers(client, 3, 0x0010, 2, 5) == [0, 4242]
            assert read_registers(client, 4, 0x0002, 2, 5) == [0, 3600]
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err and out == ""


def test_a_dlt645_meter_on_the_command_line_gets_its_12_digit_address():
    args = build_parser().parse_args(
        ["--meter", "b:000012345678:chint-dtsu666-dlt645:20260001", "--meter", "b:2:eastron-sdm120:7"]
    )
    site = build_site(args)
    dlt = site.meter("b", "000012345678")
    assert type(dlt).__name__ == "SimDltMeter" and dlt.serial == "20260001"
    assert site.meter("b", 2).profile["id"] == "eastron-sdm120"
