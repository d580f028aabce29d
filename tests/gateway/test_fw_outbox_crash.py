"""Crash consistency of the ESP32 flash outbox (firmware/pilefw/outbox.py), CPython only.

The workloads run once on an in-memory file system that logs every mutation as atomic units:
one per byte written, one per file create, remove, rename and mkdir.  A power cut after unit k
is the state after the first k units (a torn write keeps a prefix of its bytes; LittleFS and a
journaled POSIX file system persist less, never more, out of order).  For every k the outbox is
reopened from that state and checked against what the API calls that had returned promised.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.append(str(Path(__file__).resolve().parents[2] / "firmware"))
from pilefw.outbox import Outbox, OutboxFull

D = "/ob"


class MemFS:
    """An in-memory fs for Outbox(fs=...) whose mutations are logged unit by unit."""

    def __init__(
        self, files: dict[str, bytearray] | None = None, dirs: set[str] | None = None, limit: int | None = None
    ):
        self.files = {k: bytearray(v) for k, v in (files or {}).items()}
        self.dirs = set(dirs or ())
        self.log: list[tuple] = []
        self.limit = limit  # a flash partition of this many bytes: writes beyond fail
        self.dirty: set[str] = set()  # files written since their last sync

    def snapshot(self) -> tuple[dict[str, bytearray], set[str]]:
        return {k: bytearray(v) for k, v in self.files.items()}, set(self.dirs)

    def open(self, path: str, mode: str) -> Any:
        if "r" in mode:
            if path not in self.files:
                raise FileNotFoundError(path)
            return io.BytesIO(bytes(self.files[path]))
        if "w" in mode or path not in self.files:
            self.files[path] = bytearray()
            self.log.append(("create", path))
        return _Appender(self, path)

    def listdir(self, path: str) -> list[str]:
        if path not in self.dirs:
            raise FileNotFoundError(path)
        return [p[len(path) + 1 :] for p in self.files if p.rsplit("/", 1)[0] == path]

    def remove(self, path: str) -> None:
        # POSIX may persist a deletion before unsynced data: nothing may be pending then.
        assert not self.dirty - {path}, f"removing {path} while {self.dirty} are not synced"
        self.dirty.discard(path)
        del self.files[path]
        self.log.append(("remove", path))

    def rename(self, old: str, new: str) -> None:
        self.files[new] = self.files.pop(old)
        self.log.append(("rename", old, new))

    def stat(self, path: str) -> tuple:
        if path in self.dirs:
            return (0o040755, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if path not in self.files:
            raise FileNotFoundError(path)
        return (0o100644, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)

    def mkdir(self, path: str) -> None:
        self.dirs.add(path)
        self.log.append(("mkdir", path))

    def sync(self, target: Any) -> None:
        """Bytes are 'on flash' in write order anyway; only the sync discipline is tracked."""
        if isinstance(target, _Appender):
            self.dirty.discard(target.path)


class _Appender:
    def __init__(self, fs: MemFS, path: str):
        self.fs, self.path = fs, path

    def write(self, data: Any) -> int:
        limit = self.fs.limit
        if limit is not None and sum(map(len, self.fs.files.values())) + len(data) > limit:
            raise OSError(28, "no space left on the partition")
        buf = self.fs.files[self.path]
        self.fs.dirty.add(self.path)
        for b in bytes(data):
            buf.append(b)
            self.fs.log.append(("byte", self.path, b))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def apply_unit(fs: MemFS, u: tuple) -> None:
    op = u[0]
    if op == "byte":
        fs.files[u[1]].append(u[2])
    elif op == "create":
        fs.files[u[1]] = bytearray()
    elif op == "remove":
        del fs.files[u[1]]
    elif op == "rename":
        fs.files[u[2]] = fs.files.pop(u[1])
    elif op == "mkdir":
        fs.dirs.add(u[1])


def payload(seq: int, size: int = 24) -> bytes:
    return b"h." + bytes([97 + seq % 26]) * size + b"%d.s" % seq


class Run:
    """Drives an outbox like the publisher does and records, per API call, the log positions
    where it started and returned."""

    def __init__(self, **kw: Any):
        self.fs = MemFS(limit=kw["max_bytes"])  # the bound holds at every instant
        self.kw = kw
        self.ob = Outbox(D, fs=self.fs, **kw)
        self.calls: list[tuple] = []  # (op, arg, start, end, result)
        self.kinds: dict[int, str] = {}
        self.seq = 0

    def _call(self, op: str, arg: Any, fn: Any) -> Any:
        start = len(self.fs.log)
        try:
            result = fn()
        except OutboxFull as e:
            self.calls.append((op, arg, start, len(self.fs.log), False))
            raise e
        self.calls.append((op, arg, start, len(self.fs.log), result))
        assert not self.fs.dirty, f"{op}({arg}) returned with {self.fs.dirty} not synced"
        return result

    def put(self, kind: str, size: int = 24) -> bool:
        self.seq += 1
        s = self.seq
        self.kinds[s] = kind
        ok = False
        try:
            ok = self._call("put", s, lambda: self.ob.put(s, kind, kind[0], payload(s, size)))
        finally:
            if not ok:
                del self.kinds[s]
                self.seq -= 1
        return ok

    def ack(self, seq: int) -> None:
        self._call("ack", seq, lambda: self.ob.ack(seq))

    def take(self) -> list[tuple[int, str]]:
        got = self._call("take", None, self.ob.take_dropped)
        if got:  # declare them, as the caller must
            self.put("event")
        return got


def check_state(run: Run, k: int, fs: MemFS) -> Outbox:
    """Reopen the state after unit k and check it against the calls that returned by then."""
    done = [c for c in run.calls if c[3] <= k]
    flight = [c for c in run.calls if c[2] < k < c[3]]
    assert len(flight) <= 1
    put_done = {c[1] for c in done if c[0] == "put" and c[4]}
    put_flight = {c[1] for c in flight if c[0] == "put"}
    acked = {c[1] for c in done if c[0] == "ack"}
    ack_flight = {c[1] for c in flight if c[0] == "ack"}
    # Drops handed over by take_dropped() count as declared once a later put returned (the
    # caller's "declared lost" event); until then a reboot must report them again.
    declared: set[int] = set()
    undeclared: set[int] = set()
    for c in done:
        if c[0] == "take" and c[4]:
            later = any(p[0] == "put" and p[4] and p[2] >= c[3] for p in done)
            (declared if later else undeclared).update(s for s, _ in c[4])

    ob = Outbox(D, fs=fs, **run.kw)
    where = f"cut after unit {k} of {len(run.fs.log)}"
    assert ob.errors == 0, where
    dropped = ob.take_dropped()
    for s, h in dropped:
        assert run.kinds[s] == "telemetry", where
        assert h == hashlib.sha256(payload(s)).hexdigest(), where
    reported = {s for s, _ in dropped}
    assert undeclared <= reported, f"{where}: drops {undeclared - reported} forgotten"
    assert not reported & declared, f"{where}: drops declared twice"
    lost = declared | reported
    pend = [p[0] for p in ob.pending(10_000)]
    assert pend == sorted(set(pend)), where
    assert set(pend) <= put_done | put_flight, where
    for p in ob.pending(10_000):
        assert p == (p[0], run.kinds[p[0]], run.kinds[p[0]][0], payload(p[0])), where
    for s in put_done:
        rec = ob.get(s)
        assert rec is None or rec == (s, run.kinds[s], run.kinds[s][0], payload(s)), where
        if s in acked:
            assert s not in pend, where
        elif s in lost:
            assert run.kinds[s] == "telemetry" and s not in pend and rec is None, where
        elif s not in ack_flight:
            assert s in pend and rec is not None, f"{where}: seq {s} lost"
    newest = max(put_done | {s for s in put_flight if ob.get(s) or s in pend}, default=None)
    if newest is None:
        assert ob.last() is None, where
    else:
        assert ob.last() == (newest, payload(newest)), where
    assert ob.bytes_used() <= ob.max_bytes, where
    return ob


def sweep(run: Run, continue_every: int = 7) -> int:
    """Check every cut point of run; every few, also continue writing after the reboot."""
    fs = MemFS()
    for k in range(len(run.fs.log) + 1):
        if k:
            apply_unit(fs, run.fs.log[k - 1])
        state = MemFS(*fs.snapshot())
        ob = check_state(run, k, state)
        if k % continue_every == 0:
            for p in ob.pending(10_000):  # the link is back: everything gets its PUBACK
                ob.ack(p[0])
            last = ob.last()
            nxt = (last[0] if last else 0) + 100
            assert ob.put(nxt, "billing", "b", payload(nxt))
            ob.close()
            again = Outbox(D, fs=state, **run.kw)
            assert again.errors == 0 and again.torn == 0
            assert again.last() == (nxt, payload(nxt))
    return len(run.fs.log)


def workload_plain() -> Run:
    """Mixed kinds, out-of-order acks, segment rotation; never full."""
    r = Run(max_bytes=64 * 1024, segment_bytes=256)
    r.put("birth")
    r.put("telemetry")
    r.put("billing")
    r.ack(1)
    r.put("telemetry")
    r.ack(3)
    r.ack(2)
    r.put("event")
    r.put("telemetry")
    r.ack(6)
    r.put("billing")
    r.put("telemetry")
    r.ack(4)
    r.ack(5)
    r.put("ack")
    r.ack(8)
    return r


def workload_full() -> Run:
    """Small budget: reclaim of acked segments, thinning, declarations, OutboxFull."""
    r = Run(max_bytes=1024, segment_bytes=256)
    for i in range(40):
        r.put("billing" if i % 6 == 5 else "telemetry")
        r.take()
        if i % 3 == 2:  # the link comes and goes: some older records get their PUBACK
            for p in r.ob.pending(100):
                if p[0] < r.seq - 3 and (p[1] != "telemetry" or p[0] % 2):
                    r.ack(p[0])
    with pytest.raises(OutboxFull):
        for _ in range(40):
            r.put("billing")
    assert r.put("telemetry") is False
    return r


def test_cut_at_every_unit_of_a_plain_workload() -> None:
    run = workload_plain()
    units = sweep(run)
    assert units > 500
    assert len({u[1] for u in run.fs.log if u[0] == "create"}) >= 4  # it did rotate


def test_cut_at_every_unit_while_full_thinning_and_declaring() -> None:
    run = workload_full()
    ops = {u[0] for u in run.fs.log}
    assert {"byte", "create", "remove"} <= ops
    assert sum(1 for c in run.calls if c[0] == "take" and c[4]) >= 3  # thinned, declared
    assert sum(1 for c in run.calls if c[0] == "ack") >= 10
    sweep(run, continue_every=11)


def test_cut_during_recovery_of_a_torn_tail() -> None:
    """A second cut at every step of open()'s torn-tail repair; the next open still holds."""
    run = workload_plain()
    fs = MemFS()
    tried = 0
    for k in range(len(run.fs.log) + 1):
        if k:
            apply_unit(fs, run.fs.log[k - 1])
        if k % 13:
            continue
        first = MemFS(*fs.snapshot())
        ob = Outbox(D, fs=first, **run.kw)
        if not ob.torn or not any(u[0] == "rename" for u in first.log):
            continue
        tried += 1
        base = MemFS(*fs.snapshot())
        for j in range(len(first.log) + 1):
            state = MemFS(*base.snapshot())
            for u in first.log[:j]:
                apply_unit(state, u)
            check_state(run, k, state)
    assert tried >= 5


