"""pilecore.ecdsa on both interpreters: published vectors, round trips, strict parsing.

Known answers come from the RFCs' own text, not from another implementation:
- RFC 6979 appendix A.2.5 (ECDSA, P-256): the key pair and the SHA-256 signatures (with their
  nonces k) for the messages "sample" and "test".  Because RFC 6979 fixes k, these check that
  our deterministic signing reproduces (r, s) exactly, not merely that it verifies.
- RFC 4231 section 4 (HMAC-SHA-256 test cases 1 to 7).
"""

import hashlib

from mpytest import new_key, raises

from pilecore import ecdsa

N = ecdsa.N
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# RFC 6979 A.2.5
RFC_X = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC_UX = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
RFC_UY = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
RFC_SAMPLE_K = 0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60
RFC_SAMPLE_R = 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
RFC_SAMPLE_S = 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8
RFC_TEST_K = 0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0
RFC_TEST_R = 0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367
RFC_TEST_S = 0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083

RFC_PUB = (RFC_UX, RFC_UY)

# A second key for wrong-key checks, derived the way a device derives its key.
OTHER_D = new_key()

# DER SubjectPublicKeyInfo header for id-ecPublicKey + prime256v1 (RFC 5480), written out.
SPKI_HEADER = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


def _key(seed_byte):
    return ecdsa.private_key_from_seed(bytes((seed_byte,)) * 40)


# --- HMAC-SHA256, RFC 4231 -------------------------------------------------------------------

