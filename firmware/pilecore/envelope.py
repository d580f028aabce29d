"""The signed envelope of every message: JWS compact serialization, ES256, one hash chain.

    JWS = BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(r || s)
    header  = {"alg":"ES256","kid":<hex SHA-256 of the device key's SubjectPublicKeyInfo DER>,
               "typ":"pilegate+jws"}
    payload = {"v":1,"gw":..,"site":..,"epoch":..,"seq":..,"prev":..,"t":..,"tsync":..,
               "kind":..,"data":{..}[,"hist":true]}

The signing input is the ASCII text before the second dot.  `prev` is the SHA-256 (hex) of
the previous chained message's signing input, so the gateway's messages form one chain; the
first message ever has prev = 64 zeros.  docs/telemetry.md is the normative description.

Sealing is two-phase so a sequence number is never reused and never skipped: `prepare()`
builds and signs the next message without changing the chain; the caller stores it durably
(outbox) and then calls `commit()`.  If storing fails, nothing was consumed.
"""

import binascii
import hashlib

from pilecore import jsonc

ZERO_HASH = "0" * 64
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PAYLOAD_VERSION = 1
CHAINED_KINDS = ("birth", "telemetry", "event", "billing", "ack")


def b64url(data):
    """Base64url without padding (RFC 7515 section 2)."""
    s = binascii.b2a_base64(data).decode().strip()
    return s.replace("+", "-").replace("/", "_").rstrip("=")


def b64url_decode(text):
    """Inverse of b64url; raises ValueError on characters outside the base64url alphabet."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode()
    for ch in text:
        if ch not in _B64URL:
            raise ValueError("not base64url: %r" % ch)
    if len(text) % 4 == 1:
        raise ValueError("base64url text has an impossible length")
    s = text.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    return binascii.a2b_base64(s.encode())


def sha256_hex(data):
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def key_id(spki_der):
    """The kid of a public key: hex SHA-256 of its SubjectPublicKeyInfo DER."""
    return sha256_hex(spki_der)


def header_b64(kid):
    return b64url(jsonc.dumps({"alg": "ES256", "kid": kid, "typ": "pilegate+jws"}).encode())


def sign_compact(header_part, payload_bytes, sign_raw):
    """Build a JWS from a ready header part; `sign_raw(bytes) -> 64-byte r||s`.

    Returns (jws text, signing-input hash hex)."""
    signing_input = header_part + "." + b64url(payload_bytes)
    sig = sign_raw(signing_input.encode())
    if len(sig) != 64:
        raise ValueError("ES256 signature must be 64 bytes (r || s), got %d" % len(sig))
    return signing_input + "." + b64url(sig), sha256_hex(signing_input.encode())


def split(jws):
    """(header dict, payload bytes, signature bytes, signing input bytes); ValueError if malformed."""
    import json

    if isinstance(jws, (bytes, bytearray)):
        jws = jws.decode()
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("a JWS compact serialization has 3 parts, this has %d" % len(parts))
    header = json.loads(b64url_decode(parts[0]))
    if not isinstance(header, dict):
        raise ValueError("JWS header is not a JSON object")
    payload = b64url_decode(parts[1])
    sig = b64url_decode(parts[2])
    return header, payload, sig, (parts[0] + "." + parts[1]).encode()


class Prepared:
    """A signed message not yet committed to the chain."""

    def __init__(self, seq, kind, jws, digest, payload):
        self.seq = seq
        self.kind = kind
        self.jws = jws
        self.hash = digest
        self.payload = payload


class Chain:
    """The gateway's signing state: epoch, last seq, chain head.

    `seq` is the last committed sequence number (0 before the first message), `head` the
    hash of its signing input.  Persisting (epoch, seq, head) is the port's job: the Pi keeps
    them in the outbox database, the ESP32 recovers them from the newest outbox record.
    """

    def __init__(self, gw, site, kid, sign_raw, epoch, seq=0, head=ZERO_HASH):
        self.gw = gw
        self.site = site
        self.sign_raw = sign_raw
        self.header = header_b64(kid)
        self.kid = kid
        self.epoch = epoch
        self.seq = seq
        self.head = head

    def prepare(self, kind, data, now, tsync, hist=False):
        """Sign the next chained message; the chain advances only on commit()."""
        if kind not in CHAINED_KINDS:
            raise ValueError("kind %r is not a chained message kind" % kind)
        seq = self.seq + 1
        body = {
            "v": PAYLOAD_VERSION,
            "gw": self.gw,
            "site": self.site,
            "epoch": self.epoch,
            "seq": seq,
            "prev": self.head,
            "t": now,
            "tsync": tsync,
            "kind": kind,
            "data": data,
        }
        if hist:
            body["hist"] = True
        payload = jsonc.dumps(body).encode()
        jws, digest = sign_compact(self.header, payload, self.sign_raw)
        return Prepared(seq, kind, jws, digest, payload)

    def prepare_many(self, items, now, tsync, hist=False):
        """Sign several chained messages at once (each linked to the one before); the chain
        advances only on commit_many(), after the caller stored them in one transaction."""
        seq, head = self.seq, self.head
        out = []
        try:
            for kind, data in items:
                p = self.prepare(kind, data, now, tsync, hist)
                out.append(p)
                self.seq, self.head = p.seq, p.hash
        finally:
            self.seq, self.head = seq, head
        return out

    def commit_many(self, prepared):
        for p in prepared:
            self.commit(p)

    def commit(self, prepared):
        if prepared.seq != self.seq + 1:
            raise ValueError("commit out of order: chain at %d, message %d" % (self.seq, prepared.seq))
        self.seq = prepared.seq
        self.head = prepared.hash

    def unchained(self, kind, data, now, tsync):
        """A signed message outside the chain (the retained `state` topic and the MQTT will):
        no seq and no prev, so a will that is never sent leaves no gap."""
        body = {
            "v": PAYLOAD_VERSION,
            "gw": self.gw,
            "site": self.site,
            "epoch": self.epoch,
            "t": now,
            "tsync": tsync,
            "kind": kind,
            "data": data,
        }
        return sign_compact(self.header, jsonc.dumps(body).encode(), self.sign_raw)[0]