def test_truncating_the_newest_file_on_a_real_fs(tmp_path: Path) -> None:
    """The default OsFS path: after each call, cut the file it appended to at every offset."""
    d = tmp_path / "ob"
    ob = Outbox(str(d), max_bytes=64 * 1024, segment_bytes=256)
    plan = [
        ("put", 1, "billing"),
        ("put", 2, "telemetry"),
        ("ack", 1, None),
        ("put", 3, "event"),
        ("put", 4, "telemetry"),
        ("ack", 2, None),
        ("put", 5, "billing"),
    ]
    snaps = []
    for op, s, kind in plan:
        before = {p.name: p.stat().st_size for p in d.iterdir()}
        if op == "put":
            ob.put(s, kind, "x", payload(s, 40))
        else:
            ob.ack(s)
        after = {p.name: p.stat().st_size for p in d.iterdir()}
        grown = [n for n in after if after[n] != before.get(n)]
        assert len(grown) == 1
        snaps.append((op, s, grown[0], before.get(grown[0], 0), after[grown[0]]))
        shutil.copytree(d, tmp_path / f"snap{len(snaps)}")
    ob.close()
    cases = 0
    for i, (op, s, name, a, b) in enumerate(snaps):
        for cut in range(a, b):
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tmp_path / f"snap{i + 1}", work)
            with open(work / name, "r+b") as f:
                f.truncate(cut)
            ob = Outbox(str(work), max_bytes=64 * 1024, segment_bytes=256)
            assert ob.errors == 0 and ob.torn == (1 if cut > a else 0)
            puts = [x for x in plan[:i] if x[0] == "put"]
            acks = {x[1] for x in plan[:i] if x[0] == "ack"}
            pend = [p[0] for p in ob.pending(100)]
            expect = [x[1] for x in puts if x[1] not in acks]
            if op == "ack":
                assert pend in (expect, [e for e in expect if e != s])
            else:
                assert pend == expect
            for x in puts:
                assert ob.get(x[1]) == (x[1], x[2], "x", payload(x[1], 40))
            newest = puts[-1][1] if puts else None
            assert (ob.last() or (None,))[0] == newest
            assert not any(n.endswith(".tmp") for n in os.listdir(work))
            if a:
                assert (work / name).stat().st_size == a  # cut back to the last record
            else:
                assert not (work / name).exists() or cut == 0  # nothing valid: removed
            ob.close()
            cases += 1
    assert cases > 300


