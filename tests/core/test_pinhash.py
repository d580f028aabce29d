"""PIN records: PBKDF2-HMAC-SHA256 against fixed vectors and (on CPython) hashlib, on both interpreters."""

import binascii
import hashlib

from mpytest import raises

from pilecore import ecdsa, pinhash

# (password, salt, iterations, dklen, expected hex).  The first is RFC 7914 section 11's
# PBKDF2-HMAC-SHA256 vector; the others were computed with CPython's hashlib.pbkdf2_hmac
# (OpenSSL).  Iteration counts stay tiny so MicroPython runs them in milliseconds.
VECTORS = [
    (
        b"passwd",
        b"salt",
        1,
        64,
        "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
    ),
    (b"password", b"salt", 2, 32, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"),
    (
        b"passwordPASSWORDpassword",
        b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
        50,
        40,
        "7df25f25b926fd83c936ebccfbaf2b78b9a7a3589e9e816c1a65152a95ff97ca6ae07fcc8f11f811",
    ),
    (b"x" * 100, b"NaCl-salt", 3, 20, "a5530712fb5da3229359b3939b361ba72220c475"),
]


def _hex(b):
    return binascii.hexlify(b).decode()


def test_pure_pbkdf2_matches_vectors():
    for pw, salt, c, dklen, want in VECTORS:
        assert _hex(pinhash.pbkdf2_hmac_sha256(pw, salt, c, dklen)) == want, (pw, c)


def test_pure_pbkdf2_matches_hashlib_when_cpython_has_it():
    native = getattr(hashlib, "pbkdf2_hmac", None)
    if native is None:  # MicroPython: the fixed vectors above are the reference
        return
    for n in range(0, 130, 7):  # passwords across the 64-byte HMAC block boundary
        pw = bytes([(i * 37 + n) & 0xFF for i in range(n)])
        salt = bytes([(i * 11) & 0xFF for i in range(8 + n % 9)])
        for c in (1, 2, 5):
            for dklen in (1, 31, 32, 33, 70):
                assert pinhash.pbkdf2_hmac_sha256(pw, salt, c, dklen) == native("sha256", pw, salt, c, dklen)


def test_keyed_prf_is_the_same_hmac_as_ecdsa():
    for klen in (0, 1, 6, 63, 64, 65, 100):
        key = bytes([(i * 7 + 1) & 0xFF for i in range(klen)])
        for msg in (b"", b"abc", b"\x00" * 100):
            assert pinhash._Prf(key).mac(msg) == ecdsa.hmac_sha256(key, msg)
            assert pinhash.hmac_sha256(key, msg) == ecdsa.hmac_sha256(key, msg)


def test_pbkdf2_rejects_nonsense_parameters():
    with raises(ValueError):
        pinhash.pbkdf2_hmac_sha256(b"pw", b"saltsalt", 0)
    with raises(ValueError):
        pinhash.pbkdf2_hmac_sha256(b"pw", b"saltsalt", 1, 0)


def test_record_format_is_the_same_on_both_interpreters():
    rec = pinhash.make_record("246810", bytes(range(16)), 7)
    assert rec == (
        "pbkdf2-sha256$7$000102030405060708090a0b0c0d0e0f$"
        "95cecaf28f5174b11aefc9d6d0167f766df1307bbc3337224076ee111affbf82"
    )
    assert pinhash.parse_record(rec) == (7, bytes(range(16)), binascii.unhexlify(rec.split("$")[3]))


def test_check_accepts_the_pin_and_nothing_else():
    rec = pinhash.make_record("246810", b"0123456789abcdef", 3)
    assert pinhash.check("246810", rec)
    assert pinhash.check(b"246810", rec)
    for wrong in ("246811", "24681", "2468100", "", " 246810", "x" * 65):
        assert not pinhash.check(wrong, rec), wrong


def test_same_pin_different_salt_gives_different_records():
    a = pinhash.make_record("1234", b"saltsalt", 2)
    b = pinhash.make_record("1234", b"saltsalT", 2)
    assert a != b and pinhash.check("1234", a) and pinhash.check("1234", b)


def test_make_record_refuses_weak_inputs():
    with raises(ValueError, match="PIN"):
        pinhash.make_record("123", b"saltsalt", 2)
    with raises(ValueError, match="salt"):
        pinhash.make_record("1234", b"short", 2)
    with raises(ValueError, match="iterations"):
        pinhash.make_record("1234", b"saltsalt", 0)


def test_malformed_records_raise_value_error():
    good = pinhash.make_record("1234", b"saltsalt", 2)
    parts = good.split("$")
    bad = [
        None,
        "",
        "1234",
        "pbkdf2-sha1$2$%s$%s" % (parts[2], parts[3]),
        "pbkdf2-sha256$x$%s$%s" % (parts[2], parts[3]),
        "pbkdf2-sha256$0$%s$%s" % (parts[2], parts[3]),
        "pbkdf2-sha256$-2$%s$%s" % (parts[2], parts[3]),
        "pbkdf2-sha256$99999999$%s$%s" % (parts[2], parts[3]),
        "pbkdf2-sha256$2$zz%s$%s" % (parts[2], parts[3]),
        "pbkdf2-sha256$2$%s$%s" % (parts[2][:-1], parts[3]),
        "pbkdf2-sha256$2$0102$%s" % parts[3],
        "pbkdf2-sha256$2$%s$%s" % (parts[2], parts[3][:-2]),
        good + "$extra",
    ]
    for rec in bad:
        with raises(ValueError):
            pinhash.check("1234", rec)


def test_constant_time_equal_semantics():
    assert pinhash.equal(b"", b"")
    assert pinhash.equal(b"abc", b"abc")
    assert not pinhash.equal(b"abc", b"abd")
    assert not pinhash.equal(b"abc", b"ab")
    assert not pinhash.equal(b"ab", b"abc")
    assert not pinhash.equal(b"\x00", b"")
