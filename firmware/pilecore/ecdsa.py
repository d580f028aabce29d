"""ECDSA over NIST P-256 (secp256r1) with SHA-256, deterministic nonces per RFC 6979.

This is the signature scheme JWS calls ES256.  The ESP32 signs every telemetry message with it
and verifies the platform's downlink commands with it; the Raspberry Pi port may use it too,
and the tests check it against `cryptography` byte for byte.

Values: private keys and the signature halves r, s are ints; a public key is a tuple (x, y) of
ints (affine coordinates); everything else is bytes (PEM is str).

Contracts:
- The core never reads randomness.  `private_key_from_seed` turns >= 40 random bytes supplied
  by the port into a key (FIPS 186-4 B.4.1: d = (seed mod (n-1)) + 1).  Signing needs no
  randomness at all: the nonce k is derived from the key and the digest (RFC 6979, HMAC-SHA256),
  so the same key and message always give the same signature.
- s is returned exactly as RFC 6979 / FIPS 186-4 produce it: no "low-s" normalisation.  This
  keeps the RFC 6979 test vectors exact.  Verifiers (ours, OpenSSL, `cryptography`) accept
  both s and n - s; nothing downstream may rely on s <= n/2.
- `verify`/`verify_digest` return False for any signature or key that is not valid (r or s
  outside [1, n-1], a point off the curve or not a pair of ints); they raise ValueError only
  for a digest that is not 32 bytes, which is a caller bug, not an attack.
- Parsers (`parse_*`) are strict and raise ValueError on anything that is not the one canonical
  encoding.  Encoders raise ValueError for values out of range.

Side channels: Python bigint arithmetic is not constant-time, and neither is this code.  It is
fit for a device whose attacker is on the network, not one with an oscilloscope on the board.

Speed: Jacobian coordinates with the a = -3 doubling, mixed (Jacobian + affine) additions, one
field inversion per scalar multiplication via pow(z, p-2, p).  k*G uses a 6-tooth comb over a
63-point table of multiples of G, built on first use (not at import: about 8 KB on the ESP32);
verification adds a fixed 4-bit window over a 15-point table of the public key built per call.
"""

import binascii
import hashlib

# Curve parameters (SEC 2 / FIPS 186-4 D.1.2.3).  y^2 = x^3 - 3x + b over GF(p).
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # order of G
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# Comb for k*G: tooth i of column j is bit (i * _SPACING + j) of k; 6 * 43 >= 256.
_TEETH = 6
_SPACING = 43
_comb = None  # (xs, ys): affine multiples of G, built by _g_comb() on first use

# SubjectPublicKeyInfo for an uncompressed P-256 key is this fixed 26-byte DER header
# (SEQUENCE { SEQUENCE { OID id-ecPublicKey, OID prime256v1 }, BIT STRING (0 unused bits) })
# followed by the 65-byte SEC1 point.  DER has one encoding per value, so comparing the header
# byte for byte is the strict parse.
_SPKI_HEADER = (
    b"\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00"
)
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"


# ---------------------------------------------------------------------------------------------
# HMAC-SHA256 (RFC 2104), written out because the ESP32 build may lack the hmac module.


def hmac_sha256(key, msg):
    """HMAC-SHA256 of `msg` under `key` (both bytes-like); returns 32 bytes."""
    key = bytes(key)
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


# ---------------------------------------------------------------------------------------------
# Point arithmetic.  Jacobian (X, Y, Z) stands for (X/Z^2, Y/Z^3); Z == 0 is the point at
# infinity.  All coordinates are kept reduced mod p between calls.


def _on_curve(x, y):
    """True when (x, y) is a pair of ints in [0, p) satisfying the curve equation."""
    p = _P
    if not (isinstance(x, int) and isinstance(y, int)):
        return False
    if not (0 <= x < p and 0 <= y < p):
        return False
    return (y * y - (x * x * x - 3 * x + _B)) % p == 0


