"""The Pi's durable outbox and gateway state: one SQLite database (WAL, synchronous FULL).

Every chained message is inserted, together with the new chain head, in one transaction before
it is published; it is marked acked after its PUBACK and kept for `resend` until space is
needed.  A kill -9 or power cut at any instant leaves the last committed transaction: nothing
stored is lost and the chain head always matches the newest stored message.

The API is the same as the ESP32's segment-file outbox (firmware/pilefw/outbox.py):
put, pending, ack, get, depth, oldest, last, take_dropped, close; plus the chain head, the start
epoch and a small key-value store for state that must survive restarts (meter bindings, bay
states, command replay guard, OCMF pagination).

Storage that refuses (docs/outbox.md, "When the disk is full"): every write is one transaction;
a refusal of the file system or of SQLite (disk full, I/O error, a failed rollback) rolls it
back completely and raises `StorageFull` (an `OutboxFull`) naming the cause, so the chain head
never moves past what is stored.  A reserve file kept next to the database is released on the
first refusal, which gives SQLite the room it needs to checkpoint its WAL and to thin; the
budget is then lowered to what the file system holds, so telemetry is thinned and declared as
when `max_bytes` is reached.  When the file system has room again the reserve is re-created and
the budget restored: nothing needs a restart.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("pilegate.outbox")
NEVER_DROPPED = ("billing", "event", "birth", "ack")
RESERVE_BYTES = 8 * 1024 * 1024  # twice SQLite's default WAL (1000 pages of 4 KiB)
_ACK_BATCH = 64  # acks written per transaction
_HEADROOM = 64 * 1024  # free beyond twice the reserve before the budget is restored
T = TypeVar("T")


class OutboxFull(Exception):
    """Only records that must never be dropped remain, and the new one does not fit."""


class StorageFull(OutboxFull):
    """The file system or SQLite refused a write (disk full, I/O error).  Nothing of the write
    was stored; `cause` names the error.  The outbox recovers by itself when space returns."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


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

# SQLite errors that say something about our code, not about the storage: never swallowed.
_PROGRAMMING_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def signing_input_hash(payload: bytes) -> str:
    """SHA-256 hex of a JWS's signing input (the text before its second dot)."""
    text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
    return hashlib.sha256(text.rsplit(".", 1)[0].encode()).hexdigest()


