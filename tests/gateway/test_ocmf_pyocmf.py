"""Our OCMF records through an independent verifier: pyocmf (parsing, signature, Eichrecht rules).

Records are signed both with pilecore.ecdsa (the ESP32 path) and with `cryptography` (the Pi
path).  pyocmf parses in strict mode, so any deviation from the OCMF spec fails the test.
"""

import base64
import json
import os
import warnings

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyocmf import OCMF, IssueCode, IssueSeverity, SpecWarning
from pyocmf.exceptions import PyOCMFError

from pilecore import ecdsa, ocmf
from pilecore.sessions import SessionTracker

T0 = 1795691815  # 2026-11-26T11:16:55Z
CTX = {"GI": "pilegate RPi", "GS": "PG-000123", "GV": "0.1.0", "PG": 42, "MV": "Acrel", "MM": "ADL400", "MF": "1.02"}


def _session(unmetered=None, sync=True, clock_back=False):
    """A session from the tracker: plug in, charge 29.549 kWh, unplug."""
    tr = SessionTracker("P-07")
    tr.step(T0, 2935600, power_w=0.0, plug=True, sync=sync, serial="2301-0457")
    tr.step(T0 + 3600, 2950000, power_w=7000.0, plug=True, sync=sync, serial="2301-0457", unmetered=unmetered)
    end_t = T0 - 600 if clock_back else T0 + 14400
    done = tr.step(end_t, 2965149, power_w=0.0, plug=False, sync=sync, serial="2301-0457")
    assert done is not None
    return done


@pytest.fixture(scope="module")
def core_key():
    d = ecdsa.private_key_from_seed(os.urandom(48))
    pub = ecdsa.public_key(d)
    return ocmf.signer(d), ecdsa.spki_der(pub).hex()


@pytest.fixture(scope="module")
def crypto_key():
    key = ec.generate_private_key(ec.SECP256R1())

    def sign(msg: bytes) -> bytes:
        return key.sign(msg, ec.ECDSA(hashes.SHA256()))

    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return sign, der.hex()


@pytest.fixture(params=["pilecore", "cryptography"])
def signer(request, core_key, crypto_key):
    return core_key if request.param == "pilecore" else crypto_key