def _double(X, Y, Z):
    """2 * (X, Y, Z) using the a = -3 shortcut (dbl-2001-b)."""
    if not Z:
        return X, Y, Z
    p = _P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = (X - delta) * (X + delta) * 3 % p
    X3 = (alpha * alpha - (beta << 3)) % p
    Z3 = (Y * Z << 1) % p
    Y3 = (alpha * ((beta << 2) - X3) - (gamma * gamma << 3)) % p
    return X3, Y3, Z3


def _add_affine(X1, Y1, Z1, x2, y2):
    """(X1, Y1, Z1) + (x2, y2), the second point affine and finite."""
    if not Z1:
        return x2, y2, 1
    p = _P
    z1z1 = Z1 * Z1 % p
    h = (x2 * z1z1 - X1) % p
    r = (y2 * Z1 * z1z1 - Y1) % p
    if not h:
        # Same x: either the same point (double it) or its negation (sum is infinity).
        if not r:
            return _double(X1, Y1, Z1)
        return 0, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = X1 * hh % p
    X3 = (r * r - hhh - (v << 1)) % p
    Y3 = (r * (v - X3) - Y1 * hhh) % p
    return X3, Y3, Z1 * h % p


def _add(X1, Y1, Z1, X2, Y2, Z2):
    """(X1, Y1, Z1) + (X2, Y2, Z2), both Jacobian; handles infinity and equal points."""
    if not Z1:
        return X2, Y2, Z2
    if not Z2:
        return X1, Y1, Z1
    p = _P
    z1z1 = Z1 * Z1 % p
    z2z2 = Z2 * Z2 % p
    u1 = X1 * z2z2 % p
    s1 = Y1 * Z2 * z2z2 % p
    h = (X2 * z1z1 - u1) % p
    r = (Y2 * Z1 * z1z1 - s1) % p
    if not h:
        if not r:
            return _double(X1, Y1, Z1)
        return 0, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    X3 = (r * r - hhh - (v << 1)) % p
    Y3 = (r * (v - X3) - s1 * hhh) % p
    return X3, Y3, Z1 * Z2 * h % p


def _to_affine(X, Y, Z):
    """Affine (x, y) of a finite Jacobian point."""
    p = _P
    zi = pow(Z, p - 2, p)
    zi2 = zi * zi % p
    return X * zi2 % p, Y * zi2 * zi % p


def _to_affine_many(points):
    """Affine xs, ys of finite Jacobian points with one inversion (Montgomery's trick)."""
    p = _P
    m = len(points)
    prefix = [0] * m
    acc = 1
    for i in range(m):
        acc = acc * points[i][2] % p
        prefix[i] = acc
    inv = pow(acc, p - 2, p)  # 1 / (Z_0 * ... * Z_{m-1})
    xs = [0] * m
    ys = [0] * m
    for i in range(m - 1, -1, -1):
        X, Y, Z = points[i]
        zi = inv * prefix[i - 1] % p if i else inv
        inv = inv * Z % p  # now 1 / (Z_0 * ... * Z_{i-1})
        zi2 = zi * zi % p
        xs[i] = X * zi2 % p
        ys[i] = Y * zi2 * zi % p
    return xs, ys


def _g_comb():
    """The comb table for G: entry m = sum of 2^(43 i) G over the bits i set in m (1..63).

    Built once, on first use.  No entry is infinity: every scalar is in [1, 2^216) < n.
    """
    global _comb
    if _comb is None:
        bases = [(_GX, _GY, 1)]
        X, Y, Z = _GX, _GY, 1
        for _ in range(_TEETH - 1):
            for _ in range(_SPACING):
                X, Y, Z = _double(X, Y, Z)
            bases.append((X, Y, Z))
        bx, by = _to_affine_many(bases)
        size = 1 << _TEETH
        points = [None] * size
        points[0] = (0, 1, 0)
        for m in range(1, size):
            top = 0
            while m >> (top + 1):
                top += 1
            X, Y, Z = points[m ^ (1 << top)]
            points[m] = _add_affine(X, Y, Z, bx[top], by[top])
        xs, ys = _to_affine_many(points[1:])
        # Index by m directly; slot 0 is never read (a zero column adds nothing).
        _comb = ([0] + xs, [0] + ys)
    return _comb


