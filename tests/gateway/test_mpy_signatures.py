"""Signatures made ON MicroPython (the official WebAssembly build) verify with `cryptography`,
through the reference receiver that follows docs/telemetry.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from piletools.receiver import KeyRegister, Receiver

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("node") is None and not os.environ.get("CI"),
    reason="Node.js not installed (make setup installs it; CI always runs this)",
)
def test_messages_signed_on_micropython_verify_with_cryptography():
    proc = subprocess.run(["node", "tests/mpy/sign_jws.mjs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout.strip().splitlines()[-1])
    reg = KeyRegister()
    reg.add("ESP-1", made["pem"])
    rx = Receiver(reg)
    kinds = ("birth", "telemetry", "event")
    verdicts = [
        rx.accept(f"pilegate/v1/site-x/ESP-1/{k}", m.encode()) for k, m in zip(kinds, made["messages"], strict=True)
    ]
    assert [v.status for v in verdicts] == ["accepted"] * 3, verdicts
    assert verdicts[1].body["data"]["text"] == "中"
    text, clean = rx.report()
    assert clean, text