def _strict(text: str) -> OCMF:
    """Parse in pyocmf's strict mode, and make sure not even a SpecWarning is raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        return OCMF.from_string(text, strict=True)


def test_clean_record_parses_strictly_and_verifies(signer):
    sign, key_hex = signer
    text = ocmf.build(_session(), CTX, sign)
    rec = _strict(text)
    assert rec.verify_signature(key_hex) is True
    # Base64 DER is accepted as well (what docs/ocmf.md shows for the key file).
    assert rec.verify_signature(base64.b64encode(bytes.fromhex(key_hex)).decode()) is True
    p = rec.payload
    assert (p.FV, p.GS, p.PG, p.MS) == ("1.0", "PG-000123", "T42", "2301-0457")
    begin, end = p.RD
    assert (str(begin.TX), str(end.TX)) == ("B", "E")
    assert str(begin.RV) == "2935.600" and str(end.RV) == "2965.149"  # decimals preserved
    assert str(begin.RI) == "1-b:1.8.0" and begin.RI.is_law_relevant
    assert (str(begin.RU), str(begin.RT), str(begin.ST)) == ("kWh", "AC", "G")
    assert str(begin.time_status) == "S"
    assert begin.timestamp.isoformat() == "2026-11-26T11:16:55+00:00"
    # pyocmf's own rules (those of the Transparenzsoftware) find nothing to object to.  This
    # says the record is well formed and consistent, NOT that the signer is a certified meter.
    assert rec.check_eichrecht() == []
    assert rec.is_eichrecht_compliant


def test_our_parser_and_verifier_accept_both_signers(signer, core_key):
    sign, _key_hex = signer
    text = ocmf.build(_session(), CTX, sign)
    body, data, _der = ocmf.parse(text)
    assert data.decode() == text.split("|")[1]
    assert body["RD"][1]["RV"] == 2965.149
    # A cryptography signature (random k, any s) verifies with pilecore.ecdsa too.
    if sign is not core_key[0]:
        pub = serialization.load_der_public_key(bytes.fromhex(_key_hex)).public_numbers()
        assert ocmf.verify(text, (pub.x, pub.y))


def test_tampered_records_are_rejected(signer):
    sign, key_hex = signer
    text = ocmf.build(_session(), CTX, sign)
    forged = text.replace('"RV":2965.149', '"RV":2995.149')
    assert forged != text
    assert _strict(forged).verify_signature(key_hex) is False
    # Whitespace is part of the signed bytes too (OCMF: the payload must not be reformatted).
    payload, sig = text.split("|")[1:]
    spaced = "OCMF|" + json.dumps(json.loads(payload), indent=1) + "|" + sig
    assert _strict(spaced).verify_signature(key_hex) is False
    # A signature with one bit flipped in r (still well-formed DER) fails as well.
    der = bytearray(bytes.fromhex(json.loads(sig)["SD"]))
    der[10] ^= 0x01
    sd = der.hex().upper()
    flipped = "OCMF|" + payload + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"' + sd + '"}'
    assert _strict(flipped).verify_signature(key_hex) is False
    # A key of another curve is refused outright.
    other = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(PyOCMFError):
        _strict(text).verify_signature(other.hex())


def test_cryptography_checks_the_same_bytes(core_key):
    sign, key_hex = core_key
    text = ocmf.build(_session(), CTX, sign)
    payload, sig = text.split("|")[1:]
    pub = serialization.load_der_public_key(bytes.fromhex(key_hex))
    der = bytes.fromhex(json.loads(sig)["SD"])
    pub.verify(der, payload.encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        pub.verify(der, payload.replace("T42", "T41").encode(), ec.ECDSA(hashes.SHA256()))


def _issues(rec: OCMF) -> set[tuple[str, str, str]]:
    return {(i.code.value, i.severity.value, i.field or "") for i in rec.check_eichrecht()}


def test_unsynchronised_clock_is_a_warning_only(core_key):
    sign, key_hex = core_key
    rec = _strict(ocmf.build(_session(sync=False), CTX, sign))
    assert rec.verify_signature(key_hex)
    assert _issues(rec) == {(IssueCode.TIME_SYNC.value, IssueSeverity.WARNING.value, "TM")}
    assert rec.is_eichrecht_compliant  # warnings do not fail the check


def test_unmetered_session_fails_the_eichrecht_check(core_key):
    sign, key_hex = core_key
    rec = _strict(ocmf.build(_session(unmetered=["offline", "unverified"]), CTX, sign))
    assert rec.verify_signature(key_hex)  # authentic, but not billable
    assert _issues(rec) == {
        (IssueCode.METER_STATUS.value, IssueSeverity.ERROR.value, "ST"),
        (IssueCode.ERROR_FLAGS.value, IssueSeverity.ERROR.value, "EF"),
    }
    assert not rec.is_eichrecht_compliant
    assert rec.payload.model_extra["XF"] == ["offline", "unverified"]
    assert rec.payload.model_extra["XP"] == "P-07"


def test_clock_stepping_back_is_reported(core_key):
    sign, _key_hex = core_key
    rec = _strict(ocmf.build(_session(clock_back=True), CTX, sign))
    codes = _issues(rec)
    assert (IssueCode.ERROR_FLAGS.value, IssueSeverity.WARNING.value, "EF") in codes  # EF "t"
    assert (IssueCode.TIME_REGRESSION.value, IssueSeverity.ERROR.value, "TM") in codes


def test_dc_pile_and_charge_point_id(core_key):
    sign, key_hex = core_key
    ctx = dict(CTX, RT="DC", CI="CN*PGT*E0007*1", resolution_wh=10)
    rec = _strict(ocmf.build(_session(), ctx, sign))
    assert rec.verify_signature(key_hex)
    assert (str(rec.payload.CT), rec.payload.CI) == ("EVSEID", "CN*PGT*E0007*1")
    assert str(rec.payload.RD[0].RT) == "DC" and str(rec.payload.RD[1].RV) == "2965.14"
    assert rec.check_eichrecht() == []