def _is_full(exc: BaseException) -> bool:
    """True for "no space" refusals (SQLITE_FULL, ENOSPC, EDQUOT), as opposed to I/O faults."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(exc)


def _allocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of real blocks (not a sparse hole, which would free nothing)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    chunk = bytes(64 * 1024)
    for _ in range(0, size, len(chunk)):
        os.write(fd, chunk)


class Outbox:
    """See the module docstring.  Thread-safe (the MQTT thread acks, the main loop puts)."""

    def __init__(self, path: Path | str, max_bytes: int = 64 * 1024 * 1024, reserve_bytes: int = RESERVE_BYTES) -> None:
        """Open (or create) the database at `path`.  `reserve_bytes` of the file system are
        kept in `<path>.reserve` for the day the disk fills (0: no reserve).  Raises
        StorageFull if the database cannot be opened or created."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.storage_error: str | None = None  # the cause of the current refusal, if any
        self.storage_errors = 0  # refusals since open
        self._cap: int | None = None  # budget lowered to what the file system holds
        self._kv_pending: dict[str, Any] = {}  # state refused by storage, written with the next commit
        self._lock = threading.RLock()
        self._acks: collections.deque[int] = collections.deque()
        try:
            self._connect()
            self.db.executescript(_SCHEMA)
            self.path.chmod(0o600)
        except (sqlite3.Error, OSError) as exc:
            if hasattr(self, "db"):
                with contextlib.suppress(sqlite3.Error):
                    self.db.close()
            if isinstance(exc, _PROGRAMMING_ERRORS):
                raise
            raise StorageFull(self._describe(exc, "open"), str(exc)) from exc
        self._bytes = self._stored_bytes()
        self._ensure_reserve()

    def _connect(self) -> None:
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # Keep the WAL well inside the reserve: after a refusal, the released reserve must hold
        # the WAL until the next checkpoint, which rewinds it.
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        wal = max(self.reserve_bytes // 2, 64 * page) if self.reserve_bytes else 1000 * page
        self.db.execute(f"PRAGMA wal_autocheckpoint={wal // page}")
        self.db.execute(f"PRAGMA journal_size_limit={wal}")

    def _stored_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM msg").fetchone()[0])

    # ------------------------------------------------------------ transactions and refusals

    def _write(self, body: Callable[[], T], need: int = 0) -> T:
        """Run `body` in one write transaction (with any state waiting in _kv_pending).

        On a refusal of storage the transaction is rolled back completely, the outbox
        recovers (_recover: release the reserve, checkpoint, lower the budget by `need`) and
        `body` runs once more; a second refusal raises StorageFull.  `body` may raise
        OutboxFull or ValueError: then too nothing is stored.  Call with the lock held.
        """
        for attempt in (1, 2):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                result = body()
                for key, value in self._kv_pending.items():
                    self._kv_put(key, value)
                self.db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._abort()
                if isinstance(exc, _PROGRAMMING_ERRORS):
                    raise
                self._recover(exc, need)
                if attempt == 2:
                    raise StorageFull(self.storage_error or str(exc), str(exc)) from exc
                continue
            except BaseException:
                self._abort()
                raise
            self._kv_pending.clear()
            self._stored_ok()
            return result
        raise AssertionError("unreachable")

    def _abort(self) -> None:
        """Leave no transaction open.  SQLite may already have rolled back by itself (it does
        on SQLITE_FULL); if even ROLLBACK fails the connection is replaced, which rolls back."""
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            with contextlib.suppress(sqlite3.Error):
                self._connect()
        with contextlib.suppress(sqlite3.Error):
            self._bytes = self._stored_bytes()

    def _recover(self, exc: BaseException, need: int) -> None:
        """After a refusal: name it, give SQLite room, and fit the budget to the disk."""
        self.storage_errors += 1
        first = self.storage_error is None
        self.storage_error = self._describe(exc, "write")
        if first:  # once per episode: the state says the rest (state(), the console)
            log.warning("%s; thinning telemetry to fit, keeping the rest in memory", self.storage_error)
        if not _is_full(exc):
            return
        self._release_reserve()
        # Copy the WAL into the database and cut it to nothing: the WAL holds the newest pages
        # and cannot be rewound before a checkpoint, which needs the reserve's room.
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cap = self._bytes if self._cap is None else min(self._cap, self._bytes)
        self._cap = max(0, cap - need)

    def _describe(self, exc: BaseException, what: str) -> str:
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        free = self._free_bytes()
        room = f"{free // 1024} KiB free on its file system" if free is not None else "free space unknown"
        fix = (
            "free space in data_dir or lower [telemetry] outbox_mb"
            if _is_full(exc)
            else "check the storage device (dmesg)"
        )
        return f"storage refused to {what} {self.path}: {exc} ({name}); {room}; {fix}"

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _stored_ok(self) -> None:
        """After a commit, and before a put while the budget is lowered: once the file system
        has room again, restore the reserve and the budget."""
        if self.storage_error is None and self._cap is None:
            return
        if self._cap is not None:
            free = self._free_bytes()
            if free is None or free < self.reserve_bytes * 2 + _HEADROOM or not self._ensure_reserve():
                return
            self._cap = None
        log.info("storage accepts writes again (%s): budget %d bytes", self.path, self.max_bytes)
        self.storage_error = None

    def _ensure_reserve(self) -> bool:
        """Make sure the reserve file exists, allocated; False if there is no room for it."""
        if not self.reserve_bytes:
            return True
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        except OSError:
            pass
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _allocate(fd, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            self._release_reserve()
            return False

    def _release_reserve(self) -> None:
        with contextlib.suppress(OSError):
            self.reserve_path.unlink()

    def state(self) -> dict[str, Any]:
        """For `state` and the console: is storage accepting writes, and why not."""
        with self._lock:
            return {
                "ok": self.storage_error is None,
                "error": self.storage_error,
                "errors": self.storage_errors,
                "bytes_used": self._bytes,
                "max_bytes": self.max_bytes,
                "budget_bytes": self._budget(),
                "state_pending": sorted(self._kv_pending),
            }

    def _budget(self) -> int:
        return self.max_bytes if self._cap is None else min(self.max_bytes, self._cap)

    # ------------------------------------------------------------ messages

    def put_many(self, records: list[tuple[int, str, str, bytes, str | None]]) -> int:
        """Store consecutive messages (seq, kind, topic, payload, chain hash) in ONE transaction
        (one fsync: a group commit), with the chain head of the last one stored.

        Stores the longest prefix that fits and returns its length: the chain head always
        matches the newest stored message, so a refused message leaves no hole.  Telemetry that
        cannot fit even after thinning ends the prefix; a message that must never be dropped
        and cannot fit raises OutboxFull, with nothing of the batch stored.  A refusal of the
        storage itself raises StorageFull (an OutboxFull), again with nothing stored.
        """
        with self._lock:
            last = self.db.execute("SELECT MAX(seq) FROM msg").fetchone()[0] or 0
            for seq, *_ in records:
                if seq <= last:
                    raise ValueError(f"seq {seq} is not above the newest stored seq {last}")
                last = seq
            if len(self._acks) > _ACK_BATCH:  # a backlog of acks: bounded transactions of their own
                self.flush_acks()
            if self._cap is not None:
                self._stored_ok()
            need = sum(len(payload) + len(topic) + 32 for _, _, topic, payload, _ in records)
            # a few acks ride along in the same transaction: no fsync of their own
            acks = [self._acks.popleft() for _ in range(min(len(self._acks), _ACK_BATCH))]
            try:
                stored, used = self._write(lambda: self._insert(records, acks), need)
            except BaseException:
                self._acks.extendleft(reversed(acks))
                raise
            self._bytes = used
            return stored

    def _insert(self, records: list[tuple[int, str, str, bytes, str | None]], acks: list[int]) -> tuple[int, int]:
        """The body of put_many's transaction: (messages stored, bytes used after)."""
        self._mark_acked(acks)
        used = self._bytes
        rows = []
        head = None
        for seq, kind, topic, payload, digest in records:
            size = len(payload) + len(topic) + 32
            room = self._make_room(used, size, kind)
            if room is None:
                break
            used = room + size
            rows.append((seq, kind, topic, bytes(payload), size))
            head = (seq, digest)
        if rows:
            self.db.executemany("INSERT INTO msg (seq, kind, topic, payload, size) VALUES (?,?,?,?,?)", rows)
        if head is not None and head[1] is not None:
            self._kv_put("chain", {"seq": head[0], "head": head[1]})
        return len(rows), used

    def put(self, seq: int, kind: str, topic: str, payload: bytes, chain_head: tuple[int, str] | None = None) -> bool:
        """Store one message (and the chain head it creates) durably; False if refused: see
        put_many, of which this is the one-message case."""
        if chain_head is not None and chain_head[0] != seq:
            raise ValueError("the chain head must be the message's own")
        return self.put_many([(seq, kind, topic, payload, chain_head[1] if chain_head else None)]) == 1

    def _make_room(self, used: int, size: int, kind: str) -> int | None:
        """Inside a transaction: free space for `size` more bytes when `used` are stored,
        acked records first, then unacked telemetry, oldest first.  Returns the bytes used
        after freeing, None for telemetry that cannot fit, raises OutboxFull otherwise."""
        budget = self._budget()
        buffered = collections.deque(sorted(set(self._acks))) if used + size > budget else None
        while used + size > budget:
            row = self.db.execute("SELECT seq, size FROM msg WHERE acked = 1 ORDER BY seq LIMIT 1").fetchone()
            while row is None and buffered:  # acked, but storage refused to write the ack yet
                row = self.db.execute("SELECT seq, size FROM msg WHERE seq = ?", (buffered.popleft(),)).fetchone()
            if row is not None:
                self.db.execute("DELETE FROM msg WHERE seq = ?", (row[0],))
                used -= row[1]
                continue
            row = self.db.execute(
                "SELECT seq, size, payload FROM msg WHERE kind = 'telemetry' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO dropped (seq, hash) VALUES (?, ?)", (row[0], signing_input_hash(row[2]))
                )
                self.db.execute("DELETE FROM msg WHERE seq = ?", (row[0],))
                used -= row[1]
                continue
            if kind == "telemetry":
                return None
            why = (
                f"the file system holds only {budget} bytes: {self.storage_error}"
                if self._cap is not None
                else f"{used} of {self.max_bytes} bytes"
            )
            raise OutboxFull(
                f"outbox full ({why}) with records that must not be dropped; the platform has not acknowledged them"
            )
        return used

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
        """Write buffered acks, a bounded batch per transaction (a big one may not fit in the
        room a full disk leaves).  Never raises for a refusal of storage (the MQTT drain thread
        calls it): the acks stay buffered, pending() keeps skipping them, and thinning treats
        them as acked."""
        with self._lock:
            if not self._acks and not self._kv_pending:
                return
            while True:
                batch = [self._acks.popleft() for _ in range(min(len(self._acks), _ACK_BATCH))]
                try:
                    self._write(functools.partial(self._mark_acked, batch))
                except StorageFull:
                    self._acks.extendleft(reversed(batch))
                    return
                if not self._acks:
                    return

    def _mark_acked(self, batch: list[int]) -> None:
        if batch:
            self.db.executemany("UPDATE msg SET acked = 1 WHERE seq = ?", [(s,) for s in batch])

    def get(self, seq: int) -> tuple[int, str, str, bytes] | None:
        with self._lock:
            r = self.db.execute("SELECT seq, kind, topic, payload FROM msg WHERE seq = ?", (seq,)).fetchone()
        return None if r is None else (r[0], r[1], r[2], bytes(r[3]))

    def depth(self) -> int:
        with self._lock:
            self.flush_acks()
            n = int(self.db.execute("SELECT COUNT(*) FROM msg WHERE acked = 0").fetchone()[0])
            buffered = sorted(set(self._acks))  # acks that storage refused to write yet
            for i in range(0, len(buffered), 500):
                chunk = buffered[i : i + 500]
                q = f"SELECT COUNT(*) FROM msg WHERE acked = 0 AND seq IN ({','.join('?' * len(chunk))})"
                n -= int(self.db.execute(q, chunk).fetchone()[0])
            return n

    def oldest(self) -> int | None:
        with self._lock:
            self.flush_acks()
            first = self.pending(1)
            return first[0][0] if first else None

    def last(self) -> tuple[int, bytes] | None:
        with self._lock:
            r = self.db.execute("SELECT seq, payload FROM msg ORDER BY seq DESC LIMIT 1").fetchone()
        return None if r is None else (r[0], bytes(r[1]))

    def take_dropped(self) -> list[tuple[int, str]]:
        """Telemetry dropped by thinning and not yet reported (reported ones are remembered).
        While storage refuses to remember the report, nothing is handed over: the drops come
        again once it accepts."""
        with self._lock:
            rows = self.db.execute("SELECT seq, hash FROM dropped WHERE taken = 0 ORDER BY seq").fetchall()
            if not rows:
                return []
            try:
                self._write(lambda: self.db.execute("UPDATE dropped SET taken = 1 WHERE seq <= ?", (rows[-1][0],)))
            except StorageFull:
                return []
        return [(r[0], r[1]) for r in rows]

    def bytes_used(self) -> int:
        return self._bytes

    # ------------------------------------------------------------ chain, epoch, state

    def chain(self) -> tuple[int, str] | None:
        c = self.kv_get("chain")
        return None if c is None else (c["seq"], c["head"])

    def next_epoch(self) -> int:
        """Increment and return the start counter, durably, before any message is signed.
        Raises StorageFull if it cannot be stored (signing must not start then)."""
        with self._lock:
            epoch = int(self.kv_get("epoch") or 0) + 1
            self._write(lambda: self._kv_put("epoch", epoch))
            return epoch

    def kv_get(self, key: str) -> Any:
        with self._lock:
            if key in self._kv_pending:
                return self._kv_pending[key]
            r = self.db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if r is None else json.loads(r[0])

    def kv_put(self, key: str, value: Any) -> bool:
        """Store a piece of state durably; True when stored.  If storage refuses, the value is
        kept (kv_get returns it), written with the next transaction that succeeds, and False
        is returned: state never crashes the gateway (see `state()` for the refusal)."""
        with self._lock:
            self._kv_pending[key] = value
            try:
                self._write(lambda: None)
            except StorageFull:
                return False
            return True

    def _kv_put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        with self._lock:
            self.flush_acks()
            self.db.close()
