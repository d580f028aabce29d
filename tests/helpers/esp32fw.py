"""A synthetic MicroPython-like ESP32 firmware .bin for image tests: a bootloader and an app
built as real ESP32 images by esptool's own image classes, and a real binary partition table
(gen_esp32part's format) at flash 0x8000, laid out as the official image is (flashed at
0x1000 on the ESP32)."""

from __future__ import annotations

from esptool.bin_image import ELFSection, ESP32FirmwareImage

from piletools.esp32image import Partition, build_partition_table

APP_OFFSET = 0x10000


def esp_image(segments: list[tuple[int, bytes]], entry: int) -> bytes:
    img = ESP32FirmwareImage()
    img.entrypoint = entry
    img.flash_mode = 2  # DIO
    img.flash_size_freq = 0x20  # 4 MB, 40 MHz
    for addr, data in segments:
        img.segments.append(ELFSection(b".seg%d" % len(img.segments), addr, data, 0))
    out = img.save(None)
    assert out is not None
    return out


def partitions(vfs: bool) -> list[Partition]:
    """MicroPython's partitions-4MiBplus.csv (1.26+), or the 1.25-style table with a vfs entry."""
    parts = [
        Partition("nvs", 0x01, 0x02, 0x9000, 0x6000),
        Partition("phy_init", 0x01, 0x01, 0xF000, 0x1000),
        Partition("factory", 0x00, 0x00, APP_OFFSET, 0x1F0000),
    ]
    if vfs:
        parts.append(Partition("vfs", 0x01, 0x81, 0x200000, 0x200000))
    return parts


def firmware(vfs: bool = False, firmware_offset: int = 0x1000) -> bytes:
    boot = esp_image([(0x3FFF0030, b"\x01" * 64), (0x40078000, b"\x02" * 128)], 0x40078100)
    app = esp_image([(0x3F400020, b"MicroPython" + b"\0" * 53), (0x40080000, b"\x03" * 256)], 0x40080010)
    image = bytearray(b"\xff" * (APP_OFFSET - firmware_offset + len(app)))
    image[0 : len(boot)] = boot
    pt = 0x8000 - firmware_offset
    image[pt : pt + 0xC00] = build_partition_table(partitions(vfs))
    image[APP_OFFSET - firmware_offset :] = app
    return bytes(image)
