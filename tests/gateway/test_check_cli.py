"""`pilegate check` as an installer runs it: the real command, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pilegate.keys import DeviceKey
from pilehil.broker import make_pki

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
    proc = run_check("--no-files", EXAMPLE)  # its certificates live in /etc/pilegate on a gateway
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
    proc = run_check("--no-files", path)  # the example's /etc/pilegate files are not here
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


def test_arrays_nested_1000_deep_are_a_problem_with_a_place_not_a_crash(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.read_text() + "\nx = " + "[" * 1000 + "]" * 1000 + "\n")
    proc = run_check(path)
    assert proc.returncode == 2, proc.stderr
    line = len(EXAMPLE.read_text().splitlines()) + 2
    assert f"{path}:{line}:37: arrays or inline tables nested more than 32 deep" in proc.stderr
    assert "internal error" not in proc.stderr and "Recursion" not in proc.stderr


def test_unterminated_string_at_the_end_gives_line_and_column(tmp_path):
    path = tmp_path / "site.toml"
    text = EXAMPLE.read_text() + 'foo = "abc'
    path.write_text(text)
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:{text.count(chr(10)) + 1}:11: TOML syntax error: Unterminated string" in proc.stderr


def test_a_file_that_is_not_utf8_names_line_column_and_byte_offset(tmp_path):
    path = tmp_path / "site.toml"
    raw = EXAMPLE.read_bytes().replace(b'name = "', b'name = "\xff', 1)
    path.write_bytes(raw)
    proc = run_check(path)
    assert proc.returncode == 2
    off = raw.index(b"\xff")
    line = raw[:off].count(b"\n") + 1
    col = off - raw[:off].rfind(b"\n")
    assert f"{path}:{line}:{col}: not UTF-8: byte 0xff at byte offset {off}" in proc.stderr


@pytest.mark.parametrize("prefix", ["pilegate/#", "pilegate/+/v1", "", "pile\\u0000gate"])
def test_mqtt_prefix_that_is_not_a_topic_is_refused(tmp_path, prefix):
    path = variant(tmp_path, 'prefix = "pilegate/v1"', f'prefix = "{prefix}"')
    proc = run_check(path)
    assert proc.returncode == 2, proc.stdout
    assert f"{path}:mqtt.prefix: " in proc.stderr


@pytest.mark.parametrize("key", ["idle_power_w = 50.0", "tolerance_pct = 5.0"])
def test_nan_in_the_site_file_is_refused(tmp_path, key):
    text = EXAMPLE.read_text()
    if key not in text:
        pytest.skip(f"{key} not in the example")
    path = variant(tmp_path, key, key.split(" = ")[0] + " = nan")
    proc = run_check(path)
    assert proc.returncode == 2
    assert "nan is not a number" in proc.stderr


# ---------------------------------------------------------------- the files a site names (#10)


def site_with_files(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """The example with every file it names made for real in tmp_path (CA, client
    certificate and key, password file, platform key), with the modes they need."""
    pki = make_pki(tmp_path / "pki")
    files = {
        "ca": pki.ca,
        "cert": pki.client_cert,
        "key": pki.client_key,
        "pw": tmp_path / "mqtt-password",
        "platform": tmp_path / "platform-cmd.pub.pem",
    }
    files["pw"].write_text("s3cret\n")
    files["pw"].chmod(0o600)
    files["platform"].write_text(DeviceKey(ec.generate_private_key(ec.SECP256R1())).public_pem)
    text = EXAMPLE.read_text()
    for old, new in (
        ("/etc/pilegate/platform-ca.pem", files["ca"]),
        ("/etc/pilegate/client.pem", files["cert"]),
        ("/etc/pilegate/client.key", files["key"]),
        ("/etc/pilegate/platform-cmd.pub.pem", files["platform"]),
    ):
        assert old in text
        text = text.replace(old, str(new))
    text = text.replace("tls_verify = true\n", f'tls_verify = true\nusername = "gw"\npassword_file = "{files["pw"]}"\n')
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path, files


def test_a_site_whose_files_are_in_place_is_valid(tmp_path):
    path, _ = site_with_files(tmp_path)
    proc = run_check(path)
    assert proc.returncode == 0, proc.stderr


def test_a_private_key_readable_by_others_is_refused_with_the_fix(tmp_path):
    path, files = site_with_files(tmp_path)
    files["key"].chmod(0o644)
    files["pw"].chmod(0o640)
    proc = run_check(path)
    assert proc.returncode == 2
    key, pw = files["key"], files["pw"]
    assert f"{path}:mqtt.key_file: {key} has mode 0644: other users can read" in proc.stderr
    assert f"run 'chmod 600 {key}' (line 18)" in proc.stderr
    assert f"{path}:mqtt.password_file: {pw} has mode 0640" in proc.stderr
    files["key"].chmod(0o400)  # read-only for the owner is private too
    files["pw"].chmod(0o600)
    assert run_check(path).returncode == 0


def test_a_missing_file_is_named_with_its_key_and_line(tmp_path):
    path, files = site_with_files(tmp_path)
    files["ca"].unlink()
    files["platform"].unlink()
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:mqtt.ca_file: {files['ca']}: not found; put the broker's CA certificate (PEM) there" in proc.stderr
    assert "(line 16)" in proc.stderr
    assert f"{path}:signing.platform_key: {files['platform']}: not found" in proc.stderr
    assert "Errno" not in proc.stderr and "Traceback" not in proc.stderr


def test_files_that_hold_the_wrong_thing_are_named(tmp_path):
    path, files = site_with_files(tmp_path)
    other = make_pki(tmp_path / "other")
    files["ca"].write_text("not a certificate\n")
    files["key"].write_bytes(other.client_key.read_bytes())  # a key, but not this certificate's
    files["pw"].write_text("\n")
    files["platform"].write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    proc = run_check(path)
    assert proc.returncode == 2
    assert f"{path}:mqtt.ca_file: {files['ca']}: not a CA certificate in PEM" in proc.stderr
    assert (
        f"{path}:mqtt.cert_file: {files['cert']} with key {files['key']}: not a PEM certificate and its" in proc.stderr
    )
    assert f"{path}:mqtt.password_file: {files['pw']}: empty" in proc.stderr
    assert f"{path}:signing.platform_key: {files['platform']}: not an ECDSA P-256 public key" in proc.stderr


def test_json_for_an_esp32_does_not_check_files_on_the_device(tmp_path):
    proc = run_check("--json", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert f"{EXAMPLE}:mqtt.ca_file: note: /etc/pilegate/platform-ca.pem is read on the ESP32" in proc.stderr
    json.loads(proc.stdout)


def test_run_names_a_missing_file_instead_of_errno(tmp_path):
    path, files = site_with_files(tmp_path)
    files["ca"].unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "pilegate.cli", "run", str(path), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}:mqtt.ca_file: {files['ca']}: not found" in proc.stderr
    assert "Errno" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started