def _fresh_memfs_outbox() -> tuple[MemFS, dict[int, tuple]]:
    fs = MemFS()
    ob = Outbox(D, fs=fs, max_bytes=64 * 1024, segment_bytes=300)
    recs = {}
    for s in range(1, 25):
        kind = ("telemetry", "billing", "event")[s % 3]
        ob.put(s, kind, "t/" + kind, payload(s, 30))
        recs[s] = (s, kind, "t/" + kind, payload(s, 30))
        if s % 4 == 0:
            ob.ack(s - 1)
    ob.close()
    return fs, recs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damage_is_never_served_and_never_crashes_open(data: Any) -> None:
    fs, recs = _fresh_memfs_outbox()
    names = sorted(fs.files)
    flips = data.draw(
        st.dictionaries(st.tuples(st.sampled_from(names), st.integers(0, 299)), st.integers(1, 255), max_size=6)
    )
    changed = False
    for (name, off), mask in flips.items():
        buf = fs.files[name]
        if off < len(buf):
            buf[off] ^= mask
            changed = True
    if data.draw(st.booleans()):
        name = data.draw(st.sampled_from(names))
        fs.files[name] += data.draw(st.binary(max_size=80))
    ob = Outbox(D, fs=fs, max_bytes=64 * 1024, segment_bytes=300)
    if changed:
        assert ob.errors + ob.torn >= 1
    for s, rec in recs.items():
        got = ob.get(s)
        assert got is None or got == rec
    for p in ob.pending(1000):
        assert p == recs[p[0]]
    last = ob.last()
    assert last is None or last == (last[0], recs[last[0]][3])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text("tk.", min_size=1, max_size=1), st.binary(max_size=400)), max_size=4))