def _mul_g(k):
    """k * G as a Jacobian point, 0 <= k < 2^256."""
    xs, ys = _g_comb()
    kb = k.to_bytes(33, "big")  # bit i lives in kb[32 - (i >> 3)]; bits 256..257 are zero
    X, Y, Z = 0, 1, 0
    for j in range(_SPACING - 1, -1, -1):
        X, Y, Z = _double(X, Y, Z)
        m = 0
        pos = j + (_TEETH - 1) * _SPACING
        while pos >= 0:
            m = (m << 1) | ((kb[32 - (pos >> 3)] >> (pos & 7)) & 1)
            pos -= _SPACING
        if m:
            X, Y, Z = _add_affine(X, Y, Z, xs[m], ys[m])
    return X, Y, Z


def _mul_point(x, y, k):
    """k * (x, y) as a Jacobian point, 0 <= k < 2^256, (x, y) on the curve (order n)."""
    # Table of j * Q for j = 1..15 (slot j-1), made affine so the main loop uses mixed adds.
    points = [(x, y, 1)]
    X, Y, Z = _double(x, y, 1)
    points.append((X, Y, Z))
    for _ in range(13):
        X, Y, Z = _add_affine(X, Y, Z, x, y)
        points.append((X, Y, Z))
    xs, ys = _to_affine_many(points)
    X, Y, Z = 0, 1, 0
    for byte in k.to_bytes(32, "big"):
        for nibble in (byte >> 4, byte & 15):
            if Z:
                X, Y, Z = _double(X, Y, Z)
                X, Y, Z = _double(X, Y, Z)
                X, Y, Z = _double(X, Y, Z)
                X, Y, Z = _double(X, Y, Z)
            if nibble:
                X, Y, Z = _add_affine(X, Y, Z, xs[nibble - 1], ys[nibble - 1])
    return X, Y, Z


# ---------------------------------------------------------------------------------------------
# Keys


def _check_private(d):
    if not isinstance(d, int) or not 0 < d < N:
        raise ValueError("private key must be an int in [1, n-1]")


def _check_public(pub):
    if not _valid_public(pub):
        raise ValueError("public key is not a point on P-256")


def _valid_public(pub):
    if not isinstance(pub, (tuple, list)) or len(pub) != 2:
        return False
    return _on_curve(pub[0], pub[1])


def private_key_from_seed(seed):
    """Private key from >= 40 random bytes (FIPS 186-4 B.4.1): d = (seed mod (n-1)) + 1.

    The 64 extra bits beyond n's 256 make the bias of the reduction negligible.  Raises
    ValueError for a shorter seed.
    """
    if len(seed) < 40:
        raise ValueError("seed must be at least 40 bytes, got %d" % len(seed))
    return int.from_bytes(bytes(seed), "big") % (N - 1) + 1


def public_key(d):
    """Public key (x, y) = d * G of private key d."""
    _check_private(d)
    X, Y, Z = _mul_g(d)
    return _to_affine(X, Y, Z)


def private_key_bytes(d):
    """The 32-byte big-endian encoding of private key d (how the ESP32 stores it)."""
    _check_private(d)
    return d.to_bytes(32, "big")


def private_key_from_bytes(b):
    """Private key from its 32-byte big-endian encoding; ValueError unless 1 <= d < n."""
    if len(b) != 32:
        raise ValueError("private key must be 32 bytes, got %d" % len(b))
    d = int.from_bytes(bytes(b), "big")
    if not 0 < d < N:
        raise ValueError("private key out of range")
    return d


# ---------------------------------------------------------------------------------------------
# Signing and verification


def _nonces(d, digest):
    """RFC 6979 section 3.2 nonce candidates k for key d and a 32-byte digest, in order.

    For P-256 with SHA-256 qlen = hlen = 256, so bits2int is a plain conversion and one HMAC
    output fills T.  The caller takes the first k that yields a valid (r, s).
    """
    x = d.to_bytes(32, "big")
    h = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")  # bits2octets(h1)
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = hmac_sha256(k, v + b"\x00" + x + h)
    v = hmac_sha256(k, v)
    k = hmac_sha256(k, v + b"\x01" + x + h)
    v = hmac_sha256(k, v)
    while True:
        v = hmac_sha256(k, v)
        candidate = int.from_bytes(v, "big")
        if 0 < candidate < N:
            yield candidate
        k = hmac_sha256(k, v + b"\x00")
        v = hmac_sha256(k, v)


