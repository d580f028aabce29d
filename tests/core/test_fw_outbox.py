"""The ESP32 flash outbox (firmware/pilefw/outbox.py), on CPython and on MicroPython.

Real files: a fresh temporary directory on CPython, MicroPython's in-memory /tmp under the
WebAssembly runner.  Crash-consistency sweeps are CPython-only (tests/gateway).
"""

import hashlib
import os

try:
    from pilefw import outbox as obx
except ImportError:  # CPython from a checkout: only pilecore is installed, pilefw sits beside it
    import sys

    sys.path.append(__file__.rsplit("/", 3)[0] + "/firmware")
    from pilefw import outbox as obx

from mpytest import raises

Outbox = obx.Outbox
OutboxFull = obx.OutboxFull

_dirs = [0]


def _wipe(path):
    """Remove an outbox directory (and its private parent made by tempfile on CPython)."""
    try:
        for n in os.listdir(path):
            os.remove(path + "/" + n)
        os.rmdir(path)
    except OSError:
        pass
    parent = path.rsplit("/", 1)[0]
    if "/fwoutbox-" in parent:
        try:
            os.rmdir(parent)
        except OSError:
            pass


def fresh(tag):
    """An empty directory path (not created: the outbox creates it)."""
    _dirs[0] += 1
    try:
        import tempfile

        return "%s/%s%d" % (tempfile.mkdtemp(prefix="fwoutbox-"), tag, _dirs[0])
    except ImportError:  # MicroPython: an in-memory /tmp that lives as long as the run
        pass
    try:
        os.mkdir("/tmp/fwoutbox")
    except OSError:
        pass
    path = "/tmp/fwoutbox/%s%d" % (tag, _dirs[0])
    _wipe(path)
    return path


def jws(seq, size=60):
    return b"eyJhbGciOiJFUzI1NiJ9." + (b"p" * size) + (b"%d" % seq) + b".sig"


def hexdigest(data):
    return "".join("%02x" % b for b in hashlib.sha256(data).digest())


def seqs(records):
    return [r[0] for r in records]


def seg_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def size_of(path):
    return os.stat(path)[6]


def test_put_pending_ack_get_in_order_and_after_reopen():
    d = fresh("basic")
    ob = Outbox(d)
    assert ob.last() is None and ob.oldest() is None and ob.depth() == 0 and ob.pending() == []
    assert ob.put(1, "birth", "pg/v1/s/g/birth", jws(1)) is True
    assert ob.put(2, "telemetry", "pg/v1/s/g/telemetry/P01", jws(2))
    assert ob.put(3, "billing", "pg/v1/s/g/billing", jws(3))
    assert ob.put(5, "event", "pg/v1/s/g/event", jws(5))
    assert ob.put(6, "telemetry", "pg/v1/s/g/telemetry/P02", jws(6))
    assert seqs(ob.pending()) == [1, 2, 3, 5, 6]
    assert seqs(ob.pending(2)) == [1, 2]
    assert seqs(ob.pending(10, after=3)) == [5, 6]
    assert ob.pending(1)[0] == (1, "birth", "pg/v1/s/g/birth", jws(1))
    ob.ack(2)
    ob.ack(1)
    assert seqs(ob.pending()) == [3, 5, 6] and ob.depth() == 3 and ob.oldest() == 3
    assert ob.get(2) == (2, "telemetry", "pg/v1/s/g/telemetry/P01", jws(2))  # acked, kept
    assert ob.get(4) is None and ob.get(99) is None
    assert ob.last() == (6, jws(6))
    ob.close()
    ob = Outbox(d)
    assert ob.errors == 0 and ob.torn == 0
    assert seqs(ob.pending()) == [3, 5, 6] and ob.depth() == 3 and ob.oldest() == 3
    assert ob.get(1) == (1, "birth", "pg/v1/s/g/birth", jws(1))
    assert ob.last() == (6, jws(6))
    assert ob.get(5) == (5, "event", "pg/v1/s/g/event", jws(5))
    ob.close()
    _wipe(d)