def test_open_never_crashes_on_arbitrary_files(files: list[tuple[str, bytes]]) -> None:
    fs = MemFS(dirs={D})
    for i, (prefix, content) in enumerate(files):
        fs.files[f"{D}/{prefix}{i:08x}.seg"] = bytearray(content)
    ob = Outbox(D, fs=fs)
    assert ob.depth() == 0 or ob.pending()
    assert ob.put(1 << 40, "billing", "b", b"x")
    assert Outbox(D, fs=fs).last() == (1 << 40, b"x")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["telemetry"] * 4 + ["billing", "event"]), st.integers(10, 120)),
        st.tuples(st.just("ack"), st.integers(0, 6), st.just(0)),
        st.tuples(st.just("reopen"), st.just(""), st.just(0)),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_bounded_thinning_model(ops: list[tuple]) -> None:
    """Random puts/acks/reboots on a tiny budget: size bounded, billing and events never
    dropped, telemetry dropped oldest first and always declared, nothing else lost."""
    kw = {"max_bytes": 2048, "segment_bytes": 256}
    fs = MemFS(limit=kw["max_bytes"])
    ob = Outbox(D, fs=fs, **kw)
    seq = 0
    stored: dict[int, tuple[str, bytes]] = {}
    acked: set[int] = set()
    dropped: dict[int, str] = {}
    for op, a, b in ops:
        if op == "put":
            seq += 1
            body = payload(seq, b)
            try:
                ok = ob.put(seq, a, a, body)
            except OutboxFull:
                assert a != "telemetry"
                ok = False
            if ok:
                stored[seq] = (a, body)
            else:
                seq -= 1
        elif op == "ack":
            pend = ob.pending(8)
            if pend:
                s = pend[min(a, len(pend) - 1)][0]
                ob.ack(s)
                acked.add(s)
        else:
            ob.close()
            ob = Outbox(D, fs=fs, **kw)
            assert ob.errors == 0 and ob.torn == 0
        for s, h in ob.take_dropped():
            assert stored[s][0] == "telemetry" and s not in acked and s not in dropped
            assert h == hashlib.sha256(stored[s][1]).hexdigest()
            # oldest first: nothing older than it is still waiting as telemetry
            assert all(p[0] > s or p[1] != "telemetry" for p in ob.pending(10_000))
            dropped[s] = h
        assert ob.bytes_used() <= kw["max_bytes"]
        pend = {p[0] for p in ob.pending(10_000)}
        assert pend == set(stored) - acked - set(dropped)
        assert ob.depth() == len(pend)
    if stored:
        assert ob.last() == (max(stored), stored[max(stored)][1])


