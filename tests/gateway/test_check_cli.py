"""`pilegate check` as an installer runs it: the real command, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "site.toml"


def run_check(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pilegate.cli", "check", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def variant(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    text = EXAMPLE.read_text()
    assert old in text, old
    path = tmp_path / "site.toml"
    path.write_text(text.replace(old, new, count))
    return path


def test_example_site_is_valid():
    proc = run_check(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "8 pile(s)" in proc.stdout


def test_json_output_is_the_compiled_config():
    proc = run_check("--json", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    compiled = json.loads(proc.stdout)
    assert compiled["board_def"]["id"] == "rpi4-usb-rs485"
    assert set(compiled["profiles"]) >= {"chint-ddsu666", "abb-b23"}
    assert compiled["bus"][0]["timeout_ms"] == 500
    assert proc.stdout.strip() == json.dumps(compiled, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_two_piles_on_one_address(tmp_path):
    path = variant(tmp_path, 'address = 2, profile = "chint-ddsu666"', 'address = 1, profile = "chint-ddsu666"')
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:pile[P02].meter.address: bus rs485-1 address 1 is already the meter of pile[P01]" in proc.stderr
    assert "(line " in proc.stderr


def test_pile_with_no_meter(tmp_path):
    path = variant(tmp_path, 'meter = { bus = "rs485-1", address = 4, profile = "eastron-sdm120", serial = "" }\n', "")
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:pile[P04].meter: missing" in proc.stderr


def test_bay_naming_a_missing_pile(tmp_path):
    path = variant(tmp_path, 'pile = "P08"', 'pile = "P18"')
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:bay[B08].pile: names pile 'P18', which is not defined" in proc.stderr


def test_unknown_profile(tmp_path):
    path = variant(tmp_path, 'profile = "abb-b23"', 'profile = "abb-b99"')
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:pile[P08].meter.profile: unknown meter profile 'abb-b99'" in proc.stderr


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    path = variant(tmp_path, 'site = "luoyang-demo-p01"', 'site "luoyang-demo-p01"')
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:9:6: TOML syntax error" in proc.stderr


def test_several_problems_are_all_listed(tmp_path):
    text = EXAMPLE.read_text()
    text = text.replace('pile = "P08"', 'pile = "P18"')
    text = text.replace('profile = "abb-b23"', 'profile = "abb-b99"')
    text = text.replace('baud = 9600\nparity = "N"', 'baud = 9601\nparity = "N"')
    path = tmp_path / "site.toml"
    path.write_text(text)
    proc = run_check(path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(str(path) + ":")]
    keys = {ln.split(":")[1] for ln in lines}
    assert {"bay[B08].pile", "pile[P08].meter.profile", "bus[rs485-1].baud"} <= keys
    assert "3 problem(s)" in proc.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    proc = run_check(tmp_path / "nope.toml")
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"]])
def test_help(argv):
    proc = subprocess.run([sys.executable, "-m", "pilegate.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: pilegate" in proc.stdout