def test_seq_must_grow_and_arguments_are_checked():
    d = fresh("args")
    ob = Outbox(d)
    ob.put(10, "event", "t", jws(10))
    with raises(ValueError, match="not above"):
        ob.put(10, "event", "t", jws(10))
    with raises(ValueError):
        ob.put(9, "telemetry", "t", jws(9))
    with raises(ValueError, match="unknown kind"):
        ob.put(11, "gossip", "t", jws(11))
    with raises(ValueError, match="exceeds segment_bytes"):
        ob.put(11, "event", "t", b"x" * (32 * 1024))
    small = fresh("small")
    with raises(ValueError):
        Outbox(small, max_bytes=1000, segment_bytes=2000)
    _wipe(small)
    ob.close()
    ob = Outbox(d)
    with raises(ValueError):
        ob.put(10, "event", "t", jws(10))  # the bound survives a reboot
    assert ob.put(11, "event", "t", jws(11))
    ob.close()
    _wipe(d)


def test_ack_is_durable_idempotent_and_ignores_unknown():
    d = fresh("ack")
    ob = Outbox(d)
    ob.put(1, "billing", "t", jws(1))
    ob.ack(1)
    name = d + "/" + seg_files(d)[0]
    n = size_of(name)
    assert n == obx.HDR + 1 + len(jws(1)) + obx.ACK_LEN
    ob.ack(1)
    ob.ack(7)
    assert size_of(name) == n  # nothing written for a repeat or a stranger
    ob.close()
    ob = Outbox(d)
    assert ob.depth() == 0 and ob.pending() == [] and ob.get(1) is not None
    ob.close()
    _wipe(d)


def test_record_bytes_match_the_documented_format():
    d = fresh("fmt")
    ob = Outbox(d)
    ob.put(0x0102, "billing", "ab", b"XYZ")
    ob.close()
    with open(d + "/k00000001.seg", "rb") as f:
        raw = f.read()
    assert len(raw) == 24 + 2 + 3
    assert raw[:12] == bytes([0xFA, 0xCE, 1, 1, 3, 0, 2, 0, 3, 0, 0, 0])
    assert raw[12:20] == bytes([2, 1, 0, 0, 0, 0, 0, 0])
    crc = int.from_bytes(raw[20:24], "little")
    assert crc == obx.crc32_soft(raw[:20] + raw[24:])
    assert raw[24:] == b"abXYZ"
    _wipe(d)


def test_crc32_fallback_matches_the_standard_check_value():
    assert obx.crc32_soft(b"123456789") == 0xCBF43926
    assert obx.crc32_soft(b"6789", obx.crc32_soft(b"12345")) == 0xCBF43926
    assert obx.crc32(b"123456789") == 0xCBF43926


def test_segments_rotate_and_are_named_by_stream():
    d = fresh("rot")
    ob = Outbox(d, max_bytes=64 * 1024, segment_bytes=1024)
    for s in range(1, 31):
        ob.put(s, "telemetry" if s % 3 else "billing", "t", jws(s))
    names = seg_files(d)
    assert "k00000001.seg" in names and "t00000001.seg" in names
    assert len(names) > 4
    for n in names:
        assert size_of(d + "/" + n) <= 1024
    assert seqs(ob.pending(100)) == list(range(1, 31))
    ob.close()
    ob = Outbox(d, max_bytes=64 * 1024, segment_bytes=1024)
    assert seqs(ob.pending(100)) == list(range(1, 31)) and ob.errors == 0
    ob.close()
    _wipe(d)


def test_torn_tail_is_cut_away_and_appending_continues():
    d = fresh("torn")
    ob = Outbox(d)
    for s in (1, 2, 3):
        ob.put(s, "billing", "b", jws(s))
    ob.close()
    name = d + "/k00000001.seg"
    good = size_of(name)
    with open(name, "rb") as f:
        first = f.read(40)
    with open(name, "ab") as f:
        f.write(first)  # a record cut short by a power failure
    ob = Outbox(d)
    assert ob.torn == 1 and ob.errors == 0
    assert size_of(name) == good
    assert seqs(ob.pending()) == [1, 2, 3] and ob.last() == (3, jws(3))
    assert ob.put(4, "billing", "b", jws(4))
    ob.close()
    ob = Outbox(d)
    assert ob.torn == 0 and ob.errors == 0 and seqs(ob.pending()) == [1, 2, 3, 4]
    ob.close()
    _wipe(d)


