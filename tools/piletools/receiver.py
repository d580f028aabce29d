"""The receiver rules of docs/telemetry.md section 5, as a reusable class.

`Receiver.accept(topic, payload_bytes)` verifies one message against the key register and the
per-gateway chain state and returns a `Verdict`.  It does no I/O except through the optional
SQLite store passed in; `pilegate verify` wraps it with MQTT and printing.  Verification uses
`cryptography` only, exactly as a third party would.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

CHAINED = ("birth", "telemetry", "event", "billing", "ack")
ZERO = "0" * 64


def b64url_decode(text: str) -> bytes:
    if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def kid_of(pub: ec.EllipticCurvePublicKey) -> str:
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class KeyRegister:
    """kid -> (gateway id, public key), from a TOML file of [[key]] gateway = "...", pem = "..."."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, ec.EllipticCurvePublicKey]] = {}

    def add(self, gateway: str, pem: str | bytes) -> str:
        pub = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise ValueError(f"key for {gateway} is not an ECDSA P-256 public key")
        kid = kid_of(pub)
        self.keys[kid] = (gateway, pub)
        return kid

    def verify(self, kid: Any, gw: Any, signing_input: bytes, sig: bytes) -> bool:
        """True when `kid` is registered for gateway `gw` and the 64-byte r||s ES256
        signature verifies over `signing_input`."""
        entry = self.keys.get(kid) if isinstance(kid, str) else None
        if entry is None or entry[0] != gw or len(sig) != 64:
            return False
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            entry[1].verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    @classmethod
    def load(cls, path: Path | str) -> KeyRegister:
        reg = cls()
        data = tomllib.loads(Path(path).read_text())
        for i, entry in enumerate(data.get("key", [])):
            kid = reg.add(entry["gateway"], entry["pem"])
            if entry.get("kid") and entry["kid"] != kid:
                raise ValueError(f"{path}: key[{i}] kid {entry['kid']} does not match its PEM ({kid})")
        return reg


@dataclass
class Verdict:
    status: str  # accepted | duplicate | bad_signature | misrouted | replay | malformed | ignored
    gw: str | None = None
    seq: int | None = None
    kind: str | None = None
    body: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # chain breaks noticed on acceptance


@dataclass
class GatewayAccount:
    messages: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    replays: int = 0
    broken_links: list[int] = field(default_factory=list)
    declared_lost: set[int] = field(default_factory=set)
    hashes: dict[int, str] = field(default_factory=dict)
    prevs: dict[int, str] = field(default_factory=dict)
    high: int = 0
    base: int = 1  # first seq this receiver is responsible for
    states: int = 0
    last_telemetry: dict[str, Any] | None = None

    def gaps(self) -> list[tuple[int, int]]:
        """Missing, not declared lost, seq ranges below the highest accepted."""
        out: list[tuple[int, int]] = []
        start = None
        for s in range(self.base, self.high + 1):
            missing = s not in self.hashes and s not in self.declared_lost
            if missing and start is None:
                start = s
            elif not missing and start is not None:
                out.append((start, s - 1))
                start = None
        if start is not None:
            out.append((start, self.high))
        return out


