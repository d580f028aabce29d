"""Durable outbox on flash: append-only segment files with a CRC-32 per record.

Every signed message is put() here before it is published and acked after its PUBACK, so a
network or power failure loses nothing that put() returned.  Pure MicroPython (LittleFS on the
ESP32) that also runs on CPython; the Pi has an SQLite outbox with the same API.  The byte
format, the recovery rules and the guarantees are in docs/outbox.md; in short:

- Two streams of segment files in one directory: ``k%08x.seg`` keeps the records that may never
  be dropped (billing, event, birth, ack) and ``t%08x.seg`` holds telemetry.  Each stream is an
  append-only log; a record is never rewritten in place.
- An ack, a drop (telemetry thinned for space) and a "drops declared" marker are small records
  appended to the head segment of the stream that holds their target, always after it.
- Space is reclaimed by deleting the oldest segment of a stream once none of its records is
  still needed, and only when a put needs the room.
- open() scans every segment, checks each record's length and CRC, cuts a torn tail off the
  newest segment of a stream and skips (and counts in ``errors``) corruption anywhere else.

RAM: two list slots per stored record (relative seq, offset|flags), 8 bytes on the ESP32 plus
list growth slack; payloads stay on flash.  Seqs are stored relative to the first one seen,
so they stay small ints (no heap) while the stored window spans fewer than 2**30 seqs.
"""

import hashlib
import os
import struct

from pilecore.crc import crc32_ieee

try:
    from binascii import crc32 as _crc32
    from binascii import hexlify as _hexlify
except ImportError:  # a MicroPython build without binascii: use the fallbacks below
    _crc32 = None
    _hexlify = None

# -- record format (little-endian); see docs/outbox.md ---------------------------------------
MAGIC0 = 0xFA
MAGIC1 = 0xCE
VERSION = 1
HDR = 24  # header bytes: _HFMT (20) then CRC-32 (4)
_HFMT = "<BBBBBBHIQ"  # magic0 magic1 version type kind reserved topic_len payload_len seq
T_DATA = 1  # a message: topic + payload
T_ACK = 2  # target seq was published (PUBACK)
T_DROP = 3  # target telemetry seq was thinned; body = SHA-256 of its payload
T_TAKEN = 4  # drops up to seq were handed to the caller and declared
KINDS = ("telemetry", "event", "billing", "birth", "ack")  # record kind code = index + 1
_TELEMETRY = 1
ACK_LEN = HDR
DROP_LEN = HDR + 32
TAKEN_LEN = HDR

KEEP = 0  # stream of never-droppable records
TELE = 1  # stream of telemetry
_PREFIX = ("k", "t")
_SUFFIX = ".seg"
_HEX = "0123456789abcdef"

# Segment table entry: a small list per segment file, oldest first per stream.
_ID = 0  # segment number (file name)
_SIZE = 1  # bytes in the file (valid records, plus skipped garbage)
_COUNT = 2  # data records indexed from this segment
_LIVE = 3  # of those, neither acked nor dropped
_HI = 4  # newest data seq in it, -1 if none
_DROPHI = 5  # newest drop seq written in it, -1 if none

_F_ACK = 1  # flag bits in the low two bits of an index entry
_F_DROP = 2

crc32_soft = crc32_ieee  # for MicroPython builds without binascii.crc32


crc32 = _crc32 if _crc32 is not None else crc32_soft


def _hex(b):
    if _hexlify is not None:
        return _hexlify(b).decode()
    return "".join("%02x" % x for x in b)


class OutboxFull(Exception):
    """put() of a record that may never be dropped found no room even after reclaiming every
    acked record and thinning every unacked telemetry record.  Nothing was stored or dropped."""


class OsFS:
    """The real file system through builtins open() and os (LittleFS on the ESP32).

    The Outbox needs exactly these methods, so tests can pass an object with faults instead.
    sync(target) makes durable either the bytes written to an open file (target is the file) or
    the entries of a directory (target is its path): fsync where os has it (CPython), otherwise
    flush() and os.sync() when present (MicroPython: flush() commits on LittleFS).
    """

    def open(self, path, mode):
        return open(path, mode)

    def listdir(self, path):
        return os.listdir(path)

    def remove(self, path):
        os.remove(path)

    def rename(self, old, new):
        os.rename(old, new)

    def stat(self, path):
        return os.stat(path)

    def mkdir(self, path):
        os.mkdir(path)

    def sync(self, target):
        fsync = getattr(os, "fsync", None)
        if isinstance(target, str):
            if fsync is not None:
                fd = os.open(target, os.O_RDONLY)
                try:
                    fsync(fd)
                finally:
                    os.close(fd)
                return
        else:
            target.flush()
            if fsync is not None:
                fsync(target.fileno())
                return
        sync = getattr(os, "sync", None)
        if sync is not None:
            sync()