def test_a_segment_of_only_garbage_at_the_head_is_removed():
    d = fresh("junkhead")
    ob = Outbox(d)
    ob.put(1, "event", "e", jws(1))
    ob.close()
    with open(d + "/k00000002.seg", "wb") as f:
        f.write(b"\xfa\xce\x01")  # a cut right after the new file was created
    ob = Outbox(d)
    assert ob.torn == 1 and seg_files(d) == ["k00000001.seg"]
    assert ob.put(2, "event", "e", jws(2))
    assert seg_files(d) == ["k00000001.seg"]
    ob.close()
    ob = Outbox(d)
    assert seqs(ob.pending()) == [1, 2] and ob.errors == 0
    ob.close()
    _wipe(d)


def test_corruption_in_an_old_segment_is_skipped_and_counted():
    d = fresh("rot")
    ob = Outbox(d, segment_bytes=512)
    for s in range(1, 13):
        ob.put(s, "billing", "b", jws(s))
    ob.close()
    names = seg_files(d)
    assert len(names) >= 3
    name = d + "/" + names[0]
    with open(name, "rb") as f:
        raw = bytearray(f.read())
    rec = obx.HDR + 1 + len(jws(1))
    raw[rec + 30] ^= 0x40  # a bit flips inside the second record
    with open(name, "wb") as f:
        f.write(raw)
    ob = Outbox(d, segment_bytes=512)
    assert ob.errors == 1 and ob.torn == 0
    assert ob.get(2) is None
    assert seqs(ob.pending(100)) == [1] + list(range(3, 13))
    ob.close()
    _wipe(d)


def test_open_survives_garbage_files():
    d = fresh("junk")
    os.mkdir(d)
    junk = bytes((i * 37 + 11) & 0xFF for i in range(3000))
    for name in ("k00000001.seg", "t00000004.seg", "notes.txt", "kzzzzzzzz.seg"):
        with open(d + "/" + name, "wb") as f:
            f.write(junk)
    with open(d + "/k00000002.seg", "wb") as f:
        f.write(b"\xfa\xce" * 40)
    ob = Outbox(d)
    assert ob.errors == 1 and ob.torn == 2  # k1 damaged; k2 and t4 are stream heads
    assert ob.depth() == 0 and ob.last() is None
    assert ob.put(1, "billing", "b", jws(1))
    assert "k00000003.seg" in os.listdir(d)  # not appended after k1's garbage
    ob.close()
    ob = Outbox(d)
    assert seqs(ob.pending()) == [1] and ob.errors == 1
    assert "notes.txt" in os.listdir(d)  # foreign files are left alone
    ob.close()
    _wipe(d)


def test_acked_space_is_reclaimed_before_any_thinning():
    d = fresh("reclaim")
    ob = Outbox(d, max_bytes=4096, segment_bytes=512)
    for s in range(1, 200):
        assert ob.put(s, "telemetry" if s % 4 else "billing", "t", jws(s))
        ob.ack(s)
        assert ob.bytes_used() <= 4096
    assert ob.take_dropped() == []
    assert ob.depth() == 0 and ob.last() == (199, jws(199))
    assert ob.get(199) is not None and ob.get(1) is None
    assert ob.bytes_used() > 4096 - 2 * 512  # acked records are kept until room is needed
    kept = [s for s in range(1, 200) if ob.get(s) is not None]
    assert kept[-1] == 199 and len(kept) > 25
    ob.close()
    ob = Outbox(d, max_bytes=4096, segment_bytes=512)
    assert ob.last() == (199, jws(199)) and ob.depth() == 0
    ob.close()
    _wipe(d)


