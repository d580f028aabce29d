"""The Pi's SQLite outbox: durability contract, thinning, chain head, state."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
from smallfs import small_fs

from pilegate.outbox import Outbox, OutboxFull, StorageFull, signing_input_hash


def jws(seq: int, size: int = 100) -> bytes:
    return f"hdr.{'p' * size}{seq}.sig{seq}".encode()


def test_put_pending_ack_oldest_first(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    for s in range(1, 6):
        assert ob.put(s, "telemetry", "t/telemetry", jws(s), chain_head=(s, f"h{s}"))
    assert [m[0] for m in ob.pending(3)] == [1, 2, 3]
    ob.ack(1)
    ob.ack(3)
    assert [m[0] for m in ob.pending(10)] == [2, 4, 5]
    assert [m[0] for m in ob.pending(10, after=2)] == [4, 5]
    assert ob.depth() == 3 and ob.oldest() == 2
    assert ob.get(1) is not None  # acked, kept for resend
    assert ob.last()[0] == 5 and ob.chain() == (5, "h5")
    with pytest.raises(ValueError):
        ob.put(5, "event", "t/event", jws(5))


def test_database_is_private(tmp_path):
    Outbox(tmp_path / "o.db").close()
    assert (tmp_path / "o.db").stat().st_mode & 0o077 == 0


def test_thinning_drops_acked_then_oldest_telemetry_never_billing(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10 * 200)
    ob.put(1, "billing", "t/billing", jws(1))
    ob.put(2, "telemetry", "t/telemetry", jws(2))
    ob.put(3, "event", "t/event", jws(3))
    ob.put(4, "telemetry", "t/telemetry", jws(4))
    ob.ack(3)
    for s in range(5, 25):
        ob.put(s, "telemetry", "t/telemetry", jws(s))
    assert ob.get(3) is None  # acked went first
    assert ob.get(1) is not None  # billing never dropped
    dropped = ob.take_dropped()
    assert [d[0] for d in dropped][:2] == [2, 4]  # oldest telemetry next
    assert dropped[0][1] == hashlib.sha256(b"hdr." + b"p" * 100 + b"2").hexdigest()
    assert ob.take_dropped() == []
    assert ob.bytes_used() <= 10 * 200


def test_full_of_billing_refuses_rather_than_losing(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=3 * 200)
    for s in range(1, 4):
        ob.put(s, "billing", "t/billing", jws(s))
    assert ob.put(4, "telemetry", "t/telemetry", jws(4)) is False
    with pytest.raises(OutboxFull):
        ob.put(4, "billing", "t/billing", jws(4))
    assert [m[0] for m in ob.pending(10)] == [1, 2, 3]


def test_epoch_and_kv_survive_reopen(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    assert ob.next_epoch() == 1 and ob.next_epoch() == 2
    ob.kv_put("metering", {"piles": {"P1": {"bound": "123"}}})
    ob.close()
    ob = Outbox(tmp_path / "o.db")
    assert ob.next_epoch() == 3
    assert ob.kv_get("metering") == {"piles": {"P1": {"bound": "123"}}}


def test_signing_input_hash():
    assert signing_input_hash(b"a.b.c") == hashlib.sha256(b"a.b").hexdigest()


def test_kill_9_while_writing_loses_nothing_that_was_stored(tmp_path):
    """A child writes as fast as it can and reports each seq after put() returned; it is
    SIGKILLed mid-stream. Everything it reported is intact, and the chain head matches."""
    db = tmp_path / "o.db"
    code = textwrap.dedent(f"""
        import sys
        from pilegate.outbox import Outbox
        ob = Outbox({str(db)!r})
        s = 0
        while True:
            s += 1
            ob.put(s, "telemetry", "t", (b"h." + b"x" * 500 + str(s).encode() + b".s"), chain_head=(s, str(s)))
            print(s, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    reported = 0
    for line in proc.stdout:
        reported = int(line)
        if reported >= 200:
            break
    os.kill(proc.pid, 9)
    proc.wait()
    ob = Outbox(db)
    last = ob.last()[0]
    assert last >= reported
    assert [m[0] for m in ob.pending(100000)] == list(range(1, last + 1))
    assert ob.chain() == (last, str(last))
    for seq in (1, reported):
        assert ob.get(seq)[3].endswith(str(seq).encode() + b".s")


def test_a_group_commit_stores_the_longest_prefix_that_fits(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=3 * 200)
    ob.put(1, "billing", "t/billing", jws(1))
    ob.put(2, "billing", "t/billing", jws(2))
    batch = [
        (3, "telemetry", "t/telemetry", jws(3), "h3"),
        (4, "telemetry", "t/telemetry", jws(4), "h4"),
        (5, "event", "t/event", jws(5), "h5"),
    ]
    assert ob.put_many(batch) == 1  # seq 4 does not fit: 4 and 5 wait, no hole
    assert ob.chain() == (3, "h3") and ob.last()[0] == 3
    ob.ack(1)
    ob.ack(2)
    assert ob.put_many(batch[1:]) == 2 and ob.chain() == (5, "h5")


# ---------------------------------------------------------------- a real full disk (defect #1)

PAYLOAD = 3000


def _put(ob: Outbox, seq: int, kind: str) -> bool:
    return ob.put(seq, kind, f"t/{kind}", jws(seq, PAYLOAD), chain_head=(seq, f"h{seq}"))


def test_disk_full_thins_refuses_and_resumes_on_a_real_small_fs(tmp_path):
    """The defect: on a full disk SQLite rolled the group commit back by itself, the outbox's
    ROLLBACK raised "cannot rollback - no transaction is active" and signing stopped for good.
    Now: telemetry is thinned and declared, billing is refused as OutboxFull naming the
    cause, nothing half-stored, and the outbox works again when space returns."""
    with small_fs(tmp_path / "fs", 2048) as fs:
        fs.fill(leave=1024 * 1024)  # something else has taken half the disk
        ob = Outbox(fs.path / "o.db", reserve_bytes=256 * 1024)
        stored: list[int] = []
        billing: list[int] = []
        declared: list[int] = []
        refusal = None
        seq = 0
        n = 0
        while refusal is None and n < 5000:  # broker down: nothing is acked
            n += 1
            seq += 1
            kind = "billing" if n % 4 == 0 else "telemetry"
            try:
                ok = _put(ob, seq, kind)
            except OutboxFull as exc:
                refusal = exc
                break
            if not ok:  # refused only when no older telemetry is left to thin; the seq is not used
                assert all(m[1] != "telemetry" for m in ob.pending(100_000))
                seq -= 1
                continue
            stored.append(seq)
            billing += [seq] if kind == "billing" else []
            declared += [s for s, _ in ob.take_dropped()]
        assert refusal is not None, "the disk never filled"
        assert ob.storage_errors >= 1 and declared, "the full disk thinned telemetry"
        assert "database or disk is full" in str(refusal) and str(fs.path / "o.db") in str(refusal)
        state = ob.state()
        assert state["ok"] is False and "free space in data_dir" in state["error"]
        assert state["budget_bytes"] < state["max_bytes"]
        # nothing of the refused record is stored, the chain head is the newest stored one
        pending = [m[0] for m in ob.pending(100_000)]
        assert sorted(pending + declared) == stored
        assert set(billing) <= set(pending)
        assert ob.chain() == (stored[-1], f"h{stored[-1]}") and ob.last()[0] == stored[-1]
        assert ob.get(seq) is None

        # the state store keeps working in memory and says so
        assert ob.kv_put("core", {"bound": "123"}) in (True, False)
        assert ob.kv_get("core") == {"bound": "123"}

        # space returns (the runaway log is deleted): the same billing record is stored now
        fs.free()
        assert _put(ob, seq, "billing")
        stored.append(seq)
        billing.append(seq)
        assert ob.state()["ok"] is True and ob.state()["budget_bytes"] == ob.max_bytes
        assert ob.reserve_path.exists()

        # the broker returns: everything is acked, and the outbox drains to empty
        for s in [*pending, seq]:
            ob.ack(s)
        assert ob.depth() == 0
        ob.close()

        ob = Outbox(fs.path / "o.db", reserve_bytes=256 * 1024)
        assert ob.chain() == (seq, f"h{seq}") and ob.kv_get("core") == {"bound": "123"}
        for s in billing:
            assert ob.get(s) is not None
        ob.close()


def test_broker_return_alone_frees_room_on_a_full_disk(tmp_path):
    """The disk stays full (the filler is never deleted): acks from the platform are written in
    small transactions, and their space is reused, so billing is accepted again without a
    restart while the budget stays fitted to the disk."""
    with small_fs(tmp_path / "fs", 2048) as fs:
        fs.fill(leave=1024 * 1024)
        ob = Outbox(fs.path / "o.db", reserve_bytes=256 * 1024)
        seq = 0
        with pytest.raises(OutboxFull):
            while seq < 5000:
                seq += 1
                assert _put(ob, seq, "billing")
        seq -= 1
        assert ob.state()["ok"] is False
        for s, *_ in ob.pending(100_000):
            ob.ack(s)
        for _ in range(50):
            seq += 1
            assert _put(ob, seq, "billing")
        assert ob.depth() == 50 and ob.chain() == (seq, f"h{seq}")
        assert [m[0] for m in ob.pending(100)] == list(range(seq - 49, seq + 1))
        ob.close()


def test_state_refused_by_a_full_disk_is_kept_and_written_later(tmp_path):
    with small_fs(tmp_path / "fs", 1024) as fs:
        ob = Outbox(fs.path / "o.db", reserve_bytes=0)
        fs.fill()
        big = {"sessions": "x" * 200_000}
        assert ob.kv_put("core", big) is False  # no crash: refused, kept, reported
        assert ob.kv_get("core") == big
        state = ob.state()
        assert state["ok"] is False and state["state_pending"] == ["core"]
        assert "database or disk is full" in state["error"]
        with pytest.raises(StorageFull) as caught:  # the start counter must be stored, or nothing is signed
            ob.next_epoch()
        assert isinstance(caught.value, OutboxFull) and "database or disk is full" in caught.value.cause
        fs.free()
        ob.flush_acks()  # any later write carries the state with it
        assert ob.state()["state_pending"] == [] and ob.state()["ok"] is True
        ob.close()
        assert Outbox(fs.path / "o.db", reserve_bytes=0).kv_get("core") == big


def test_storage_refusing_outright_raises_outbox_full_and_stores_nothing(tmp_path):
    """No reserve and no room at all: the write is refused whole, as an OutboxFull naming the
    storage's cause, the chain head stays; the same write succeeds once the space is back,
    without reopening."""
    with small_fs(tmp_path / "fs", 1024) as fs:
        ob = Outbox(fs.path / "o.db", reserve_bytes=0)
        assert _put(ob, 1, "billing")
        fs.fill()
        big = (2, "billing", "t/billing", jws(2, 300_000), "h2")
        with pytest.raises(OutboxFull, match="database or disk is full"):
            ob.put_many([big])
        assert ob.chain() == (1, "h1") and ob.last()[0] == 1 and ob.get(2) is None
        assert ob.state()["ok"] is False and ob.state()["errors"] >= 1
        fs.free()
        assert ob.put_many([big]) == 1
        assert ob.chain() == (2, "h2") and [m[0] for m in ob.pending(10)] == [1, 2]
        ob.close()