def sign_digest(d, digest):
    """ECDSA signature (r, s) of a 32-byte SHA-256 digest under private key d (RFC 6979 k).

    s is not normalised to the low half (see the module docstring).
    """
    _check_private(d)
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes, got %d" % len(digest))
    digest = bytes(digest)
    e = int.from_bytes(digest, "big")
    for k in _nonces(d, digest):
        X, Y, Z = _mul_g(k)
        r = _to_affine(X, Y, Z)[0] % N
        if not r:
            continue
        s = pow(k, N - 2, N) * (e + r * d) % N
        if s:
            return r, s


def sign(d, msg):
    """ES256: ECDSA signature (r, s) of SHA-256(msg) under private key d (RFC 6979 k)."""
    return sign_digest(d, hashlib.sha256(msg).digest())


def verify_digest(pub, digest, r, s):
    """True when (r, s) is a valid signature of the 32-byte digest under public key pub.

    False for r or s outside [1, n-1] and for a pub that is not a finite point on the curve.
    ValueError when digest is not 32 bytes.
    """
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes, got %d" % len(digest))
    if not (isinstance(r, int) and isinstance(s, int) and 0 < r < N and 0 < s < N):
        return False
    if not _valid_public(pub):
        return False
    e = int.from_bytes(bytes(digest), "big")
    w = pow(s, N - 2, N)
    X1, Y1, Z1 = _mul_g(e * w % N)
    X2, Y2, Z2 = _mul_point(pub[0], pub[1], r * w % N)
    X, _, Z = _add(X1, Y1, Z1, X2, Y2, Z2)
    if not Z:
        return False
    # The signature is valid when x(R) mod n == r.  x(R) = X / Z^2 lies in [0, p) and p < 2n,
    # so x(R) is r or r + n: compare in Jacobian form and skip the field inversion.
    p = _P
    zz = Z * Z % p
    if r * zz % p == X:
        return True
    return r + N < p and (r + N) * zz % p == X


def verify(pub, msg, r, s):
    """True when (r, s) is a valid ES256 signature of msg under public key pub."""
    return verify_digest(pub, hashlib.sha256(msg).digest(), r, s)


# ---------------------------------------------------------------------------------------------
# Encodings


def _check_sig(r, s):
    for v in (r, s):
        if not isinstance(v, int) or not 0 < v < N:
            raise ValueError("signature values must be ints in [1, n-1]")


def sig_raw(r, s):
    """The 64-byte r || s encoding (JWS ES256)."""
    _check_sig(r, s)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def parse_sig_raw(b):
    """(r, s) from a 64-byte r || s; ValueError on any other length.  Ranges are verify's job."""
    if len(b) != 64:
        raise ValueError("raw signature must be 64 bytes, got %d" % len(b))
    b = bytes(b)
    return int.from_bytes(b[:32], "big"), int.from_bytes(b[32:], "big")


def _der_int(v):
    body = v.to_bytes(33, "big")  # the leading zero keeps the top bit clear (positive)
    i = 0
    while i < 32 and body[i] == 0 and body[i + 1] < 0x80:
        i += 1
    return b"\x02" + bytes((33 - i,)) + body[i:]


def sig_der(r, s):
    """The DER encoding SEQUENCE { INTEGER r, INTEGER s } (X.509, OCMF)."""
    _check_sig(r, s)
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes((len(body),)) + body


def _parse_der_int(b, pos):
    if pos + 2 > len(b) or b[pos] != 0x02:
        raise ValueError("DER: expected INTEGER at offset %d" % pos)
    length = b[pos + 1]
    start = pos + 2
    end = start + length
    if length == 0 or length > 33 or end > len(b):
        raise ValueError("DER: bad INTEGER length at offset %d" % pos)
    if b[start] & 0x80:
        raise ValueError("DER: negative INTEGER at offset %d" % pos)
    if length > 1 and b[start] == 0 and b[start + 1] < 0x80:
        raise ValueError("DER: non-minimal INTEGER at offset %d" % pos)
    return int.from_bytes(b[start:end], "big"), end


