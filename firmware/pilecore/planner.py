"""Read planner: the fewest Modbus transactions that fetch a meter's values, and their decoding.

A `MeterPlan` turns "these values from this profile" into a list of reads
`[function, start, count]` that costs the least bus time: registers of one function code are
grouped into contiguous reads by an exact dynamic programme over the runs of wanted registers,
where each read costs a request and a response frame, two 3.5-character silences and the
meter's response latency, and each register read costs two bytes.  Groups are bounded by the
meter's block limit and by a gap limit (the most registers a read may bridge between two
wanted ones).  When a meter
answers a merged read with an exception, `shrink()` learns a smaller gap or block limit for that
meter and the plan is rebuilt, so it falls back without operator help.  `decode()` turns the
answers into a reading plus faults: a value outside the profile's sane range, or one that does
not decode, is a fault and never a reading.

Reading keys: energy_wh (int, exact), power_w, voltage_v (list per phase), current_a (list),
frequency_hz, power_factor.  A value that could not be read is absent, never zero.
"""

from pilecore import modbus
from pilecore import profile as _profile

# canonical value name -> (reading key, per-phase?)
READING_KEYS = {
    "energy_import": ("energy_wh", False),
    "power": ("power_w", False),
    "voltage": ("voltage_v", True),
    "current": ("current_a", True),
    "frequency": ("frequency_hz", False),
    "power_factor": ("power_factor", False),
}

RATIO = "ratio:"  # field-name prefix of a transformer ratio read with the values

# Exceptions that say "this read is not acceptable as asked" (as opposed to busy/failure).
SHRINK_CODES = (2, 3)
MAX_BLOCK = 125  # Modbus limit for function 3/4
FRAME_CHARS = 8 + 5 + 7  # request, response header and CRC, two 3.5-character silences
CHAR_US_9600 = 1041  # 8N1 at 9600 baud


