"""The MicroPython App's flash is a real host directory (tests/mpy/app_harness.mjs, hostDirFs).

The ESP32 App runs on the MicroPython WebAssembly VM (hil/pilehil/mpyapp.py) with its /data
mounted from a host directory, so the HIL rig's power cut and full disk reach it as they reach
a board's flash:

* a SIGKILL of the Node process keeps every record the App wrote: a new VM over the same
  directory boots on the same key, continues the chain, and delivers what was waiting;
* a full host file system (a real tmpfs, tests/helpers/smallfs.py, root) is OSError(28) in the
  VM, and the App answers it with its documented storage-refused state (docs/outbox.md "When
  the flash is full (ESP32)"): `outbox.full`, telemetry not stored, nothing lost or skipped,
  `outbox.resumed` once space returns.

Every message is verified by the reference receiver.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import Platform, compile_esp32_site, wait_for, write_site
from simsite import pile_block
from smallfs import small_fs

from pilehil import ConstantLoad, mpyapp

pytestmark = pytest.mark.skipif(mpyapp.available() is not None, reason=str(mpyapp.available()))

ENOSPC_ON_A_BOARD = 28  # MicroPython on the ESP32 (LittleFS, newlib errno)


def esp32_config(s, tmp_path: Path, broker, platform: Platform) -> bytes:
    text = write_site(s, tmp_path, broker, platform, "\n[telemetry]\ninterval_s = 2\n").read_text()
    return compile_esp32_site(text, tmp_path, "esp32-wrover-e-max3485").json_bytes


@pytest.fixture
def site(sim_site, broker, tmp_path):
    s = sim_site(pile_block("P1", 1, "eastron-sdm120", serial="12345678"), loads={1: ConstantLoad(3500, 1)})
    platform = Platform(tmp_path, broker)
    cfg = esp32_config(s, tmp_path, broker, platform)
    vms: list[mpyapp.MpyApp] = []

    def vm(name: str, data_dir: Path) -> mpyapp.MpyApp:
        dut = mpyapp.MpyApp(tmp_path / name, data_dir=data_dir)
        vms.append(dut)
        return dut

    def boot(dut: mpyapp.MpyApp) -> dict:
        files = {str(platform.key_file): platform.key_file.read_bytes()}
        return dut.start(cfg, uarts={2: "pty:" + s.sim.endpoints["bus1"]}, files=files)

    yield platform, vm, boot
    for dut in vms:
        dut.close()
    if platform.sub is not None:
        platform.sub.stop()


def test_the_file_calls_the_firmware_makes_act_on_the_host_directory(tmp_path):
    """outbox.py and keystore.py's calls, in the VM, seen from the host (no App needed)."""
    flash = tmp_path / "flash"
    with mpyapp.MpyApp(tmp_path / "vm", code="py", data_dir=flash) as vm:
        vm.load()
        seen = vm.exec(
            "import os\n"
            "os.mkdir('/data/outbox')\n"
            "f = open('/data/outbox/t00001', 'ab')\n"
            "f.write(b'head'); f.write(b'body'); f.flush()\n"
            "_w = os.stat('/data/outbox/t00001')[6]\n"  # on the host before close
            "f.close()\n"
            "f = open('/data/outbox/t00001', 'ab'); f.write(b'more'); f.close()\n"
            "with open('/data/k.tmp', 'wb') as f:\n"
            "    f.write(b'new')\n"
            "with open('/data/k', 'wb') as f:\n"
            "    f.write(b'old key')\n"
            "os.rename('/data/k.tmp', '/data/k')\n"  # replaces, as LittleFS's rename
            "with open('/data/k', 'rb') as f:\n"
            "    _k = f.read()\n"
            "f = open('/data/outbox/t00001', 'rb'); f.seek(4); _mv = memoryview(bytearray(4))\n"
            "_n = f.readinto(_mv); f.close()\n"
            "os.remove('/data/k')\n"
            "try:\n"
            "    os.stat('/data/k')\n"
            "    _gone = False\n"
            "except OSError:\n"
            "    _gone = True\n"
            "_r = json.dumps([_w, _k.decode(), _n, bytes(_mv).decode(), _gone, sorted(os.listdir('/data')),\n"
            "                 os.listdir('/data/outbox'), os.statvfs('/data')[0] > 0])\n"
        )
        assert seen == [8, "new", 4, "body", True, ["outbox"], ["t00001"], True]
        assert (flash / "outbox" / "t00001").read_bytes() == b"headbodymore"
        assert sorted(p.name for p in flash.iterdir()) == ["outbox"]


