"""`pilegate image` on a synthetic firmware with MicroPython's real partition layout: the tool
finds the file-system region (1.26+ rule and the 1.25 `vfs` partition), the LittleFS it writes
mounts with littlefs-python and holds the right files, and esptool accepts the merged image."""

from __future__ import annotations

import json
from pathlib import Path

import esp32fw
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilegate import cli, siteconfig
from piletools import esp32image as e

ROOT = Path(__file__).resolve().parents[2]

SITE = """
[gateway]
id = "LY-0009"
site = "esp-site"
board = "esp32-devkitc-max3485"

[mqtt]
url = "mqtts://platform.example.org:8883"
ca_file = "/certs/platform-ca.pem"

[signing]
platform_key = "/certs/platform-cmd.pub.pem"

[[bus]]
name = "rs485-1"
port = "uart2"

[[pile]]
id = "P01"
meter = { bus = "rs485-1", address = 1, profile = "eastron-sdm120", serial = "" }
"""


@pytest.fixture
def inputs(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    cmd = tmp_path / "cmd.pub.pem"
    cmd.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return site, ca, cmd


def make(tmp_path, site, ca, cmd, vfs=False, extra=()):
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(esp32fw.firmware(vfs=vfs))
    out = tmp_path / "site-LY-0009.bin"
    argv = ["image", str(site), "--micropython", str(fw), "-o", str(out), "--ca", str(ca)]
    argv += ["--command-key", str(cmd), "--umqtt", str(ROOT / "build" / "deps" / "umqtt"), *extra]
    return cli.main(argv), out


def test_image_for_micropython_1_26_fills_flash_after_the_last_partition(tmp_path, inputs, capsys):
    site, ca, cmd = inputs
    code, out = make(tmp_path, site, ca, cmd)
    printed = capsys.readouterr().out
    assert code == 0, printed
    image = out.read_bytes()
    assert len(image) == 4 * 2**20  # flashed at 0x0, up to the end of the 4 MiB flash
    region = e.Region(0x200000, 0x200000, "")
    assert "from the end of the last partition 0x200000 to the end of the board's 4 MiB flash" in printed
    assert "esptool: bootloader at 0x1000: 2 segments, checksum valid, SHA-256 valid" in printed
    assert "esptool: factory at 0x10000" in printed
    fs = e.read_littlefs(image, region)
    names = {f"{root.rstrip('/')}/{f}" for root, _, files in fs.walk("/") for f in files}
    assert {"/boot.py", "/main.py", "/config.json", "/lib/umqtt/simple.py"} <= names
    assert {"/lib/pilecore/envelope.mpy", "/lib/pilefw/app.mpy"} <= names
    assert {"/certs/platform-ca.pem", "/certs/platform-cmd.pub.pem"} <= names
    assert not any(n.startswith("/data") for n in names)
    with fs.open("/config.json", "rb") as f:
        cfg = json.loads(f.read())
    compiled, _ = siteconfig.load_site(site)
    assert compiled is not None and cfg == compiled.config
    with fs.open("/lib/pilecore/envelope.mpy", "rb") as f:
        assert f.read(1) == b"M"  # a MicroPython .mpy
    with fs.open("/main.py", "rb") as f:
        assert f.read() == (ROOT / "firmware" / "main.py").read_bytes()
    # the first block is not erased, so MicroPython's inisetup mounts it instead of formatting
    assert image[0x200000:0x201000] != b"\xff" * 4096
    # the MicroPython image itself is unchanged at its offset
    assert image[0x1000 : 0x1000 + 0x7000] == (tmp_path / "micropython.bin").read_bytes()[:0x7000]


def test_image_for_micropython_1_25_uses_its_vfs_partition(tmp_path, inputs, capsys):
    site, ca, cmd = inputs
    code, out = make(tmp_path, site, ca, cmd, vfs=True)
    assert code == 0
    assert "the 'vfs' partition in the table (0x200000, 2097152 bytes)" in capsys.readouterr().out
    fs = e.read_littlefs(out.read_bytes(), e.Region(0x200000, 0x200000, ""))
    assert fs.stat("/config.json").size > 100


def test_region_rule_uses_the_boards_flash_not_the_builds():
    parts = esp32fw.partitions(vfs=False)
    r = e.fs_region(parts, 8 * 2**20)
    assert (r.offset, r.size, r.block_count) == (0x200000, 6 * 2**20, 1536)
    with pytest.raises(e.ImageError, match="ffat"):
        e.fs_region([*parts, e.Partition("ffat", 1, 0x81, 0x200000, 0x100000)], 4 * 2**20)


def test_partition_table_round_trip_and_damage():
    parts = esp32fw.partitions(vfs=True)
    blob = e.build_partition_table(parts)
    assert e.parse_partition_table(blob) == parts
    bad = bytearray(blob)
    bad[5] ^= 1
    with pytest.raises(e.ImageError, match="MD5"):
        e.parse_partition_table(bytes(bad))


def test_refuses_secrets_wrong_files_and_other_boards(tmp_path, inputs, capsys):
    site, ca, cmd = inputs
    key = tmp_path / "k.pem"
    key.write_bytes(  # a real key, made now: the image must refuse any private key
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code, _ = make(tmp_path, site, ca, key)
    assert code == 2 and "holds a PRIVATE KEY" in capsys.readouterr().err
    not_fw = tmp_path / "x.bin"
    not_fw.write_bytes(b"hello")
    code = cli.main(["image", str(site), "--micropython", str(not_fw), "-o", str(tmp_path / "o.bin")])
    assert code == 2 and "not an ESP32 firmware image" in capsys.readouterr().err
    code, _ = make(tmp_path, site, ca, cmd, extra=("--board", "rpi4-usb-rs485"))
    assert code == 2 and "not an ESP32 board file" in capsys.readouterr().err
    site.write_text(SITE)
    code = cli.main(["image", str(site), "--micropython", str(tmp_path / "micropython.bin"), "-o", "x.bin"])
    assert code == 2 and "give the file with --ca" in capsys.readouterr().err
    code, _ = make(tmp_path, site, ca, cmd, extra=("--umqtt", str(tmp_path)))
    assert code == 2 and "no umqtt/simple.py there" in capsys.readouterr().err