class Outbox:
    """Durable, bounded store of signed messages waiting for their PUBACK.

    path: a directory (created if missing).  max_bytes bounds the bytes of all segment files
    together (record bytes; the file system's own block overhead is not counted).
    segment_bytes: size at which a segment file is closed and a new one started; one record
    (24-byte header + topic + payload) must fit in it.  fs: see OsFS (default).

    Attributes after open: errors (corrupt regions skipped, unreadable segments), torn (torn
    tails cut off the newest segment of a stream).
    """

    def __init__(self, path, max_bytes=512 * 1024, segment_bytes=32 * 1024, fs=None):
        if segment_bytes < 256 or max_bytes < segment_bytes:
            raise ValueError("need 256 <= segment_bytes <= max_bytes")
        self.path = path.rstrip("/") if len(path) > 1 else path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fs = fs if fs is not None else OsFS()
        self.errors = 0
        self.torn = 0
        self._hdr = bytearray(HDR)  # reused for every header read and write
        self._hmv = memoryview(self._hdr)
        self._hmv20 = self._hmv[:20]  # the CRC-covered part of the header
        self._buf = bytearray(512)  # reused to stream bodies through CRC and SHA-256
        self._bmv = memoryview(self._buf)
        self._seq = [[], []]  # per stream: seq - _base, ascending
        self._meta = [[], []]  # per stream: offset << 2 | flags
        self._segs = [[], []]  # per stream: segment table, oldest first
        self._lo = [0, 0]  # per stream: no live record before this index
        self._live = [0, 0]  # per stream: records neither acked nor dropped
        self._next_id = [1, 1]
        self._wf = [None, None]  # append handle of each stream's head segment
        self._seal = [False, False]  # next write to the stream starts a new segment
        self._fresh = [False, False]  # head file created since its last directory sync
        self._unsynced = [False, False]  # head written with sync=False since its last sync
        self._base = 0
        self._used = 0
        self._last = -1  # newest data seq stored, -1 when none
        self._last_s = KEEP
        self._dropped = []  # (seq, sha256 digest) not yet taken
        self._floor = -1  # drops <= this are declared (durable marker)
        self._taken = -1  # drops <= this were taken; marker not yet written
        self._open()

    # -- public API ---------------------------------------------------------------------------

    def put(self, seq, kind, topic, payload):
        """Store one message durably (written, flushed and synced when this returns).

        seq must be above every seq stored before (ValueError).  Returns True when stored.
        When full: acked records are reclaimed first, then unacked telemetry is thinned oldest
        first (see take_dropped).  If that cannot make room, a telemetry put returns False
        (nothing stored, nothing dropped; the seq is not consumed) and any other kind raises
        OutboxFull.  The first put after a non-empty take_dropped() also records that those
        drops were declared.
        """
        code = _kind_code(kind)
        if seq < 0 or seq >> 64:
            raise ValueError("seq must be in 0 .. 2**64-1")
        if seq <= self._last:
            raise ValueError("seq %d is not above the last stored seq %d" % (seq, self._last))
        tb = topic.encode() if isinstance(topic, str) else bytes(topic)
        if len(tb) > 0xFFFF:
            raise ValueError("topic longer than 65535 bytes")
        n = HDR + len(tb) + len(payload)
        if n > self.segment_bytes:
            raise ValueError("record of %d bytes exceeds segment_bytes %d" % (n, self.segment_bytes))
        s = TELE if code == _TELEMETRY else KEEP
        need = n + (DROP_LEN if s == TELE else ACK_LEN)
        if self._taken > self._floor:
            need += TAKEN_LEN
        if not self._make_room(need):
            if s == TELE:
                return False
            raise OutboxFull(
                "outbox full: %d of %d bytes hold records that may not be dropped" % (self._used, self.max_bytes)
            )
        if not self._seq[KEEP] and not self._seq[TELE]:
            self._base = seq
        seg, off = self._write(s, T_DATA, code, seq, tb, payload)
        self._add(s, seg, seq, off)
        self._last = seq
        self._last_s = s
        if self._taken > self._floor:
            # After the message (likely the "declared lost" event): a cut before this marker
            # only makes the drops be reported again, never forgotten. So does a flash that
            # refuses the marker: the message is stored, and put must say so.
            try:
                self._write(TELE, T_TAKEN, 0, self._taken, b"", b"")
                self._floor = self._taken
            except OSError:
                pass
        return True

    def pending(self, limit=16, after=-1):
        """Oldest-first list of (seq, kind, topic, payload) neither acked nor dropped, with
        seq > after, at most limit of them."""
        out = []
        i = [self._lo[KEEP], self._lo[TELE]]
        files = [None, None]
        rel_after = after - self._base
        try:
            while len(out) < limit:
                best = -1
                for s in (KEEP, TELE):
                    j = i[s]
                    seqs = self._seq[s]
                    meta = self._meta[s]
                    while j < len(seqs) and (meta[j] & 3 or seqs[j] <= rel_after):
                        j += 1
                    i[s] = j
                    if j < len(seqs) and (best < 0 or seqs[j] < self._seq[best][i[best]]):
                        best = s
                if best < 0:
                    break
                rec = self._read(best, i[best], files)
                i[best] += 1
                if rec is not None:
                    out.append(rec)
        finally:
            for f in files:
                if f is not None:
                    f[1].close()
        return out

    def ack(self, seq):
        """Mark seq published.  Durable when it returns; idempotent; unknown seqs are ignored."""
        for s in (KEEP, TELE):
            i = self._find(s, seq)
            if i >= 0:
                if not self._meta[s][i] & 3:
                    self._write(s, T_ACK, 0, seq, b"", b"")
                    self._resolve(s, i, _F_ACK)
                return

    def get(self, seq):
        """(seq, kind, topic, payload) while the record is stored (acked or not), else None.
        A dropped (thinned) record reads as None: it was declared lost."""
        for s in (KEEP, TELE):
            i = self._find(s, seq)
            if i >= 0:
                if self._meta[s][i] & _F_DROP:
                    return None
                files = [None, None]
                try:
                    return self._read(s, i, files)
                finally:
                    if files[s] is not None:
                        files[s][1].close()
        return None

    def has(self, seq):
        """True when get(seq) would return the record, without reading it from flash."""
        for s in (KEEP, TELE):
            i = self._find(s, seq)
            if i >= 0:
                return not self._meta[s][i] & _F_DROP
        return False

    def depth(self):
        """Number of records neither acked nor dropped."""
        return self._live[KEEP] + self._live[TELE]

    def oldest(self):
        """Seq of the oldest record neither acked nor dropped, or None."""
        best = None
        for s in (KEEP, TELE):
            j = self._lo[s]
            if j < len(self._seq[s]):
                v = self._seq[s][j] + self._base
                if best is None or v < best:
                    best = v
        return best

    def last(self):
        """(seq, payload) of the newest record ever stored (acked, dropped or not), or None.
        The segment holding it is never reclaimed, so the signing chain head survives."""
        if self._last < 0:
            return None
        s = self._last_s
        files = [None, None]
        try:
            rec = self._read(s, len(self._meta[s]) - 1, files)  # the newest is last in its stream
        finally:
            if files[s] is not None:
                files[s][1].close()
        return None if rec is None else (rec[0], rec[3])

    def take_dropped(self):
        """[(seq, sha256(payload) hex)] of telemetry thinned since the last call, oldest first.

        The caller publishes a signed "declared lost" event listing them with its next put();
        that put also makes the hand-over durable.  Until then (and after a reboot before it)
        the same drops are reported again: at least once, never silently lost."""
        out = []
        for seq, digest in self._dropped:
            out.append((seq, _hex(digest)))
            if seq > self._taken:
                self._taken = seq
        self._dropped = []
        return out

    def bytes_used(self):
        """Bytes in segment files now (<= max_bytes except right after open with a smaller one)."""
        return self._used

    def close(self):
        """Close open files.  Everything put or acked is already durable."""
        for s in (KEEP, TELE):
            self._close_head(s)

    # -- index --------------------------------------------------------------------------------

    def _find(self, s, seq):
        """Index of seq in stream s, or -1 (binary search; seqs ascend within a stream)."""
        seqs = self._seq[s]
        rel = seq - self._base
        lo = 0
        hi = len(seqs)
        while lo < hi:
            mid = (lo + hi) >> 1
            if seqs[mid] < rel:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(seqs) and seqs[lo] == rel:
            return lo
        return -1

    def _seg_of(self, s, i):
        """Segment table entry holding record i of stream s (tables are short: ~20 entries)."""
        for seg in self._segs[s]:
            if i < seg[_COUNT]:
                return seg
            i -= seg[_COUNT]
        raise IndexError("record index out of range")

    def _add(self, s, seg, seq, off):
        self._seq[s].append(seq - self._base)
        self._meta[s].append(off << 2)
        seg[_COUNT] += 1
        seg[_LIVE] += 1
        seg[_HI] = seq
        self._live[s] += 1

    def _resolve(self, s, i, flag):
        """Record i of stream s is now acked or dropped."""
        meta = self._meta[s]
        meta[i] |= flag
        self._seg_of(s, i)[_LIVE] -= 1
        self._live[s] -= 1
        j = self._lo[s]
        while j < len(meta) and meta[j] & 3:
            j += 1
        self._lo[s] = j

    # -- space --------------------------------------------------------------------------------

    def _fits(self, need):
        # Every live record keeps room for the record that will resolve it (an ack, or for
        # telemetry possibly a drop), so ack() and thinning never run out of space.
        reserved = ACK_LEN * self._live[KEEP] + DROP_LEN * self._live[TELE]
        return self._used + reserved + need <= self.max_bytes

    def _pinned(self, seg):
        """A segment that must stay: it holds undeclared drops or the newest record (last())."""
        return seg[_DROPHI] > self._floor or (seg[_HI] >= 0 and seg[_HI] == self._last)

    def _make_room(self, need):
        self._reclaim(need)
        if self._fits(need):
            return True
        # Would thinning every unacked telemetry record be enough?  Decide before dropping any.
        gain = 0
        for seg in self._segs[TELE]:
            if self._pinned(seg):
                break
            gain += seg[_SIZE]
        if not self._fits(need - gain):
            return False
        while not self._fits(need):
            if not self._thin_oldest_segment():
                return False
            self._reclaim(need)
        return True

    def _reclaim(self, need):
        """Delete segments whose records are all acked or dropped, oldest data first, until
        need bytes fit (acked records stay readable for resend until then).

        Only a stream's oldest segment is ever deleted: every ack or drop lies after its
        target, so no surviving record loses its ack, and a segment that reappears after a
        cut (deletion not yet durable) is inert."""
        while not self._fits(need):
            s = -1
            for t in (KEEP, TELE):
                segs = self._segs[t]
                if (
                    segs
                    and not segs[0][_LIVE]
                    and not self._pinned(segs[0])
                    and (s < 0 or segs[0][_HI] < self._segs[s][0][_HI])
                ):
                    s = t
            if s < 0:
                return
            segs = self._segs[s]
            seg = segs[0]
            if len(segs) == 1:
                self._close_head(s)
            self.fs.remove(self._name(s, seg[_ID]))
            self.fs.sync(self.path)
            k = seg[_COUNT]
            del self._seq[s][:k]
            del self._meta[s][:k]
            self._lo[s] = max(0, self._lo[s] - k)
            self._used -= seg[_SIZE]
            segs.pop(0)

    def _thin_oldest_segment(self):
        """Drop every live record of the oldest telemetry segment that has any (these are the
        oldest unacked telemetry).  Space is only freed per whole segment, so dropping part
        of one would lose data for nothing.  False when thinning cannot free anything."""
        segs = self._segs[TELE]
        i = 0
        for seg in segs:
            if self._pinned(seg):
                return False
            if seg[_LIVE]:
                if seg is segs[-1]:
                    self._seal[TELE] = True  # the drops go to a new segment, not this one
                f = self.fs.open(self._name(TELE, seg[_ID]), "rb")
                try:
                    for j in range(i, i + seg[_COUNT]):
                        m = self._meta[TELE][j]
                        if m & 3:
                            continue
                        digest = self._payload_sha256(f, m >> 2)
                        seq = self._seq[TELE][j] + self._base
                        head, _ = self._write(TELE, T_DROP, 0, seq, b"", digest, False)
                        head[_DROPHI] = seq
                        self._resolve(TELE, j, _F_DROP)
                        self._dropped.append((seq, digest))
                finally:
                    f.close()
                self._sync(TELE)  # drops durable before any segment is deleted
                return True
            i += seg[_COUNT]
        return False

    # -- files --------------------------------------------------------------------------------

    def _name(self, s, sid):
        return "%s/%s%08x%s" % (self.path, _PREFIX[s], sid, _SUFFIX)

    def _close_head(self, s):
        f = self._wf[s]
        if f is not None:
            self._wf[s] = None
            f.close()

    def _head(self, s, n):
        """The head segment of stream s with its append handle open, rotated if n bytes do not
        fit in it (or it was sealed)."""
        segs = self._segs[s]
        seg = segs[-1] if segs else None
        if seg is None or self._seal[s] or (seg[_SIZE] and seg[_SIZE] + n > self.segment_bytes):
            if self._unsynced[s]:
                self._sync(s)  # a batch (drops) must not stay unsynced in a closed file
            self._close_head(s)
            seg = [self._next_id[s], 0, 0, 0, -1, -1]
            self._next_id[s] += 1
            self._seal[s] = False
            self._wf[s] = self.fs.open(self._name(s, seg[_ID]), "ab")
            self._fresh[s] = True
            segs.append(seg)
        elif self._wf[s] is None:
            self._wf[s] = self.fs.open(self._name(s, seg[_ID]), "ab")
        return seg

    def _write(self, s, typ, kind, seq, topic, body, sync=True):
        """Append one record to stream s; returns (segment entry, offset)."""
        n = HDR + len(topic) + len(body)
        seg = self._head(s, n)
        off = seg[_SIZE]
        h = self._hdr
        struct.pack_into(_HFMT, h, 0, MAGIC0, MAGIC1, VERSION, typ, kind, 0, len(topic), len(body), seq)
        c = crc32(self._hmv20)
        if topic:
            c = crc32(topic, c)
        if body:
            c = crc32(body, c)
        struct.pack_into("<I", h, 20, c)
        f = self._wf[s]
        try:
            f.write(h)
            if topic:
                f.write(topic)
            if body:
                f.write(body)
            if sync:
                # A full flash may accept the buffered write and refuse at the flush: the record
                # is stored only once synced, so a refused sync is a refused write.
                self._sync(s)
        except OSError:
            self._abandon_head(s, seg)
            raise
        seg[_SIZE] = off + n
        self._used += n
        if not sync:
            self._unsynced[s] = True
        return seg, off

    def _abandon_head(self, s, seg):
        """After a refused write: a partial record may be in the file, so never append after it
        (recovery skips what fails its CRC); the segment's size is what the file really holds."""
        f = self._wf[s]
        self._wf[s] = None
        self._seal[s] = True
        self._unsynced[s] = False
        if f is not None:
            try:
                f.close()  # flushes what it can; the flash may refuse that too
            except OSError:
                pass
        try:
            size = self.fs.stat(self._name(s, seg[_ID]))[6]
            self._used += size - seg[_SIZE]
            seg[_SIZE] = size
        except OSError:
            pass

    def _sync(self, s):
        self._unsynced[s] = False
        self.fs.sync(self._wf[s])
        if self._fresh[s]:
            self.fs.sync(self.path)  # the new file's directory entry
            self._fresh[s] = False

    def _file(self, s, seg, files):
        """A read handle on seg, cached per stream in files[s] for the caller to close."""
        cur = files[s]
        if cur is not None and cur[0] == seg[_ID]:
            return cur[1]
        if cur is not None:
            cur[1].close()
        f = self.fs.open(self._name(s, seg[_ID]), "rb")
        files[s] = (seg[_ID], f)
        return f

    def _read(self, s, i, files):
        f = self._file(s, self._seg_of(s, i), files)
        rec = self._read_at(f, self._meta[s][i] >> 2)
        if rec is None:
            self.errors += 1
        return rec

    def _read_at(self, f, off):
        """(seq, kind, topic, payload) of the data record at off, or None if it no longer
        checks (bit rot after open)."""
        f.seek(off)
        if f.readinto(self._hmv) != HDR:
            return None
        _, _, _, typ, kind, _, tlen, plen, seq = struct.unpack_from(_HFMT, self._hdr, 0)
        if typ != T_DATA or not 1 <= kind <= len(KINDS):
            return None
        crc = struct.unpack_from("<I", self._hdr, 20)[0]
        c = crc32(self._hmv20)
        topic = f.read(tlen) if tlen else b""
        payload = f.read(plen) if plen else b""
        if len(topic) != tlen or len(payload) != plen:
            return None
        if crc32(payload, crc32(topic, c)) != crc:
            return None
        return (seq, KINDS[kind - 1], topic.decode(), payload)

    def _payload_sha256(self, f, off):
        f.seek(off)
        f.readinto(self._hmv)
        tlen, plen = struct.unpack_from("<HI", self._hdr, 6)
        f.seek(off + HDR + tlen)
        h = hashlib.sha256()
        mv = self._bmv
        while plen:
            k = min(plen, len(mv))
            got = f.readinto(mv[:k])
            if not got:
                break
            h.update(mv[:got])
            plen -= got
        return h.digest()

    # -- recovery -----------------------------------------------------------------------------

    def _open(self):
        fs = self.fs
        try:
            names = fs.listdir(self.path)
        except OSError:
            self._mkdirs(self.path)
            names = []
        # A torn-tail rewrite that a cut interrupted (see _truncate): finish or forget it.
        for name in list(names):
            if name.endswith(_SUFFIX + ".tmp") and _parse_name(name[:-4]) is not None:
                tmp = self.path + "/" + name
                if name[:-4] in names:
                    fs.remove(tmp)
                else:
                    fs.rename(tmp, tmp[:-4])
                    names.append(name[:-4])
        for s in (KEEP, TELE):
            ids = []
            for name in names:
                p = _parse_name(name)
                if p is not None and p[0] == s:
                    ids.append(p[1])
            ids.sort()
            damaged = -1
            for k in range(len(ids)):
                if not self._scan(s, ids[k], k == len(ids) - 1):
                    damaged = ids[k]
            if ids:
                self._next_id[s] = ids[-1] + 1
            segs = self._segs[s]
            if segs and segs[-1][_ID] == damaged:
                self._seal[s] = True  # never append after garbage: start a new segment
        for s in (KEEP, TELE):
            j = 0
            meta = self._meta[s]
            while j < len(meta) and meta[j] & 3:
                j += 1
            self._lo[s] = j
            if self._seq[s]:
                v = self._seq[s][-1] + self._base
                if v > self._last:
                    self._last = v
                    self._last_s = s
        self._dropped = [d for d in self._dropped if d[0] > self._floor]
        self._taken = self._floor

    def _mkdirs(self, path):
        cut = path.rfind("/")
        if cut > 0:
            try:
                self.fs.stat(path[:cut])
            except OSError:
                self._mkdirs(path[:cut])
        self.fs.mkdir(path)

    def _scan(self, s, sid, newest):
        """Index every valid record of one segment; cut or count what is not.  False when
        damage at its end was left in place (only the newest segment's tail is cut)."""
        name = self._name(s, sid)
        try:
            size = self.fs.stat(name)[6]
            f = self.fs.open(name, "rb")
        except OSError:
            self.errors += 1
            return True
        seg = [sid, size, 0, 0, -1, -1]
        self._segs[s].append(seg)
        good = 0  # end of the last valid record
        pos = 0
        try:
            while pos < size:
                end = self._check(f, pos, size)
                if end < 0:
                    pos = self._resync(f, pos + 1, size)
                    if pos < 0:
                        break
                    self.errors += 1  # a bad region with valid records after it
                    continue
                self._apply(s, seg, pos)
                pos = good = end
        finally:
            f.close()
        if good < size:
            if newest:
                self.torn += 1  # power cut mid-append: cut the torn tail away
                self._truncate(s, sid, good)
                seg[_SIZE] = good
            else:
                self.errors += 1  # never appended after: this is damage
                self._used += size
                return False
        self._used += seg[_SIZE]
        return True

    def _check(self, f, pos, size):
        """End offset of a valid record at pos (header now in self._hdr, a drop's digest in
        self._buf[:32]), or -1."""
        if size - pos < HDR:
            return -1
        f.seek(pos)
        if f.readinto(self._hmv) != HDR:
            return -1
        m0, m1, ver, typ, kind, res, tlen, plen, _ = struct.unpack_from(_HFMT, self._hdr, 0)
        if m0 != MAGIC0 or m1 != MAGIC1 or ver != VERSION or res:
            return -1
        if typ == T_DATA:
            if not 1 <= kind <= len(KINDS):
                return -1
        elif typ == T_DROP:
            if kind or tlen or plen != 32:
                return -1
        elif typ in (T_ACK, T_TAKEN):
            if kind or tlen or plen:
                return -1
        else:
            return -1
        end = pos + HDR + tlen + plen
        if end > size:
            return -1
        c = crc32(self._hmv20)
        n = tlen + plen
        mv = self._bmv
        while n:
            k = min(n, len(mv))
            if f.readinto(mv[:k]) != k:
                return -1
            c = crc32(mv[:k], c)
            n -= k
        if c != struct.unpack_from("<I", self._hdr, 20)[0]:
            return -1
        return end

    def _resync(self, f, pos, size):
        """Offset of the next valid record at or after pos, or -1 (only after damage)."""
        while pos < size:
            f.seek(pos)
            chunk = f.read(min(512, size - pos))
            k = chunk.find(bytes((MAGIC0, MAGIC1)))
            if k < 0:
                pos += max(1, len(chunk) - 1)  # the magic may straddle two chunks
                continue
            if self._check(f, pos + k, size) >= 0:
                return pos + k
            pos += k + 1
        return -1

    def _apply(self, s, seg, pos):
        """Index the valid record just checked at pos (its header is in self._hdr)."""
        _, _, _, typ, kind, _, _, _, seq = struct.unpack_from(_HFMT, self._hdr, 0)
        if typ == T_DATA:
            seqs = self._seq[s]
            if (kind == _TELEMETRY) != (s == TELE):
                self.errors += 1  # a record in the wrong stream: not ours
                return
            if not seqs and not self._seq[1 - s]:
                self._base = seq
            if seqs and seq - self._base <= seqs[-1]:
                self.errors += 1  # seqs only ever grow within a stream
                return
            self._add(s, seg, seq, pos)
        elif typ in (T_ACK, T_DROP):
            i = self._find(s, seq)
            if i >= 0 and not self._meta[s][i] & 3:
                self._resolve(s, i, _F_ACK if typ == T_ACK else _F_DROP)
            if typ == T_DROP:
                if seq > seg[_DROPHI]:
                    seg[_DROPHI] = seq
                if seq > self._floor:
                    self._dropped.append((seq, bytes(self._buf[:32])))
        elif seq > self._floor:  # T_TAKEN
            self._floor = seq

    def _truncate(self, s, sid, good):
        """Cut a segment to its first `good` bytes without an in-place truncate (MicroPython
        has none): copy them to NAME.tmp, sync, rename over NAME.  A cut before the rename
        leaves NAME intact (the .tmp is removed at the next open)."""
        name = self._name(s, sid)
        fs = self.fs
        if good == 0:
            fs.remove(name)
            fs.sync(self.path)
            self._segs[s].pop()
            return
        tmp = name + ".tmp"
        src = fs.open(name, "rb")
        try:
            dst = fs.open(tmp, "wb")
            try:
                n = good
                mv = self._bmv
                while n:
                    k = min(n, len(mv))
                    got = src.readinto(mv[:k])
                    if not got:
                        raise OSError("segment shrank while it was being cut")
                    dst.write(mv[:got])
                    n -= got
                fs.sync(dst)
            finally:
                dst.close()
        finally:
            src.close()
        try:
            fs.rename(tmp, name)
        except OSError:
            # A file system whose rename does not replace (FAT): remove first.  A cut in between
            # leaves only NAME.tmp, complete, which the next open renames back.
            fs.remove(name)
            fs.rename(tmp, name)
        fs.sync(self.path)


def _kind_code(kind):
    for i in range(len(KINDS)):
        if KINDS[i] == kind:
            return i + 1
    raise ValueError("unknown kind %r (expected one of %s)" % (kind, ", ".join(KINDS)))


def _parse_name(name):
    """(stream, segment id) for a segment file name, else None (foreign files are left alone)."""
    if len(name) != 13 or not name.endswith(_SUFFIX):
        return None
    if name[0] == "k":
        s = KEEP
    elif name[0] == "t":
        s = TELE
    else:
        return None
    for ch in name[1:9]:
        if ch not in _HEX:
            return None
    return (s, int(name[1:9], 16))
