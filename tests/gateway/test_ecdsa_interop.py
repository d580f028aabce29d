"""pilecore.ecdsa against `cryptography` (OpenSSL): signatures and key encodings interoperate.

The platform verifies device telemetry with whatever ECDSA library it has, and the device
verifies platform commands signed by one; these tests stand in for both sides.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ecdsa import _signature_with_large_x

from pilecore import ecdsa

N = ecdsa.N
ES256 = ec.ECDSA(hashes.SHA256())

# Private keys spanning the range, including its ends.
KEYS = [
    1,
    2,
    N - 1,
    N // 2,
    0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721,
    ecdsa.private_key_from_seed(b"\x00" * 40),
    ecdsa.private_key_from_seed(bytes(range(40))),
    ecdsa.private_key_from_seed(b"\xff" * 64),
]
MESSAGES = [b"", b"sample", b'{"seq":42,"pile":"P07","wh":9876543}', bytes(range(256)) * 4]

seeds = st.binary(min_size=40, max_size=64)
messages = st.binary(max_size=300)


def crypto_key(d: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(d, ec.SECP256R1())


def crypto_pub(pub: tuple[int, int]) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicNumbers(pub[0], pub[1], ec.SECP256R1()).public_key()


def crypto_verifies(pub: tuple[int, int], der: bytes, msg: bytes) -> bool:
    try:
        crypto_pub(pub).verify(der, msg, ES256)
    except InvalidSignature:
        return False
    return True


@pytest.mark.parametrize("d", KEYS)
def test_public_key_matches_cryptography(d: int) -> None:
    numbers = crypto_key(d).public_key().public_numbers()
    assert ecdsa.public_key(d) == (numbers.x, numbers.y)


@pytest.mark.parametrize("d", KEYS)
def test_pilecore_signatures_verify_with_cryptography(d: int) -> None:
    pub = ecdsa.public_key(d)
    for msg in MESSAGES:
        r, s = ecdsa.sign(d, msg)
        assert crypto_verifies(pub, ecdsa.sig_der(r, s), msg)
        # The JWS form, converted to DER by cryptography's own encoder.
        raw = ecdsa.sig_raw(r, s)
        assert len(raw) == 64
        assert crypto_verifies(pub, encode_dss_signature(*ecdsa.parse_sig_raw(raw)), msg)
        assert not crypto_verifies(pub, ecdsa.sig_der(r, s), msg + b"!")


@pytest.mark.parametrize("d", KEYS)
def test_cryptography_signatures_verify_with_pilecore(d: int) -> None:
    key = crypto_key(d)
    pub = ecdsa.public_key(d)
    for msg in MESSAGES:
        der = key.sign(msg, ES256)  # randomised k
        r, s = ecdsa.parse_sig_der(der)
        assert (r, s) == decode_dss_signature(der)
        assert ecdsa.sig_der(r, s) == der
        assert ecdsa.verify(pub, msg, r, s)
        assert not ecdsa.verify(pub, msg + b"!", r, s)
        digest = hashlib.sha256(msg).digest()
        assert ecdsa.verify_digest(pub, digest, r, s)


@pytest.mark.skipif(
    not openssl_backend.ecdsa_deterministic_supported(),
    reason="this OpenSSL has no RFC 6979 signing to compare with",
)
@pytest.mark.parametrize("d", KEYS)
def test_deterministic_signatures_equal_openssl_rfc6979(d: int) -> None:
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    for msg in MESSAGES:
        expected = decode_dss_signature(crypto_key(d).sign(msg, algorithm))
        assert ecdsa.sign(d, msg) == expected


def test_rare_x_of_r_above_n_case_agrees_with_cryptography() -> None:
    # The crafted signature from the core tests: OpenSSL must accept it too, which shows the
    # construction (and so pilecore's r + n branch) is right, not just self-consistent.
    digest = hashlib.sha256(b"x(R) >= n").digest()
    q, r, s = _signature_with_large_x(digest)
    crypto_pub(q).verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert ecdsa.verify_digest(q, digest, r, s)


@pytest.mark.parametrize("d", KEYS)
def test_spki_matches_cryptography(d: int) -> None:
    pub = ecdsa.public_key(d)
    crypto = crypto_key(d).public_key()
    der = crypto.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = crypto.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ecdsa.spki_der(pub) == der
    assert ecdsa.spki_pem(pub) == pem.decode()
    assert ecdsa.parse_spki_der(der) == pub
    assert ecdsa.parse_spki_pem(pem.decode()) == pub
    point = crypto.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert ecdsa.point_bytes(pub) == point
    assert ecdsa.parse_point(point) == pub


def test_pilecore_pem_loads_in_cryptography() -> None:
    d = KEYS[4]
    loaded = serialization.load_pem_public_key(ecdsa.spki_pem(ecdsa.public_key(d)).encode())
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    assert loaded.public_numbers() == crypto_key(d).public_key().public_numbers()


def test_private_key_bytes_match_cryptography() -> None:
    for d in KEYS:
        value = crypto_key(d).private_numbers().private_value
        assert ecdsa.private_key_from_bytes(value.to_bytes(32, "big")) == d
        assert ecdsa.private_key_bytes(d) == value.to_bytes(32, "big")


def test_compressed_spki_from_cryptography_is_refused() -> None:
    compressed = (
        crypto_key(KEYS[4])
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    with pytest.raises(ValueError):
        ecdsa.parse_point(compressed)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, msg=messages)
def test_random_keys_and_messages_interoperate(seed: bytes, msg: bytes) -> None:
    d = ecdsa.private_key_from_seed(seed)
    assert 0 < d < N
    pub = ecdsa.public_key(d)
    key = crypto_key(d)
    assert pub == (key.public_key().public_numbers().x, key.public_key().public_numbers().y)
    r, s = ecdsa.sign(d, msg)
    assert crypto_verifies(pub, ecdsa.sig_der(r, s), msg)
    r2, s2 = decode_dss_signature(key.sign(msg, ES256))
    assert ecdsa.verify(pub, msg, r2, s2)
    assert not ecdsa.verify(pub, msg + b"\x00", r2, s2)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_matches_stdlib(key: bytes, msg: bytes) -> None:
    assert ecdsa.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@st.composite
def der_like(draw: st.DrawFn) -> bytes:
    """SEQUENCE-of-two-INTEGERs shapes with random contents and sometimes-wrong lengths."""
    off_by = st.sampled_from([0, 0, 0, -1, 1])
    parts = []
    for _ in range(2):
        content = draw(st.binary(max_size=35))
        parts.append(b"\x02" + bytes([max(len(content) + draw(off_by), 0)]) + content)
    body = b"".join(parts)
    trailer = draw(st.sampled_from([b"", b"", b"\x00"]))
    return b"\x30" + bytes([max(len(body) + draw(off_by), 0)]) + body + trailer


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(der_like(), st.binary(max_size=80)))
def test_parse_sig_der_is_exactly_der(data: bytes) -> None:
    """pilecore accepts what a strict DER decoder accepts, for non-negative <= 33-byte ints."""
    try:
        theirs = decode_dss_signature(data)
    except ValueError:
        theirs = None
    try:
        ours = ecdsa.parse_sig_der(data)
    except ValueError:
        ours = None
    if ours is not None:
        assert theirs == ours
    elif theirs is not None:
        assert min(theirs) < 0 or max(theirs) >= 2**263, (data.hex(), theirs)


@settings(max_examples=50, deadline=None)
@given(r=st.integers(1, N - 1), s=st.integers(1, N - 1))
def test_sig_der_equals_cryptography_encoding(r: int, s: int) -> None:
    assert ecdsa.sig_der(r, s) == encode_dss_signature(r, s)
    assert ecdsa.parse_sig_der(encode_dss_signature(r, s)) == (r, s)


def test_jsonc_fast_path_matches_the_portable_encoder():
    """On CPython jsonc uses json.dumps; it must give exactly the bytes MicroPython's path gives."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pilecore import jsonc

    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    values = st.recursive(
        leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4), max_leaves=20
    )

    @settings(max_examples=200, deadline=None)
    @given(values)
    def check(v):
        out = []
        jsonc._enc(v, out)
        assert "".join(out) == jsonc.dumps(v)

    check()