class Receiver:
    """Applies the receiver rules; keeps an account per gateway (optionally in SQLite)."""

    def __init__(
        self, keys: KeyRegister, prefix: str = "pilegate/v1", store: Path | None = None, from_first_seen: bool = False
    ):
        """from_first_seen: a receiver that joins late counts gaps only from the first seq it
        sees per gateway (a platform must start at seq 1)."""
        self.keys = keys
        self.from_first_seen = from_first_seen
        self.prefix = prefix.rstrip("/")
        self.accounts: dict[str, GatewayAccount] = {}
        self.unknown_bad = 0
        self.db = None
        if store is not None:
            self.db = sqlite3.connect(str(store), check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 5000")  # several verifiers may share a store
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS msg (gw TEXT, seq INTEGER, kind TEXT, hash TEXT, "
                "t INTEGER, body TEXT, PRIMARY KEY (gw, seq))"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS rejected (gw TEXT, status TEXT, n INTEGER, PRIMARY KEY (gw, status))"
            )
            self.db.commit()

    def account(self, gw: str) -> GatewayAccount:
        return self.accounts.setdefault(gw, GatewayAccount())

    # ------------------------------------------------------------ rules

    def accept(self, topic: str, payload: bytes) -> Verdict:
        if topic.endswith("/cmd"):
            return Verdict("ignored")  # downlink: the platform's own commands
        try:
            text = payload.decode("ascii")
            h64, p64, s64 = text.split(".")
            header = json.loads(b64url_decode(h64))
            body = json.loads(b64url_decode(p64))
            sig = b64url_decode(s64)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            self.unknown_bad += 1
            return Verdict("malformed", problems=["not a JWS compact serialization"])
        signing_input = (h64 + "." + p64).encode()
        gw = body.get("gw") if isinstance(body, dict) else None
        if not isinstance(gw, str) or not self._signature_ok(header, sig, signing_input, gw):
            if gw and isinstance(gw, str):
                self.account(gw).bad_signatures += 1
                self._count_rejected(gw, "bad_signature")
            else:
                self.unknown_bad += 1
            return Verdict("bad_signature", gw=gw)
        acct = self.account(gw)
        kind = body.get("kind")
        if topic != f"{self.prefix}/{body.get('site')}/{gw}/{kind}":
            acct.bad_signatures += 1
            self._count_rejected(gw, "bad_signature")
            return Verdict("misrouted", gw=gw, kind=kind, problems=[f"topic {topic} does not match payload"])
        if kind == "state":
            acct.states += 1
            return Verdict("accepted", gw=gw, kind=kind, body=body)
        if kind == "commissioning":  # unchained, retained: the signed commissioning record
            return Verdict("accepted", gw=gw, kind=kind, body=body)
        seq = body.get("seq")
        if kind not in CHAINED or not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            acct.replays += 1
            self._count_rejected(gw, "replay")
            return Verdict("replay", gw=gw, kind=kind, problems=["invalid seq"])
        digest = hashlib.sha256(signing_input).hexdigest()
        if seq in acct.hashes:
            if acct.hashes[seq] == digest:
                acct.duplicates += 1
                return Verdict("duplicate", gw=gw, seq=seq, kind=kind)
            acct.replays += 1
            self._count_rejected(gw, "replay")
            return Verdict("replay", gw=gw, seq=seq, kind=kind, problems=[f"seq {seq} reused by a different message"])
        return self._accept_chained(acct, gw, seq, kind, body, digest)

    def _count_rejected(self, gw: str, status: str) -> None:
        if self.db is not None:
            self.db.execute(
                "INSERT INTO rejected VALUES (?, ?, 1) ON CONFLICT (gw, status) DO UPDATE SET n = n + 1", (gw, status)
            )
            self.db.commit()

    def _signature_ok(self, header: Any, sig: bytes, signing_input: bytes, gw: Any) -> bool:
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            return False
        return self.keys.verify(header.get("kid", ""), gw, signing_input, sig)

    def _accept_chained(
        self, acct: GatewayAccount, gw: str, seq: int, kind: str, body: dict[str, Any], digest: str
    ) -> Verdict:
        verdict = Verdict("accepted", gw=gw, seq=seq, kind=kind, body=body)
        if self.from_first_seen and acct.messages == 0:
            acct.base = seq
        acct.messages += 1
        acct.hashes[seq] = digest
        acct.prevs[seq] = body.get("prev", "")
        acct.declared_lost.discard(seq)
        acct.high = max(acct.high, seq)
        self._check_link(acct, seq, verdict)
        self._check_link(acct, seq + 1, verdict)
        if kind == "event":
            self._declared_losses(acct, body, verdict)
        if kind == "telemetry":
            acct.last_telemetry = body
        if self.db is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO msg VALUES (?,?,?,?,?,?)",
                (gw, seq, kind, digest, body.get("t"), json.dumps(body)),
            )
            self.db.commit()
        return verdict

    def _check_link(self, acct: GatewayAccount, seq: int, verdict: Verdict) -> None:
        """prev(seq) must equal the hash of seq-1, when both are known."""
        if seq not in acct.prevs:
            return
        if seq == 1:
            expected: str | None = ZERO
        else:
            expected = acct.hashes.get(seq - 1)
        if expected is not None and acct.prevs[seq] != expected and seq not in acct.broken_links:
            acct.broken_links.append(seq)
            verdict.problems.append(f"chain broken at seq {seq}")

    def _declared_losses(self, acct: GatewayAccount, body: dict[str, Any], verdict: Verdict) -> None:
        for ev in body.get("data", {}).get("events", []):
            if ev.get("type") != "outbox.dropped":
                continue
            for item in ev.get("dropped", []):
                s, h = item.get("seq"), item.get("hash")
                if isinstance(s, int) and isinstance(h, str) and s not in acct.hashes:
                    acct.declared_lost.add(s)
                    acct.hashes[s] = h  # the chain stays checkable across the loss
                    acct.high = max(acct.high, s)
                    self._check_link(acct, s + 1, verdict)

    # ------------------------------------------------------------ reporting

    def report(self) -> tuple[str, bool]:
        """(text, clean): one block per gateway; clean is False on any gap or failed check."""
        lines = []
        clean = self.unknown_bad == 0
        for gw in sorted(self.accounts):
            a = self.accounts[gw]
            gaps = a.gaps()
            ok = not gaps and not a.bad_signatures and not a.replays and not a.broken_links
            clean = clean and ok
            gap_text = ", ".join(f"{x}-{y}" if x != y else str(x) for x, y in gaps) or "none"
            lines.append(
                f"{gw}: {'OK' if ok else 'PROBLEMS'}: {a.messages} messages (seq {a.base}-{a.high}), "
                f"{a.duplicates} duplicates, {len(a.declared_lost)} declared lost, gaps: {gap_text}, "
                f"{a.bad_signatures} bad signatures, {a.replays} replays, "
                f"{len(a.broken_links)} broken links"
            )
        if self.unknown_bad:
            lines.append(f"{self.unknown_bad} message(s) from unknown gateways or unreadable")
        if not self.accounts:
            lines.append("no messages received")
            clean = False
        return "\n".join(lines), clean