def test_thinning_drops_oldest_telemetry_never_billing():
    d = fresh("thin")
    ob = Outbox(d, max_bytes=4096, segment_bytes=512)
    kinds = {}
    dropped = []
    for s in range(1, 80):
        k = "billing" if s % 5 == 0 else "telemetry"
        kinds[s] = k
        assert ob.put(s, k, "t", jws(s))
        dropped += ob.take_dropped()
        assert ob.bytes_used() <= 4096
    assert dropped, "the outbox never filled up"
    dseqs = seqs(dropped)
    assert dseqs == sorted(dseqs)
    for seq, h in dropped:
        assert kinds[seq] == "telemetry"
        assert h == hexdigest(jws(seq))
        assert ob.get(seq) is None
    pend = seqs(ob.pending(1000))
    assert [s for s in range(1, 80) if s % 5 == 0] == [s for s in pend if kinds[s] == "billing"]
    # oldest first: every telemetry record still pending is newer than every dropped one
    assert min(s for s in pend if kinds[s] == "telemetry") > max(dseqs)
    assert sorted(pend + dseqs) == list(range(1, 80))
    assert ob.take_dropped() == []
    ob.close()
    _wipe(d)


def test_full_of_billing_raises_and_refuses_telemetry():
    d = fresh("full")
    ob = Outbox(d, max_bytes=2048, segment_bytes=512)
    s = 0
    with raises(OutboxFull, match="may not be dropped"):
        while s < 100:
            s += 1
            ob.put(s, "billing", "b", jws(s))
    stored = s - 1
    assert seqs(ob.pending(100)) == list(range(1, stored + 1))
    assert ob.put(s, "telemetry", "t", jws(s)) is False
    assert ob.take_dropped() == [] and ob.last() == (stored, jws(stored))
    ob.ack(1)
    ob.ack(2)
    ob.ack(3)
    ob.ack(4)
    assert ob.put(s, "billing", "b", jws(s))  # acked billing makes room again
    ob.close()
    _wipe(d)


def test_undeclared_drops_are_reported_again_after_a_reboot():
    d = fresh("decl")
    ob = Outbox(d, max_bytes=3072, segment_bytes=512)
    s = 0
    while not ob._dropped:  # fill until thinning happens
        s += 1
        ob.put(s, "telemetry", "t", jws(s))
    first = ob.take_dropped()
    ob.close()
    ob = Outbox(d, max_bytes=3072, segment_bytes=512)
    again = ob.take_dropped()
    assert again == first  # taken but never declared: reported again
    s += 1
    ob.put(s, "event", "lost", b"declared")  # the caller's declaration event
    ob.close()
    ob = Outbox(d, max_bytes=3072, segment_bytes=512)
    assert ob.take_dropped() == []
    assert ob.last() == (s, b"declared")
    ob.close()
    _wipe(d)


def test_take_dropped_hashes_are_sha256_hex():
    d = fresh("hash")
    ob = Outbox(d, max_bytes=2048, segment_bytes=512)
    s = 0
    got = []
    while not got:
        s += 1
        ob.put(s, "telemetry", "t", jws(s, 100))
        got = ob.take_dropped()
    for seq, h in got:
        assert h == hexdigest(jws(seq, 100))
    assert got[0][0] == 1
    ob.close()
    _wipe(d)


def test_the_newest_record_survives_even_a_failed_put():
    d = fresh("head")
    ob = Outbox(d, max_bytes=2048, segment_bytes=1024)
    s = 0
    while ob.bytes_used() < 1200:
        s += 1
        ob.put(s, "billing", "b", jws(s))
    s += 1
    ob.put(s, "telemetry", "t", jws(s))
    ob.ack(s)  # the chain head is acked, its segment idle
    with raises(OutboxFull):
        ob.put(s + 1, "billing", "b", b"x" * 900)
    assert ob.last() == (s, jws(s))
    ob.close()
    ob = Outbox(d, max_bytes=2048, segment_bytes=1024)
    assert ob.last() == (s, jws(s))
    with raises(ValueError):
        ob.put(s, "billing", "b", jws(s))
    ob.close()
    _wipe(d)
