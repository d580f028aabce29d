"""Technician PIN records: salted PBKDF2-HMAC-SHA256 (RFC 8018), checked in constant time.

A gateway stores only a record, never the PIN:

    pbkdf2-sha256$<iterations>$<salt, hex>$<derived key, hex>

`make_record(pin, salt, iterations)` builds one at provisioning (the port or the installer tool
supplies the random salt: the core reads no randomness); `check(pin, record)` answers True or
False for a PIN and raises ValueError for a record that is not in the format above (a
provisioning bug, which the console reports as such rather than as a wrong PIN).

Speed: on CPython `hashlib.pbkdf2_hmac` (C) is used when present.  MicroPython has no such
function, so `pbkdf2_hmac_sha256` does it in Python: the same HMAC construction as
`pilecore.ecdsa.hmac_sha256` (a test checks they agree), but with the key padded and XORed with
ipad/opad once per derivation instead of once per iteration.  That makes each iteration two
SHA-256 calls and one 256-bit XOR, about 20 times faster than calling `hmac_sha256` in the loop
on MicroPython, and it is the only part of a login that costs time.

A 6-digit PIN is a small secret: the iteration count slows down someone who copied the record
off the flash, but what protects the PIN is the console's lockout (see pilecore.console).
"""

import binascii
import hashlib

from pilecore import ecdsa

SCHEME = "pbkdf2-sha256"
DEFAULT_ITERATIONS = 20000  # provisioning default; a few seconds at most on an ESP32
MIN_SALT = 8  # bytes
MAX_ITERATIONS = 10000000  # refuse records that would stall the console for minutes
MIN_PIN = 4
MAX_PIN = 64


class _Prf:
    """HMAC-SHA256 keyed once: `mac(msg)` equals ecdsa.hmac_sha256(key, msg)."""

    def __init__(self, key):
        key = bytes(key)
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + b"\x00" * (64 - len(key))
        self.ipad = bytes([b ^ 0x36 for b in key])
        self.opad = bytes([b ^ 0x5C for b in key])

    def mac(self, msg):
        inner = hashlib.sha256(self.ipad)
        inner.update(msg)
        outer = hashlib.sha256(self.opad)
        outer.update(inner.digest())
        return outer.digest()


def hmac_sha256(key, msg):
    """The reference HMAC (pilecore.ecdsa's), re-exported for tests and callers."""
    return ecdsa.hmac_sha256(key, msg)


def pbkdf2_hmac_sha256(password, salt, iterations, dklen=32):
    """PBKDF2 with HMAC-SHA256 in pure Python; returns `dklen` bytes (RFC 8018, 5.2)."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    if dklen < 1:
        raise ValueError("dklen must be >= 1")
    prf = _Prf(password)
    salt = bytes(salt)
    out = b""
    block = 1
    while len(out) < dklen:
        u = prf.mac(salt + block.to_bytes(4, "big"))
        acc = int.from_bytes(u, "big")
        for _ in range(iterations - 1):
            u = prf.mac(u)
            acc ^= int.from_bytes(u, "big")
        out += acc.to_bytes(32, "big")
        block += 1
    return out[:dklen]


def _derive(password, salt, iterations):
    native = getattr(hashlib, "pbkdf2_hmac", None)
    if native is not None:
        return native("sha256", password, salt, iterations)
    return pbkdf2_hmac_sha256(password, salt, iterations)


def _pin_bytes(pin):
    if isinstance(pin, str):
        pin = pin.encode("utf-8")
    return bytes(pin)


def equal(a, b):
    """Constant-time comparison of two byte strings (time depends only on their lengths)."""
    diff = len(a) ^ len(b)
    n = len(a) if len(a) < len(b) else len(b)
    for i in range(n):
        diff |= a[i] ^ b[i]
    return diff == 0


def make_record(pin, salt, iterations=DEFAULT_ITERATIONS):
    """A record for `pin` (str or bytes, 4 to 64 bytes) with `salt` (>= 8 random bytes)."""
    p = _pin_bytes(pin)
    if not MIN_PIN <= len(p) <= MAX_PIN:
        raise ValueError("a PIN has %d to %d characters" % (MIN_PIN, MAX_PIN))
    salt = bytes(salt)
    if len(salt) < MIN_SALT:
        raise ValueError("the salt must be at least %d random bytes" % MIN_SALT)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError("iterations must be 1..%d" % MAX_ITERATIONS)
    dk = _derive(p, salt, iterations)
    return "%s$%d$%s$%s" % (SCHEME, iterations, _hex(salt), _hex(dk))


def parse_record(record):
    """(iterations, salt, derived key) of a record; ValueError when it is malformed."""
    if not isinstance(record, str):
        raise ValueError("a PIN record is a string")
    parts = record.strip().split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError("not a %s$<iterations>$<salt>$<hash> record" % SCHEME)
    if not parts[1].isdigit():
        raise ValueError("iterations is not a number")
    iterations = int(parts[1])
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError("iterations out of range 1..%d" % MAX_ITERATIONS)
    salt = _unhex(parts[2])
    dk = _unhex(parts[3])
    if len(salt) < MIN_SALT or len(dk) != 32:
        raise ValueError("salt shorter than %d bytes or hash not 32 bytes" % MIN_SALT)
    return iterations, salt, dk


def check(pin, record):
    """True when `pin` matches `record`; ValueError when the record is malformed."""
    iterations, salt, dk = parse_record(record)
    p = _pin_bytes(pin)
    if not p or len(p) > MAX_PIN:
        # Still derive once so a wrong-length guess costs the same time as any other.
        p = b"\x00"
        _derive(p, salt, iterations)
        return False
    return equal(_derive(p, salt, iterations), dk)


def _hex(b):
    return binascii.hexlify(b).decode()


def _unhex(s):
    for c in s:
        if c not in "0123456789abcdefABCDEF":
            raise ValueError("not hex: %r" % s[:16])
    if len(s) % 2:
        raise ValueError("odd-length hex")
    return binascii.unhexlify(s)