class MeterPlan:
    """The reads for one meter and how to decode them; see the module docstring."""

    protocol = "modbus"

    def __init__(self, prof, names=None, gap=MAX_BLOCK, limit=None, char_us=CHAR_US_9600, ranges=None):
        self.profile = prof
        self.ranges = ranges or {}
        self.limit = min(MAX_BLOCK, prof.get("max_block", MAX_BLOCK), limit or MAX_BLOCK)
        self.gap = gap
        self._initial = (self.limit, gap)  # what relearn() goes back to
        # a read's fixed cost in character times: frames, silences and the meter's latency
        self.read_cost = FRAME_CHARS + (prof.get("response_ms", 50) * 1000) // max(1, char_us)
        self.fields = []
        wanted_ratios = []
        for name in names or _profile.value_names():
            if name not in prof.get("values", {}):
                continue
            for phase, (fc, reg, typ) in enumerate(_profile.value_registers(prof, name)):
                self.fields.append((name, phase, fc, reg, typ))
            for rname in prof["values"][name].get("ratios", ()):
                if rname not in wanted_ratios:
                    wanted_ratios.append(rname)
        # Transformer ratios the meter holds (e.g. an ADL400's PT and CT ratios): read with the
        # values, so a reading and the ratios it is scaled by come from the same poll.
        for rname, fc, reg, typ in _profile.ratio_registers(prof, wanted_ratios):
            self.fields.append((RATIO + rname, 0, fc, reg, typ))
        self.ratio_values = {}
        self.widest = 1
        for f in self.fields:
            w = modbus.TYPE_WIDTH[f[4]]
            if w > self.widest:
                self.widest = w
        self.unsupported = []
        self.reads = []
        self.slots = []
        self.replan()

    def relearn(self):
        """Forget what exceptions taught (smaller blocks, no gaps, unsupported values) and plan
        the full read again.  The scheduler calls it when a meter has refused every value: a
        confused or rogue responder, or a meter still booting, must not disable the values of
        the real meter for good (issue 9, defect #3)."""
        self.limit, self.gap = self._initial
        self.unsupported = []
        self.replan()

    def replan(self):
        """Rebuild reads and slots: the cheapest grouping within the gap and block limits."""
        by_fc = {}
        for i, (name, phase, fc, reg, typ) in enumerate(self.fields):
            if (name, phase) in self.unsupported:
                continue
            by_fc.setdefault(fc, []).append((reg, reg + modbus.TYPE_WIDTH[typ], i))
        reads = []
        slots = [None] * len(self.fields)
        for fc in sorted(by_fc):
            runs = _runs(sorted(by_fc[fc]))
            for first, last in self._partition(runs):
                start, end = runs[first][0], runs[last][1]
                reads.append([fc, start, end - start])
                for k in range(first, last + 1):
                    for i in runs[k][2]:
                        slots[i] = (len(reads) - 1, self.fields[i][3] - start)
        self.reads = reads
        self.slots = slots

    def _partition(self, runs):
        """Optimal split of sorted, disjoint register runs into reads: [(first, last)]."""
        n = len(runs)
        best = [0] * (n + 1)
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            best[j] = -1
            for i in range(j, 0, -1):
                count = runs[j - 1][1] - runs[i - 1][0]
                if count > self.limit:
                    break
                if i < j and runs[i][0] - runs[i - 1][1] > self.gap:
                    break
                cost = best[i - 1] + self.read_cost + 2 * count
                if best[j] < 0 or cost < best[j]:
                    best[j] = cost
                    cut[j] = i
            if best[j] < 0:  # a single run wider than the limit: read it alone
                best[j] = best[j - 1] + self.read_cost + 2 * (runs[j - 1][1] - runs[j - 1][0])
                cut[j] = j
        groups = []
        j = n
        while j > 0:
            groups.append((cut[j] - 1, j - 1))
            j = cut[j] - 1
        groups.reverse()
        return groups

    def cost_chars(self):
        """Bus time of one poll of this plan, in character times (the planner's cost model)."""
        return sum(self.read_cost + 2 * r[2] for r in self.reads)

    def fields_of(self, read_index):
        return [i for i, s in enumerate(self.slots) if s is not None and s[0] == read_index]

    def shrink(self, read_index, code):
        """Learn from an exception answer to reads[read_index]; True when the plan changed.

        First stop bridging gaps (the meter rejects unmapped registers), then halve the block
        limit, never below the widest single value.  A read of a single value that is still
        refused marks that value unsupported (returned False: the caller raises a fault).
        """
        if code not in SHRINK_CODES:
            return False
        count = self.reads[read_index][2]
        members = self.fields_of(read_index)
        if len(members) > 1:
            if self.gap > 0:
                self.gap = 0
            elif count > self.widest:
                self.limit = max(self.widest, count // 2)
            else:
                return self._drop(members)
            self.replan()
            return True
        return self._drop(members)

    def _drop(self, members):
        for i in members:
            key = (self.fields[i][0], self.fields[i][1])
            if key not in self.unsupported:
                self.unsupported.append(key)
        self.replan()
        return False

    def decode(self, blocks):
        """Decode answers (a list, one register list or None per read) into (reading, faults).

        faults: list of (value name, reason).  A value whose read failed is simply absent.
        """
        prof = self.profile
        bo = prof.get("byte_order", "big")
        wo = prof.get("word_order", "big")
        reading = {}
        faults = []
        ratios = self._ratios(blocks, bo, wo)
        for i, field in enumerate(self.fields):
            name, phase, typ = field[0], field[1], field[4]
            slot = self.slots[i]
            if slot is None or blocks[slot[0]] is None or name.startswith(RATIO):
                continue
            spec = prof["values"][name]
            factor = 1
            for rname in spec.get("ratios", ()):
                r = ratios.get(rname)
                if not r:  # unread, or 0: no ratio can make this value true
                    faults.append((name, "transformer ratio %s unreadable or 0" % rname))
                    factor = 0
                    break
                factor *= r
            if factor == 0:
                continue
            key, per_phase = READING_KEYS[name]
            lo, hi = _range(spec, self.ranges.get(name))
            try:
                value = self._value(blocks[slot[0]], slot[1], typ, spec, name, bo, wo, lo, hi, factor)
            except ValueError as exc:
                faults.append((name, "undecodable: %s" % exc))
                continue
            if value is None:
                faults.append((name, "out of range [%s, %s] %s" % (lo, hi, spec["unit"])))
                continue
            if per_phase:
                lst = reading.get(key)
                if lst is None:
                    lst = [None] * len(spec["register"])
                    reading[key] = lst
                lst[phase] = value
            else:
                reading[key] = value
        return reading, faults

    def _ratios(self, blocks, bo, wo):
        """{ratio name: int} of the ratio registers read in this poll (absent when unread)."""
        out = {}
        for i, field in enumerate(self.fields):
            slot = self.slots[i]
            if not field[0].startswith(RATIO) or slot is None or blocks[slot[0]] is None:
                continue
            out[field[0][len(RATIO) :]] = modbus.decode_raw(blocks[slot[0]], slot[1], field[4], bo, wo)
        if out:
            self.ratio_values = out
        return out

    def energy_step_wh(self):
        """The energy reading's resolution in Wh: one raw step times the scale and any ratios
        (as last read from the meter; None while a ratio it needs has not been read yet)."""
        spec = self.profile.get("values", {}).get("energy_import")
        if spec is None:
            return None
        step = spec.get("scale", 1) * 1000
        for rname in spec.get("ratios", ()):
            if not self.ratio_values.get(rname):
                return None
            step *= self.ratio_values[rname]
        return step

    @staticmethod
    def _value(regs, offset, typ, spec, name, bo, wo, lo, hi, factor=1):
        scale = spec.get("scale", 1)
        if name == "energy_import":
            wh = modbus.decode_milli(regs, offset, typ, scale, bo, wo) * factor
            if wh < lo * 1000 or wh > hi * 1000:
                return None
            return wh
        v = modbus.decode_scaled(regs, offset, typ, scale, bo, wo) * factor
        if v < lo or v > hi:
            return None
        return v


def _runs(spans):
    """Merge sorted (start, end, field) spans into runs (start, end, [fields]); only spans that
    share registers are merged, so a run never needs splitting to honour a block limit."""
    runs = []
    for start, end, i in spans:
        if runs and start < runs[-1][1]:
            if end > runs[-1][1]:
                runs[-1][1] = end
            runs[-1][2].append(i)
        else:
            runs.append([start, end, [i]])
    return runs


class RawPlan:
    """A device read as one fixed block (a presence sensor, a pile controller's plug register).

    Same interface as MeterPlan for the scheduler; `decode` returns the registers themselves.
    """

    protocol = "modbus"

    def __init__(self, function, register, count=1):
        self.reads = [[function, register, count]]
        self.unsupported = []
        self.profile = {}

    def shrink(self, read_index, code):
        return False

    def relearn(self):
        """Nothing to relearn: the one block is always read."""

    def decode(self, blocks):
        return blocks[0], []


# ---------------------------------------------------------------- DL/T 645

# Frame sizes for the cost model: a read request is the 4-byte wake-up preamble plus
# 68 A*6 68 C L DI*4 CS 16 (16 bytes); a normal reply repeats the same frame with the value
# appended (the meter's own preamble, up to 4 bytes, is counted: most meters send it).
DLT_REQUEST_BYTES = 4 + 16
DLT_REPLY_BYTES = 4 + 16  # plus the value bytes
DLT_GAP_CHARS = 7  # the quiet line before each frame, as for Modbus (2 x 3.5 characters)


class DltPlan:
    """The reads of a DL/T 645 meter: one data item per request, the protocol's reality.

    Same interface as MeterPlan for the scheduler: `reads` is a list of
    [0x11, data identifier, value bytes]; `decode(blocks)` takes one value byte string (or
    None) per read.  A per-phase value whose profile names a `block` identifier (e.g.
    0x0201FF00, all phase voltages) is read in one request; when the meter answers a block
    with an abnormal reply, `shrink()` falls back to one request per phase.  An item the meter
    answers "no such data" is marked unsupported.
    """

    protocol = "dlt645"

    def __init__(self, prof, names=None, char_us=CHAR_US_9600, ranges=None):
        self.profile = prof
        self.ranges = ranges or {}
        self.read_cost = DLT_REQUEST_BYTES + DLT_REPLY_BYTES + DLT_GAP_CHARS
        self.read_cost += (prof.get("response_ms", 50) * 1000) // max(1, char_us)
        self.fields = []  # (name, phase, di, nbytes)
        self.blocks_ok = {}  # value name -> False once the meter refused its block read
        for name in names or _profile.value_names():
            spec = prof.get("values", {}).get(name)
            if spec is None:
                continue
            dis = spec["di"] if isinstance(spec["di"], list) else [spec["di"]]
            for phase, di in enumerate(dis):
                self.fields.append((name, phase, di, spec["bytes"]))
            if "block" in spec and len(dis) > 1:
                self.blocks_ok[name] = True
        self.unsupported = []
        self.reads = []
        self.slots = []
        self.replan()

    def relearn(self):
        """As MeterPlan.relearn: block reads and every item are tried again."""
        for name in self.blocks_ok:
            self.blocks_ok[name] = True
        self.unsupported = []
        self.replan()

    def replan(self):
        """One read per data item, or one per block of a per-phase value."""
        reads, slots, block_of = [], [None] * len(self.fields), {}
        for i, (name, phase, di, nbytes) in enumerate(self.fields):
            if (name, phase) in self.unsupported:
                continue
            if self.blocks_ok.get(name):
                if name not in block_of:
                    n = len([f for f in self.fields if f[0] == name])
                    reads.append([_profile.DLT_READ, self.profile["values"][name]["block"], n * nbytes])
                    block_of[name] = len(reads) - 1
                slots[i] = (block_of[name], phase * nbytes)
                continue
            reads.append([_profile.DLT_READ, di, nbytes])
            slots[i] = (len(reads) - 1, 0)
        self.reads = reads
        self.slots = slots

    def energy_step_wh(self):
        """The energy item's resolution in Wh: 10**(3 - decimals) times its scale."""
        spec = self.profile.get("values", {}).get("energy_import")
        if spec is None:
            return None
        return spec.get("scale", 1) * 10 ** (3 - spec["decimals"])

    def cost_chars(self):
        """Bus time of one poll in character times: frames with preambles, gaps, latency."""
        return sum(self.read_cost + r[2] for r in self.reads)

    def fields_of(self, read_index):
        return [i for i, s in enumerate(self.slots) if s is not None and s[0] == read_index]

    def shrink(self, read_index, code):
        """Learn from an abnormal answer (`code` is its error byte); True when the plan changed.

        A refused block read becomes one read per phase.  A single item answered "no such
        data" is marked unsupported (False: the caller raises a fault); any other error leaves
        the plan as it is (False: the caller reports the abnormal reply and asks again next poll).
        """
        members = self.fields_of(read_index)
        if len(members) > 1:
            self.blocks_ok[self.fields[members[0]][0]] = False
            self.replan()
            return True
        if code is not None and code & 0x02:  # dlt645.ERR_NO_DATA
            for i in members:
                key = (self.fields[i][0], self.fields[i][1])
                if key not in self.unsupported:
                    self.unsupported.append(key)
            self.replan()
        return False

    def decode(self, blocks):
        """Decode value bytes (one per read, None when failed) into (reading, faults)."""
        from pilecore import dlt645

        reading = {}
        faults = []
        for i, (name, phase, di, nbytes) in enumerate(self.fields):
            slot = self.slots[i]
            if slot is None or blocks[slot[0]] is None:
                continue
            spec = self.profile["values"][name]
            lo, hi = _range(spec, self.ranges.get(name))
            key, per_phase = READING_KEYS[name]
            raw = blocks[slot[0]][slot[1] : slot[1] + nbytes]
            try:
                if len(raw) != nbytes:
                    raise ValueError("item 0x%08X needs %d bytes, got %d" % (di, nbytes, len(raw)))
                v = dlt645.decode_bcd(raw, spec.get("signed", False))
            except ValueError as exc:
                faults.append((name, "undecodable: %s" % exc))
                continue
            value = _dlt_value(name, v, spec)
            limit_v = value / 1000 if name == "energy_import" else value
            if limit_v < lo or limit_v > hi:
                faults.append((name, "out of range [%s, %s] %s" % (lo, hi, spec["unit"])))
                continue
            if per_phase:
                lst = reading.get(key)
                if lst is None:
                    lst = [None] * len(spec["di"])
                    reading[key] = lst
                lst[phase] = value
            else:
                reading[key] = value
        return reading, faults


def _dlt_value(name, v, spec):
    """A DL/T 645 item's integer `v` with `decimals` as the canonical value (exact Wh for energy)."""
    decimals = spec["decimals"]
    scale = spec.get("scale", 1)
    if name == "energy_import":
        k = modbus.pow10_exponent(scale)
        if k is not None:
            k += 3 - decimals
            if k >= 0:
                return v * 10**k
            return modbus._div_round(v, 10 ** (-k))
        wh = v * scale * 1000 / 10**decimals
        return int(wh + 0.5)
    return v * scale / 10**decimals


def _range(spec, override):
    """(min, max) of a value: the site's override for this meter when given, else the profile's."""
    if override:
        return override[0], override[1]
    return spec["min"], spec["max"]


def plan_for(prof, names=None, char_us=CHAR_US_9600, ranges=None):
    """The read plan for a meter of profile `prof`: MeterPlan (Modbus) or DltPlan (DL/T 645).

    `ranges` is the site file's per-meter override {value name: [min, max]} (a CT-connected
    meter measures primary currents and powers far beyond the profile's direct-connection
    ranges); it replaces the profile's sane range for those values only.
    """
    if _profile.protocol(prof) == "dlt645":
        return DltPlan(prof, names, char_us=char_us, ranges=ranges)
    return MeterPlan(prof, names, char_us=char_us, ranges=ranges)
