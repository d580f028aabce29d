"""The Pi's device key: ECDSA P-256, generated on the device, never printed or logged.

The private key lives in `<data_dir>/device-key.pem` (PKCS#8 PEM, file mode 0600, directory
0700), created at first start with O_EXCL so two processes can never both write one.  Only the
public key and its kid ever leave this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pilecore import envelope

KEY_FILE = "device-key.pem"


class KeyFileError(Exception):
    """The key file exists but cannot be used (unreadable, wrong type, too open)."""


class DeviceKey:
    """Signs with the device key; exposes only public material."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        self._key = private_key
        pub = private_key.public_key()
        self.spki_der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_pem = pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self.kid = envelope.key_id(self.spki_der)

    def __repr__(self) -> str:  # never show key material, even by accident
        return f"DeviceKey(kid={self.kid[:16]}...)"

    def sign_raw(self, message: bytes) -> bytes:
        """ES256 signature as 64 bytes r || s (JWS)."""
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign_der(self, message: bytes) -> bytes:
        """ECDSA-SHA256 signature in DER (OCMF)."""
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def load_or_create(data_dir: Path | str) -> tuple[DeviceKey, bool]:
    """Load the device key, creating it on first start. Returns (key, created)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    path = data_dir / KEY_FILE
    if path.exists():
        return DeviceKey(_load(path)), False
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return DeviceKey(_load(path)), False
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return DeviceKey(key), True


def _load(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: permissions {oct(mode)} let other users read the device key; "
            f"run 'chmod 600 {path}' (and check who could have copied it)"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{path}: not a usable private key ({exc}); restore it from backup or "
            "re-provision the gateway (a new key must be registered)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: not an ECDSA P-256 key")
    return key


def load_public_pem(path: Path | str) -> tuple[int, int]:
    """A public key file (PEM SubjectPublicKeyInfo, P-256) as an (x, y) point."""
    pub = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: not an ECDSA P-256 public key")
    n = pub.public_numbers()
    return n.x, n.y