HMAC_CASES = (
    # (case, key, data, HMAC-SHA-256)
    (1, b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (2, b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (3, b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (4, bytes(range(1, 26)), b"\xcd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (
        6,
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        7,
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
)


def test_hmac_sha256_rfc4231_vectors():
    for case, key, data, expected in HMAC_CASES:
        got = ecdsa.hmac_sha256(key, data)
        assert got == bytes.fromhex(expected), "RFC 4231 case %d" % case


def test_hmac_sha256_rfc4231_case5_truncated():
    # Case 5 publishes only the first 128 bits of the tag.
    got = ecdsa.hmac_sha256(b"\x0c" * 20, b"Test With Truncation")
    assert got[:16] == bytes.fromhex("a3b6167473100ee06e0c796c2955552b")
    assert len(got) == 32


# --- RFC 6979 A.2.5 --------------------------------------------------------------------------


def test_public_key_of_rfc6979_private_key():
    assert ecdsa.public_key(RFC_X) == RFC_PUB


def test_rfc6979_nonces_for_sample_and_test():
    for msg, k in ((b"sample", RFC_SAMPLE_K), (b"test", RFC_TEST_K)):
        nonces = ecdsa._nonces(RFC_X, hashlib.sha256(msg).digest())
        assert next(nonces) == k, msg


def test_rfc6979_signature_sample():
    assert ecdsa.sign(RFC_X, b"sample") == (RFC_SAMPLE_R, RFC_SAMPLE_S)
    assert ecdsa.verify(RFC_PUB, b"sample", RFC_SAMPLE_R, RFC_SAMPLE_S)


def test_rfc6979_signature_test():
    # s here is above n/2 for "sample" and below for "test": no low-s normalisation either way.
    assert ecdsa.sign(RFC_X, b"test") == (RFC_TEST_R, RFC_TEST_S)
    assert ecdsa.verify(RFC_PUB, b"test", RFC_TEST_R, RFC_TEST_S)


def test_sign_digest_is_sign_of_the_sha256():
    digest = hashlib.sha256(b"sample").digest()
    assert ecdsa.sign_digest(RFC_X, digest) == (RFC_SAMPLE_R, RFC_SAMPLE_S)
    assert ecdsa.verify_digest(RFC_PUB, digest, RFC_SAMPLE_R, RFC_SAMPLE_S)


# --- sign / verify ---------------------------------------------------------------------------


def test_sign_verify_round_trip_and_determinism():
    d = _key(7)
    pub = ecdsa.public_key(d)
    msg = b'{"seq":1,"pile":"P01","wh":123456}'
    r, s = ecdsa.sign(d, msg)
    assert 0 < r < N and 0 < s < N
    assert ecdsa.verify(pub, msg, r, s)
    assert ecdsa.sign(d, msg) == (r, s)
    assert ecdsa.sign(d, msg + b" ") != (r, s)


def test_verify_accepts_the_high_s_twin():
    # (r, n - s) is the same signature with k negated; ECDSA verifiers accept both.
    assert ecdsa.verify(RFC_PUB, b"sample", RFC_SAMPLE_R, N - RFC_SAMPLE_S)


def test_verify_rejects_tampering_and_wrong_key():
    r, s = RFC_SAMPLE_R, RFC_SAMPLE_S
    assert not ecdsa.verify(RFC_PUB, b"samplE", r, s)
    assert not ecdsa.verify(RFC_PUB, b"sample ", r, s)
    assert not ecdsa.verify(ecdsa.public_key(OTHER_D), b"sample", r, s)
    assert not ecdsa.verify(RFC_PUB, b"sample", r ^ 1, s)
    assert not ecdsa.verify(RFC_PUB, b"sample", r, s ^ 1)
    assert not ecdsa.verify(RFC_PUB, b"test", r, s)  # a valid signature, of another message


def test_verify_rejects_out_of_range_r_and_s():
    r, s = RFC_SAMPLE_R, RFC_SAMPLE_S
    for bad_r, bad_s in ((0, s), (r, 0), (N, s), (r, N), (r + N, s), (r, s + N), (-r, s), (r, -s), (P, s), (2**256, s)):
        assert not ecdsa.verify(RFC_PUB, b"sample", bad_r, bad_s), (bad_r, bad_s)


def test_verify_rejects_bad_public_keys():
    r, s = RFC_SAMPLE_R, RFC_SAMPLE_S
    bad_keys = (
        (RFC_UX, RFC_UY + 1),  # off the curve
        (RFC_UX, RFC_UY + P),  # right residue, out of range
        (RFC_UX + P, RFC_UY),
        (0, 0),  # how some code writes the point at infinity
        None,
        (RFC_UX,),
        (RFC_UX, RFC_UY, 1),
        ("x", "y"),
    )
    for pub in bad_keys:
        assert not ecdsa.verify(pub, b"sample", r, s), pub


def test_digest_length_is_checked():
    with raises(ValueError):
        ecdsa.sign_digest(RFC_X, b"\x00" * 31)
    with raises(ValueError):
        ecdsa.verify_digest(RFC_PUB, b"\x00" * 33, RFC_SAMPLE_R, RFC_SAMPLE_S)


def test_zero_digest_signs_and_verifies():
    # e = 0 makes u1 = 0, so verification adds infinity to u2 * Q.
    d = _key(3)
    digest = b"\x00" * 32
    r, s = ecdsa.sign_digest(d, digest)
    assert ecdsa.verify_digest(ecdsa.public_key(d), digest, r, s)
    assert not ecdsa.verify_digest(ecdsa.public_key(d), b"\x00" * 31 + b"\x01", r, s)


def test_verify_when_both_halves_are_the_same_point():
    # With Q = G (d = 1) and e = r, u1 = u2, so u1*G + u2*Q is a doubling inside verify.
    k = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF
    r = ecdsa.public_key(k)[0] % N
    s = 2 * r * pow(k, N - 2, N) % N  # then w = k / 2r and u1 = u2 = k / 2
    assert ecdsa.verify_digest((GX, GY), r.to_bytes(32, "big"), r, s)
    assert not ecdsa.verify_digest((GX, GY), r.to_bytes(32, "big"), r, (s + 1) % N)


def test_verify_when_the_halves_cancel():
    # e = n - r with Q = G gives u1*G + u2*Q = infinity: never valid.
    r = RFC_SAMPLE_R
    assert not ecdsa.verify_digest((GX, GY), (N - r).to_bytes(32, "big"), r, RFC_SAMPLE_S)


def _signature_with_large_x(digest):
    """A key and signature (Q, r, s) whose R = u1*G + u2*Q has x(R) >= n, so x(R) = r + n.

    Only about 2^-128 of signatures take that branch, so it is built on purpose: take a curve
    point R with x > n, fix s = 1 (then u1 = e, u2 = r) and solve for Q = (R - e*G) / r.
    """
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    x = N + 1
    while True:
        rhs = (x * x * x - 3 * x + b) % P
        y = pow(rhs, (P + 1) // 4, P)  # square root, since p = 3 mod 4
        if y * y % P == rhs:
            break
        x += 1
    r = x - N
    e = int.from_bytes(digest, "big") % N
    ex, ey = ecdsa.public_key(e)
    tx, ty = ecdsa._to_affine(*ecdsa._add(x, y, 1, ex, P - ey, 1))
    q = ecdsa._to_affine(*ecdsa._mul_point(tx, ty, pow(r, N - 2, N)))
    return q, r, 1


def test_verify_when_x_of_r_exceeds_n():
    digest = hashlib.sha256(b"x(R) >= n").digest()
    q, r, s = _signature_with_large_x(digest)
    assert ecdsa.verify_digest(q, digest, r, s)
    assert not ecdsa.verify_digest(q, digest, r + 1, s)


def test_point_addition_special_cases():
    x, y = ecdsa.public_key(5)
    assert ecdsa._to_affine(*ecdsa._add_affine(x, y, 1, x, y)) == ecdsa.public_key(10)
    assert ecdsa._add_affine(x, y, 1, x, P - y)[2] == 0
    assert ecdsa._to_affine(*ecdsa._add(x, y, 1, x, y, 1)) == ecdsa.public_key(10)
    assert ecdsa._add(x, y, 1, x, P - y, 1)[2] == 0


def test_order_of_g():
    # (n - 1) * G = -G, and n * G, computed as (n-1)G + G, is infinity.
    x, y = ecdsa.public_key(N - 1)
    assert (x, y) == (GX, P - GY)
    assert ecdsa._add_affine(x, y, 1, GX, GY)[2] == 0


# --- keys ------------------------------------------------------------------------------------


def test_private_key_from_seed():
    with raises(ValueError):
        ecdsa.private_key_from_seed(b"\x01" * 39)
    # d = (seed mod (n-1)) + 1: the ends of the range map to 1 and n-1.
    assert ecdsa.private_key_from_seed((N - 1).to_bytes(40, "big")) == 1
    assert ecdsa.private_key_from_seed((N - 2).to_bytes(40, "big")) == N - 1
    assert ecdsa.private_key_from_seed(b"\x00" * 40) == 1
    assert ecdsa.private_key_from_seed(b"\x00" * 39 + b"\x05") == 6
    d = ecdsa.private_key_from_seed(b"\xff" * 48)
    assert 0 < d < N


def test_public_key_rejects_bad_private_keys():
    for d in (0, N, N + 1, -1):
        with raises(ValueError):
            ecdsa.public_key(d)
        with raises(ValueError):
            ecdsa.sign(d, b"x")


def test_small_private_keys():
    assert ecdsa.public_key(1) == (GX, GY)
    x2, y2 = ecdsa.public_key(2)
    assert ecdsa._to_affine(*ecdsa._double(GX, GY, 1)) == (x2, y2)


def test_private_key_bytes_round_trip():
    raw = ecdsa.private_key_bytes(RFC_X)
    assert raw == RFC_X.to_bytes(32, "big")
    assert ecdsa.private_key_from_bytes(raw) == RFC_X
    assert ecdsa.private_key_bytes(1) == b"\x00" * 31 + b"\x01"
    assert ecdsa.private_key_from_bytes((N - 1).to_bytes(32, "big")) == N - 1


def test_private_key_bytes_rejections():
    for bad in (b"\x00" * 32, N.to_bytes(32, "big"), b"\xff" * 32, b"\x01" * 31, b"\x01" * 33):
        with raises(ValueError):
            ecdsa.private_key_from_bytes(bad)
    for d in (0, N):
        with raises(ValueError):
            ecdsa.private_key_bytes(d)


# --- signature encodings ---------------------------------------------------------------------


def test_sig_raw_round_trip():
    raw = ecdsa.sig_raw(RFC_SAMPLE_R, RFC_SAMPLE_S)
    assert raw == RFC_SAMPLE_R.to_bytes(32, "big") + RFC_SAMPLE_S.to_bytes(32, "big")
    assert ecdsa.parse_sig_raw(raw) == (RFC_SAMPLE_R, RFC_SAMPLE_S)
    # s of "test" starts with 0x01: the raw form keeps its leading zero byte.
    raw = ecdsa.sig_raw(RFC_TEST_R, RFC_TEST_S)
    assert len(raw) == 64 and raw[32] == 0x01
    assert ecdsa.parse_sig_raw(bytearray(raw)) == (RFC_TEST_R, RFC_TEST_S)


def test_sig_raw_rejections():
    for bad in (b"\x01" * 63, b"\x01" * 65, b""):
        with raises(ValueError):
            ecdsa.parse_sig_raw(bad)
    for r, s in ((0, 1), (1, 0), (N, 1), (1, N)):
        with raises(ValueError):
            ecdsa.sig_raw(r, s)


def test_sig_der_encoding_of_rfc_sample():
    # Both halves have the top bit set, so each INTEGER needs a leading 00.
    expected = (
        b"\x30\x46\x02\x21\x00" + RFC_SAMPLE_R.to_bytes(32, "big") + b"\x02\x21\x00" + RFC_SAMPLE_S.to_bytes(32, "big")
    )
    der = ecdsa.sig_der(RFC_SAMPLE_R, RFC_SAMPLE_S)
    assert der == expected
    assert ecdsa.parse_sig_der(der) == (RFC_SAMPLE_R, RFC_SAMPLE_S)


def test_sig_der_minimal_integers():
    assert ecdsa.sig_der(1, 0x80) == b"\x30\x07\x02\x01\x01\x02\x02\x00\x80"
    assert ecdsa.sig_der(0x7F, 0x0100) == b"\x30\x07\x02\x01\x7f\x02\x02\x01\x00"
    # s of "test" is 0x019F...: 32 bytes, no padding.
    der = ecdsa.sig_der(RFC_TEST_R, RFC_TEST_S)
    assert der[:5] == b"\x30\x45\x02\x21\x00" and der[37:39] == b"\x02\x20"
    assert ecdsa.parse_sig_der(der) == (RFC_TEST_R, RFC_TEST_S)
    for r, s in ((1, 1), (N - 1, N - 1), (0x80, 0xFF00)):
        assert ecdsa.parse_sig_der(ecdsa.sig_der(r, s)) == (r, s)


def test_parse_sig_der_rejections():
    good = ecdsa.sig_der(RFC_SAMPLE_R, RFC_SAMPLE_S)
    bad = (
        b"",
        b"\x30",
        good + b"\x00",  # trailing byte after the SEQUENCE
        good[:-1],  # truncated
        b"\x31" + good[1:],  # SET, not SEQUENCE
        b"\x30\x47" + good[2:],  # SEQUENCE length too long
        b"\x30\x45" + good[2:],  # SEQUENCE length too short
        b"\x30\x81\x46" + good[2:],  # long form where short form is required
        b"\x30\x06\x02\x01\x01\x02\x01\x80",  # negative s
        b"\x30\x06\x02\x01\x81\x02\x01\x01",  # negative r
        b"\x30\x07\x02\x02\x00\x01\x02\x01\x01",  # non-minimal r (needless 00)
        b"\x30\x07\x02\x01\x01\x02\x02\xff\x80",  # non-minimal negative s
        b"\x30\x05\x02\x00\x02\x01\x01",  # empty INTEGER
        b"\x30\x06\x03\x01\x01\x02\x01\x01",  # BIT STRING, not INTEGER
        b"\x30\x03\x02\x01\x01",  # only one INTEGER
        b"\x30\x09\x02\x01\x01\x02\x01\x01\x02\x01\x01",  # three INTEGERs
        b"\x30\x06\x02\x05\x01\x02\x01\x01",  # INTEGER runs past the SEQUENCE
        b"\x30\x27\x02\x22\x01" + b"\x00" * 33 + b"\x02\x01\x01",  # 34-byte INTEGER
    )
    for b in bad:
        with raises(ValueError):
            ecdsa.parse_sig_der(b)
    with raises(ValueError):
        ecdsa.sig_der(0, 1)


# --- public key encodings --------------------------------------------------------------------


def test_point_bytes_round_trip():
    raw = ecdsa.point_bytes(RFC_PUB)
    assert raw == b"\x04" + RFC_UX.to_bytes(32, "big") + RFC_UY.to_bytes(32, "big")
    assert ecdsa.parse_point(raw) == RFC_PUB


def test_point_rejections():
    raw = ecdsa.point_bytes(RFC_PUB)
    y_plus_one = (RFC_UY + 1).to_bytes(32, "big")
    bad = (
        raw[:-1],
        raw + b"\x00",
        b"\x02" + raw[1:33],  # compressed: not supported
        b"\x03" + raw[1:],
        raw[:33] + y_plus_one,  # off the curve
        b"\x04" + b"\x00" * 64,
        b"\x04" + P.to_bytes(32, "big") + raw[33:],  # x out of range
    )
    for b in bad:
        with raises(ValueError):
            ecdsa.parse_point(b)
    with raises(ValueError):
        ecdsa.point_bytes((RFC_UX, RFC_UY + 1))


def test_spki_der_layout_and_round_trip():
    der = ecdsa.spki_der(RFC_PUB)
    assert len(der) == 91
    assert der == SPKI_HEADER + ecdsa.point_bytes(RFC_PUB)
    assert ecdsa.parse_spki_der(der) == RFC_PUB


def test_parse_spki_der_rejections():
    der = ecdsa.spki_der(RFC_PUB)
    bad = (
        der + b"\x00",
        der[:-1],
        der[:12] + b"\x02" + der[13:],  # algorithm OID 1.2.840.10045.2.2, not id-ecPublicKey
        der[:22] + b"\x08" + der[23:],  # curve OID 1.2.840.10045.3.1.8, not prime256v1
        der[:25] + b"\x01" + der[26:],  # BIT STRING with unused bits
        der[:26] + b"\x02" + der[27:],  # compressed marker in an uncompressed-size point
        der[:-1] + bytes(((der[-1] + 1) & 0xFF,)),  # point off the curve
        b"",
    )
    for b in bad:
        with raises(ValueError):
            ecdsa.parse_spki_der(b)


def test_spki_pem_shape_and_round_trip():
    pem = ecdsa.spki_pem(RFC_PUB)
    lines = pem.split("\n")
    assert lines[0] == "-----BEGIN PUBLIC KEY-----"
    assert lines[-2] == "-----END PUBLIC KEY-----" and lines[-1] == ""
    assert [len(line) for line in lines[1:-2]] == [64, 60]  # 91 bytes -> 124 base64 chars
    assert ecdsa.parse_spki_pem(pem) == RFC_PUB
    assert ecdsa.parse_spki_pem(pem.encode()) == RFC_PUB
    assert ecdsa.parse_spki_pem(pem.replace("\n", "\r\n")) == RFC_PUB
    assert ecdsa.parse_spki_pem("\n  " + pem + "\n\n") == RFC_PUB
    rewrapped = "\n".join([lines[0], lines[1] + lines[2], lines[-2]])
    assert ecdsa.parse_spki_pem(rewrapped) == RFC_PUB


def test_parse_spki_pem_rejections():
    pem = ecdsa.spki_pem(RFC_PUB)
    lines = pem.split("\n")
    bad = (
        "",
        pem.replace("PUBLIC KEY", "PRIVATE KEY"),
        "\n".join(lines[:-2]),  # no END line
        "junk\n" + pem,
        pem + "junk\n",
        "\n".join([lines[0], lines[1][:-1] + "*", lines[2], lines[3]]),  # stray character
        "\n".join([lines[0], lines[1], lines[2][:-2], lines[3]]),  # padding cut off
        "\n".join([lines[0], lines[1], lines[2][:-3] + "R==", lines[3]]),  # non-canonical pad
        "\n".join([lines[0], lines[3]]),  # empty body
        "\n".join([lines[0], lines[1], lines[3]]),  # truncated DER
    )
    for text in bad:
        with raises(ValueError):
            ecdsa.parse_spki_pem(text)