def test_budget_holds_at_every_instant_with_large_segments() -> None:
    """Thinning a big segment writes many drop records before the segment can go: the room
    for them was reserved when each telemetry record was put (the partition would overflow)."""
    fs = MemFS(limit=2048)
    ob = Outbox(D, fs=fs, max_bytes=2048, segment_bytes=1024)
    drops = 0
    for s in range(1, 200):
        assert ob.put(s, "telemetry", "t", payload(s, 60))
        got = ob.take_dropped()
        drops += len(got)
        if got:
            assert [g[0] for g in got] == list(range(got[0][0], got[0][0] + len(got)))
        if s % 10 == 0 and s > 30:
            ob.ack(s - 30)  # a trickle of PUBACKs, out of order
    assert drops > 100


def test_a_long_run_of_put_and_ack_stays_in_budget_and_reopens_with_its_head(tmp_path: Path) -> None:
    """2,000 messages of 2 KiB, each acked at once (a gateway that is online): segments are
    recycled, nothing is thrown away, and a reopened outbox knows the newest seq (the chain
    head) and holds nothing unsent. Speed is `make bench`'s business, not this test's."""
    ob = Outbox(str(tmp_path / "ob"))
    body = b"x" * 2048
    n = 2000
    for s in range(1, n + 1):
        assert ob.put(s, "telemetry", "pg/v1/site/gw/telemetry/P01", body)
        ob.ack(s)
    assert ob.depth() == 0 and ob.bytes_used() <= 512 * 1024
    assert ob.take_dropped() == []
    ob.close()
    ob = Outbox(str(tmp_path / "ob"))
    try:
        assert ob.depth() == 0
        last = ob.last()
        assert last is not None and last[0] == n
    finally:
        ob.close()
