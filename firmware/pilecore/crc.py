"""Table-driven reflected CRCs: CRC-16/MODBUS for RTU frames, CRC-32 (IEEE) for the flash outbox.

One table builder for both; each table is built on first use, never at import (RAM on the
ESP32), and kept for the life of the process (256 small ints).
"""

_tables = {}


def reflected_table(poly):
    """The 256-entry lookup table of a reflected CRC with polynomial `poly` (built once)."""
    t = _tables.get(poly)
    if t is None:
        t = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ poly if c & 1 else c >> 1
            t.append(c)
        _tables[poly] = t
    return t


def crc16_modbus(data, end=None):
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) of data[:end]."""
    t = reflected_table(0xA001)
    crc = 0xFFFF
    if end is None:
        end = len(data)
    for i in range(end):
        crc = (crc >> 8) ^ t[(crc ^ data[i]) & 0xFF]
    return crc


def crc32_ieee(data, crc=0):
    """CRC-32 (IEEE, as binascii.crc32), continuing from `crc`."""
    t = reflected_table(0xEDB88320)
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