def _offline(dut: mpyapp.MpyApp) -> None:
    """The broker is unreachable for the App: what it signs now waits in its outbox."""
    dut.exec("_gw.link.close(None)\n_hw.net_ok = False")


def _sign_telemetry(dut: mpyapp.MpyApp, rounds: int) -> None:
    for _ in range(rounds):
        dut.advance(2_500)
        dut.step(10)


def test_a_power_cut_of_the_vm_keeps_its_flash_and_the_next_boot_delivers_what_waited(site, tmp_path):
    platform, vm, boot = site
    flash = tmp_path / "flash"
    first = vm("vm1", flash)
    booted = boot(first)
    platform.listen(booted["pem"])
    acct = platform.account
    wait_for(lambda: acct() and acct().high >= 3, 90, "the first messages", step=0.001, tick=lambda: first.step(20))
    _offline(first)
    _sign_telemetry(first, 4)
    waiting = first.value("_gw.outbox.depth()")
    last = first.value("_gw.chain.seq")
    assert waiting >= 2 and last > acct().high
    # the records are files in the host directory, written before the cut
    segments = sorted(p for p in (flash / "outbox").iterdir() if p.stat().st_size)
    assert segments, sorted(flash.rglob("*"))
    sizes = {p.name: p.stat().st_size for p in segments}
    first.power_cut()  # SIGKILL: nothing closed, nothing flushed by the App
    assert {p.name: p.stat().st_size for p in segments} == sizes

    second = vm("vm2", flash)
    again = boot(second)
    # same key, next epoch, the chain continues after the last stored record: nothing was lost
    assert again["kid"] == booted["kid"] and again["epoch"] == booted["epoch"] + 1
    assert again["seq"] == last + 1
    assert second.value("_gw.outbox.depth()") >= waiting
    wait_for(
        lambda: acct().high >= again["seq"] and not acct().gaps(),
        120,
        "every record, the old ones first",
        step=0.001,
        tick=lambda: second.step(20),
    )
    a = acct()
    assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0
    text, clean = platform.receiver.report()
    assert clean, text


def test_a_full_host_file_system_is_enospc_in_the_vm_and_the_app_holds_what_it_cannot_store(site, tmp_path):
    platform, vm, boot = site
    with small_fs(tmp_path / "flash", 1024) as fs:
        dut = vm("vm", fs.path)
        booted = boot(dut)
        platform.listen(booted["pem"])
        acct = platform.account
        wait_for(lambda: acct() and acct().high >= 3, 90, "the first messages", step=0.001, tick=lambda: dut.step(20))
        _offline(dut)
        fs.fill()
        # the host's ENOSPC is the board's OSError(28) in the VM, and the write stored nothing
        probe = dut.exec(
            "import os\n"
            "_f = open('/data/probe', 'wb')\n"
            "try:\n"
            "    _f.write(bytes(16384))\n"
            "    _e = None\n"
            "except OSError as e:\n"
            "    _e = e.errno\n"
            "_f.close()\n"
            "_r = json.dumps([_e, os.stat('/data/probe')[6]])\n"
            "os.remove('/data/probe')\n"
        )
        assert probe == [ENOSPC_ON_A_BOARD, 0]
        # the App meets the full flash in its outbox: the storage-refused state, no crash
        full = "_gw.driver.storage['full']"
        for _ in range(60):
            if dut.value(full):
                break
            _sign_telemetry(dut, 1)
        storage = dut.value("_gw.driver.storage")
        assert storage["full"] is True and "flash error" in storage["reason"], storage
        _sign_telemetry(dut, 3)
        assert dut.value("_gw.driver.storage['telemetry_not_stored']") >= 1
        assert dut.value("_hw.resets") == 0  # every pass returned: the App did not crash or reset
        # space returns, then the broker: storing resumes by itself and nothing stored is lost
        fs.free()
        _sign_telemetry(dut, 2)
        assert dut.value(full) is False
        dut.exec("_hw.net_ok = True")
        high = dut.value("_gw.chain.seq")
        wait_for(
            lambda: acct().high >= high and not acct().gaps(),
            120,
            "every stored record",
            step=0.001,
            tick=lambda: dut.step(20),
        )
        kinds = [e["type"] for e in platform.events()]
        assert "outbox.full" in kinds and "outbox.resumed" in kinds, kinds
        resumed = next(e for e in platform.events() if e["type"] == "outbox.resumed")
        assert resumed["telemetry_not_stored"] >= 1
        a = acct()
        assert a.bad_signatures == 0 and not a.broken_links and a.replays == 0
        text, clean = platform.receiver.report()
        assert clean, text
