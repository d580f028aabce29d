"""The Pi's durable outbox and gateway state: one SQLite database (WAL, synchronous FULL).

Every chained message is inserted, together with the new chain head, in one transaction before
it is published; it is marked acked after its PUBACK and kept for `resend` until space is
needed.  A kill -9 or power cut at any instant leaves the last committed transaction: nothing
stored is lost and the chain head always matches the newest stored message.

The API is the same as the ESP32's segment-file outbox (firmware/pilefw/outbox.py):
put, pending, ack, get, depth, oldest, last, take_dropped, close; plus the chain head, the start
epoch and a small key-value store for state that must survive restarts (meter bindings, bay
states, command replay guard, OCMF pagination).
"""

from __future__ import annotations

import collections
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

NEVER_DROPPED = ("billing", "event", "birth", "ack")


class OutboxFull(Exception):
    """Only records that must never be dropped remain, and the new one does not fit."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS msg (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS msg_unacked ON msg (acked, seq);
CREATE TABLE IF NOT EXISTS dropped (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, taken INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def signing_input_hash(payload: bytes) -> str:
    """SHA-256 hex of a JWS's signing input (the text before its second dot)."""
    text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
    return hashlib.sha256(text.rsplit(".", 1)[0].encode()).hexdigest()


class Outbox:
    """See the module docstring.  Thread-safe (the MQTT thread acks, the main loop puts)."""

    def __init__(self, path: Path | str, max_bytes: int = 64 * 1024 * 1024):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.path.chmod(0o600)
        row = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM msg").fetchone()
        self._bytes = int(row[0])
        self._acks: collections.deque[int] = collections.deque()

    # ------------------------------------------------------------ messages

    def put_many(self, records: list[tuple[int, str, str, bytes, str | None]]) -> int:
        """Store consecutive messages (seq, kind, topic, payload, chain hash) in ONE transaction
        (one fsync: a group commit), with the chain head of the last one stored.

        Stores the longest prefix that fits and returns its length: the chain head always
        matches the newest stored message, so a refused message leaves no hole.  Telemetry that
        cannot fit even after thinning ends the prefix; a message that must never be dropped
        and cannot fit raises OutboxFull, with nothing of the batch stored.
        """
        with self._lock:
            last = self.db.execute("SELECT MAX(seq) FROM msg").fetchone()[0] or 0
            rows = []
            batch_bytes = 0
            head = None
            for seq, kind, topic, payload, digest in records:
                if seq <= last:
                    raise ValueError(f"seq {seq} is not above the newest stored seq {last}")
                last = seq
                size = len(payload) + len(topic) + 32
                if not self._make_room(size + batch_bytes, kind):
                    break
                rows.append((seq, kind, topic, bytes(payload), size))
                batch_bytes += size
                head = (seq, digest)
            if not rows:
                return 0
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("INSERT INTO msg (seq, kind, topic, payload, size) VALUES (?,?,?,?,?)", rows)
                if head is not None and head[1] is not None:
                    self._kv_put("chain", {"seq": head[0], "head": head[1]})
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._bytes += batch_bytes
            return len(rows)

    def put(self, seq: int, kind: str, topic: str, payload: bytes, chain_head: tuple[int, str] | None = None) -> bool:
        """Store one message (and the chain head it creates) durably; False if refused: see
        put_many, of which this is the one-message case."""
        if chain_head is not None and chain_head[0] != seq:
            raise ValueError("the chain head must be the message's own")
        return self.put_many([(seq, kind, topic, payload, chain_head[1] if chain_head else None)]) == 1

    def _make_room(self, size: int, kind: str) -> bool:
        """Free space: acked records first, then unacked telemetry, oldest first."""
        if self._bytes + size > self.max_bytes:
            self.flush_acks()
        while self._bytes + size > self.max_bytes:
            row = self.db.execute("SELECT seq, size FROM msg WHERE acked = 1 ORDER BY seq LIMIT 1").fetchone()
            if row is not None:
                self.db.execute("DELETE FROM msg WHERE seq = ?", (row[0],))
                self._bytes -= row[1]
                continue
            row = self.db.execute(
                "SELECT seq, size, payload FROM msg WHERE kind = 'telemetry' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is not None:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    "INSERT OR REPLACE INTO dropped (seq, hash) VALUES (?, ?)", (row[0], signing_input_hash(row[2]))
                )
                self.db.execute("DELETE FROM msg WHERE seq = ?", (row[0],))
                self.db.execute("COMMIT")
                self._bytes -= row[1]
                continue
            if kind == "telemetry":
                return False
            raise OutboxFull(
                f"outbox full ({self._bytes} of {self.max_bytes} bytes) with records "
                "that must not be dropped; the platform has not acknowledged them"
            )
        return True

    def pending(self, limit: int = 16, after: int = 0) -> list[tuple[int, str, str, bytes]]:
        """Oldest-first unacked messages (seq > after)."""
        with self._lock:
            acked = set(self._acks)
            rows = self.db.execute(
                "SELECT seq, kind, topic, payload FROM msg WHERE acked = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after, limit + len(acked)),
            ).fetchall()
            rows = [r for r in rows if r[0] not in acked][:limit]
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def ack(self, seq: int) -> None:
        """Mark a message published.  Acks are buffered and written in batches (flush_acks): a
        lost ack only makes the message be published once more, which receivers drop as a
        duplicate, so acks need no fsync of their own."""
        # Called on the MQTT client's network thread: never wait for the database lock here
        # (deque.append is atomic), or a long store would stall the whole link.
        self._acks.append(seq)

    def flush_acks(self) -> None:
        with self._lock:
            if not self._acks:
                return
            batch = []
            while self._acks:
                batch.append(self._acks.popleft())
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE msg SET acked = 1 WHERE seq = ?", [(s,) for s in batch])
            self.db.execute("COMMIT")

    def get(self, seq: int) -> tuple[int, str, str, bytes] | None:
        with self._lock:
            r = self.db.execute("SELECT seq, kind, topic, payload FROM msg WHERE seq = ?", (seq,)).fetchone()
        return None if r is None else (r[0], r[1], r[2], bytes(r[3]))

    def depth(self) -> int:
        with self._lock:
            self.flush_acks()
            return int(self.db.execute("SELECT COUNT(*) FROM msg WHERE acked = 0").fetchone()[0])

    def oldest(self) -> int | None:
        with self._lock:
            self.flush_acks()
            return self.db.execute("SELECT MIN(seq) FROM msg WHERE acked = 0").fetchone()[0]

    def last(self) -> tuple[int, bytes] | None:
        with self._lock:
            r = self.db.execute("SELECT seq, payload FROM msg ORDER BY seq DESC LIMIT 1").fetchone()
        return None if r is None else (r[0], bytes(r[1]))

    def take_dropped(self) -> list[tuple[int, str]]:
        """Telemetry dropped by thinning and not yet reported (reported ones are remembered)."""
        with self._lock:
            rows = self.db.execute("SELECT seq, hash FROM dropped WHERE taken = 0 ORDER BY seq").fetchall()
            self.db.execute("UPDATE dropped SET taken = 1 WHERE taken = 0")
        return [(r[0], r[1]) for r in rows]

    def bytes_used(self) -> int:
        return self._bytes

    # ------------------------------------------------------------ chain, epoch, state

    def chain(self) -> tuple[int, str] | None:
        c = self.kv_get("chain")
        return None if c is None else (c["seq"], c["head"])

    def next_epoch(self) -> int:
        """Increment and return the start counter (durably, before any message is signed)."""
        with self._lock:
            epoch = int(self.kv_get("epoch") or 0) + 1
            self.kv_put("epoch", epoch)
            return epoch

    def kv_get(self, key: str) -> Any:
        with self._lock:
            r = self.db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if r is None else json.loads(r[0])

    def kv_put(self, key: str, value: Any) -> None:
        with self._lock:
            self._kv_put(key, value)

    def _kv_put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        with self._lock:
            self.flush_acks()
            self.db.close()