def parse_sig_der(b):
    """(r, s) from a DER SEQUENCE of two INTEGERs, strictly.

    ValueError on trailing bytes, long-form or wrong lengths (a valid P-256 signature body is
    at most 70 bytes, so DER always uses the short form), negative or non-minimal integers and
    integers longer than 33 bytes.  Ranges are verify's job.
    """
    b = bytes(b)
    if len(b) < 2 or b[0] != 0x30:
        raise ValueError("DER: expected SEQUENCE")
    if b[1] & 0x80:
        raise ValueError("DER: long-form length")
    if b[1] != len(b) - 2:
        raise ValueError("DER: SEQUENCE length %d, %d bytes follow" % (b[1], len(b) - 2))
    r, pos = _parse_der_int(b, 2)
    s, pos = _parse_der_int(b, pos)
    if pos != len(b):
        raise ValueError("DER: trailing bytes inside SEQUENCE")
    return r, s


def point_bytes(pub):
    """The 65-byte uncompressed SEC1 encoding 04 || x || y of a public key."""
    _check_public(pub)
    return b"\x04" + pub[0].to_bytes(32, "big") + pub[1].to_bytes(32, "big")


def parse_point(b):
    """(x, y) from a 65-byte uncompressed SEC1 point; ValueError unless it is on the curve."""
    if len(b) != 65 or b[0] != 0x04:
        raise ValueError("point must be 65 bytes, uncompressed (04 || x || y)")
    b = bytes(b)
    x = int.from_bytes(b[1:33], "big")
    y = int.from_bytes(b[33:], "big")
    if not _on_curve(x, y):
        raise ValueError("point is not on P-256")
    return x, y


def spki_der(pub):
    """SubjectPublicKeyInfo DER (id-ecPublicKey, prime256v1, uncompressed point): 91 bytes."""
    return _SPKI_HEADER + point_bytes(pub)


def parse_spki_der(b):
    """(x, y) from a P-256 SubjectPublicKeyInfo DER; ValueError for anything else.

    Only the named-curve prime256v1 form with an uncompressed point is accepted.
    """
    b = bytes(b)
    if len(b) != 91 or b[:26] != _SPKI_HEADER:
        raise ValueError("not a P-256 SubjectPublicKeyInfo with an uncompressed point")
    return parse_point(b[26:])


def _b64(data):
    out = binascii.b2a_base64(data)  # MicroPython: no newline= argument
    if out[-1:] == b"\n":
        out = out[:-1]
    return out


def spki_pem(pub):
    """PEM "PUBLIC KEY" text of spki_der(pub): base64 lines of 64 chars, ending in newline."""
    body = _b64(spki_der(pub)).decode()
    lines = [_PEM_BEGIN]
    for i in range(0, len(body), 64):
        lines.append(body[i : i + 64])
    lines.append(_PEM_END)
    return "\n".join(lines) + "\n"


def parse_spki_pem(text):
    """(x, y) from PEM "PUBLIC KEY" text (str or bytes).

    Accepts exactly one BEGIN/END PUBLIC KEY block with only whitespace around it, CRLF or LF
    line ends and any line wrapping; the base64 must be canonical (re-encoding gives it back,
    so stray characters and bad padding are refused).  ValueError otherwise.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode()
    lines = [line.strip() for line in text.replace("\r", "").strip().split("\n")]
    if len(lines) < 3 or lines[0] != _PEM_BEGIN or lines[-1] != _PEM_END:
        raise ValueError("PEM: expected one BEGIN/END PUBLIC KEY block")
    body = "".join(lines[1:-1]).encode()
    try:
        der = binascii.a2b_base64(body)
    except Exception:  # CPython: binascii.Error; MicroPython builds differ
        raise ValueError("PEM: invalid base64")
    if _b64(der) != body:
        raise ValueError("PEM: non-canonical base64")
    return parse_spki_der(der)
