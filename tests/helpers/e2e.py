"""Helpers for end-to-end tests: the platform side (command key, verifying receiver, command
sender) and running `pilegate run` as a real process."""

from __future__ import annotations

import ctypes
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilecore import commands
from pilegate.keys import DeviceKey
from pilehil.load import PiecewiseLoad
from piletools.receiver import KeyRegister, Receiver
from piletools.verify import Subscriber


class OneSession(PiecewiseLoad):
    """Idle, then one car charging at `kw` from `on_s` to `off_s` (simulated seconds), idle after."""

    def __init__(self, on_s: int, off_s: int, w: int = 7000) -> None:
        super().__init__()
        self._append(on_s * 1000, w, 1)
        self._append(off_s * 1000, 0, 1)


def wait_for(pred, timeout: float, what: str, step: float = 0.05, tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick:
            tick()
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Platform:
    """The platform side of a test: a command key, a verifying receiver, a command sender."""

    def __init__(self, tmp: Path, broker, gw: str = "GW-T1", site: str = "test-site"):
        self.gw, self.site = gw, site
        self.key = DeviceKey(ec.generate_private_key(ec.SECP256R1()))
        self.key_file = tmp / "platform-cmd.pub.pem"
        self.key_file.write_text(self.key.public_pem)
        self.broker = broker
        self.prefix = f"pilegate/v1/{site}/{gw}"
        self.acks: list[dict] = []
        self.event_log: list[dict] = []
        self.bills: list[dict] = []
        self.receiver: Receiver | None = None
        self.sub: Subscriber | None = None

    def listen(self, device_pem: str) -> None:
        reg = KeyRegister()
        reg.add(self.gw, device_pem)
        self.receiver = Receiver(reg)
        ca = str(self.broker.pki.ca) if self.broker.tls else None

        def on_verdict(v):
            if v.status == "accepted" and v.kind == "ack":
                self.acks.append(v.body["data"])
            if v.status == "accepted" and v.kind == "event":
                self.event_log.extend(v.body["data"].get("events", []))
            if v.status == "accepted" and v.kind == "billing":
                self.bills.append(v.body["data"])

        self.sub = Subscriber(
            self.receiver, self.broker.url, "pilegate/v1/+/+/+", ca_file=ca, on_verdict=on_verdict
        ).start()
        wait_for(self.sub.subscribed.is_set, 10, "the verifier's subscription")

    def send(self, jws: str) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if self.broker.tls:
            c.tls_set(ca_certs=str(self.broker.pki.ca))
        c.connect("localhost" if self.broker.tls else "127.0.0.1", self.broker.port)
        c.loop_start()
        c.publish(f"{self.prefix}/cmd", jws, qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()

    def command(self, cmd_id: str, name: str, args: dict, key=None, iat=None, exp=None) -> str:
        key = key or self.key
        now = int(time.time())
        return commands.make(self.gw, cmd_id, name, args, iat or now - 1, exp or now + 120, key.sign_raw, key.kid)

    def events(self) -> list[dict]:
        return list(self.event_log)

    def account(self):
        return self.receiver.accounts.get(self.gw)


def write_site(s, tmp: Path, broker, platform: Platform, extra: str = "") -> Path:
    text = s.path.read_text()
    if broker.tls:
        mqtt_block = f'[mqtt]\nurl = "{broker.url}"\nca_file = "{broker.pki.ca}"\n'
    else:
        mqtt_block = f'[mqtt]\nurl = "{broker.url}"\nallow_insecure = true\n'
    text = text.replace('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nallow_insecure = true\n', mqtt_block)
    text += f'\n[signing]\nplatform_key = "{platform.key_file}"\n' + extra
    path = tmp / "gw-site.toml"
    path.write_text(text)
    return path


def compile_esp32_site(text: str, tmp: Path, board: str = "esp32-devkitc-max3485") -> Any:
    """A Pi site file's text made an ESP32 board's (the board; every bus on uart2), checked and
    compiled: writes tmp/esp32-site.toml and tmp/config.json (what `pilegate check --json`
    prints) and returns the checked site (its `json_bytes` are the compiled config)."""
    from pilegate import siteconfig

    text = text.replace('board = "rpi4-usb-rs485"', f'board = "{board}"')
    text = re.sub(r'port = "/dev/[^"]+"', 'port = "uart2"', text)
    path = tmp / "esp32-site.toml"
    path.write_text(text)
    site, problems = siteconfig.load_site(path)
    assert site is not None, "\n".join(map(str, problems))
    (tmp / "config.json").write_bytes(site.json_bytes + b"\n")
    return site


# Every gateway process a test starts, so that teardown can end the ones a failing test left
# running (tests/gateway/conftest.py): a leaked gateway keeps reopening its bus by path, and a
# recycled /dev/pts/N then belongs to another test's console or meter.
STARTED: list[subprocess.Popen] = []


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the process that started it
    (the pytest worker) dies, so no gateway outlives a killed or crashed test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_gateway(site_path: Path, data: Path, interval: int = 1, log: Path | None = None) -> subprocess.Popen:
    """`pilegate run` as a process; its output goes to `log` (default: gateway.log beside the
    data dir), never to a pipe nobody reads (a full pipe would freeze the gateway)."""
    if log is None:
        log = data.parent / f"gateway-{len(STARTED)}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilegate.cli",
                "run",
                str(site_path),
                "--data-dir",
                str(data),
                "--interval",
                str(interval),
                "--poll",
                "0.5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    STARTED.append(proc)
    return proc


def end_leftover_gateways() -> None:
    """Kill every gateway a test started and did not stop (after a failure)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def device_pem(site_path: Path, data: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pilegate.cli", "keys", str(site_path), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out[out.index("-----BEGIN") :]


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, wait for a clean exit (status 0), and return what the gateway logged."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    out = Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
    assert proc.returncode == 0, out
    return out


def billing(platform: Platform) -> list[dict]:
    return [b for b in platform.bills if b.get("type") == "session"]


def spki_hex(pem: str) -> str:
    """The key form pyocmf takes: hex of the SubjectPublicKeyInfo DER."""
    pub = serialization.load_pem_public_key(pem.encode())
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def stored_last(data: Path) -> tuple[int, int, int]:
    """(newest acked seq, unacked count, oldest unacked seq or 0) from the outbox, read-only."""
    db = sqlite3.connect(f"file:{data / 'outbox.db'}?mode=ro", uri=True)
    try:
        acked = db.execute("SELECT MAX(seq) FROM msg WHERE acked = 1").fetchone()[0] or 0
        unacked = db.execute("SELECT COUNT(*), MIN(seq) FROM msg WHERE acked = 0").fetchone()
        return acked, unacked[0], unacked[1] or 0
    finally:
        db.close()
