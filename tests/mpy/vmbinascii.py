"""binascii for the MicroPython WebAssembly VM (tests/mpy/app_harness.mjs), in place of the VM's
frozen pure-Python module, whose b2a_base64 builds its result by repeated concatenation: O(n^2)
bytes of garbage per message, which grows the VM's heap to tens of MB in one main-loop pass (the
ESP32 has the C module).  Same results; b2a_base64 here is linear.  Runs on MicroPython only."""

import binascii as _vm

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

a2b_base64 = _vm.a2b_base64
hexlify = _vm.hexlify
unhexlify = _vm.unhexlify
crc32 = _vm.crc32


def b2a_base64(data, newline=True):
    data = bytes(data)
    out = bytearray((len(data) + 2) // 3 * 4 + 1)
    a = _ALPHABET
    j = 0
    n = len(data) - len(data) % 3
    for i in range(0, n, 3):
        v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
        out[j] = a[v >> 18]
        out[j + 1] = a[(v >> 12) & 63]
        out[j + 2] = a[(v >> 6) & 63]
        out[j + 3] = a[v & 63]
        j += 4
    rest = len(data) - n
    if rest:
        v = data[n] << 16
        if rest == 2:
            v |= data[n + 1] << 8
        out[j] = a[v >> 18]
        out[j + 1] = a[(v >> 12) & 63]
        out[j + 2] = a[(v >> 6) & 63] if rest == 2 else 61
        out[j + 3] = 61
        j += 4
    if newline:
        out[j] = 10
        j += 1
    return bytes(out[:j])
