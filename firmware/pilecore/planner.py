"""Read planner: the fewest Modbus transactions that fetch a meter's values, and their decoding.

A `MeterPlan` turns "these values from this profile" into a list of reads
`[function, start, count]` by merging nearby registers into one read, bounded by the meter's
block limit and by a gap limit (registers read only to bridge two wanted ones).  When a meter
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

# Exceptions that say "this read is not acceptable as asked" (as opposed to busy/failure).
SHRINK_CODES = (2, 3)
MAX_BLOCK = 125   # Modbus limit for function 3/4


def useful_gap(char_us, response_ms):
    """Registers worth reading to avoid one more transaction.

    A separate read costs a request frame (8 bytes), a response header and CRC (5 bytes), two
    3.5-character silences and the meter's response latency; each bridged register costs two
    bytes.  Bridging pays while its bytes take less time than that overhead.
    """
    overhead_chars = 8 + 5 + 7 + (response_ms * 1000) // max(1, char_us)
    return int(overhead_chars // 2)


class MeterPlan:
    """The reads for one meter and how to decode them; see the module docstring."""

    def __init__(self, prof, names=None, gap=0, limit=None):
        self.profile = prof
        self.limit = min(MAX_BLOCK, prof.get("max_block", MAX_BLOCK), limit or MAX_BLOCK)
        self.gap = gap
        self.fields = []
        for name in (names or _profile.value_names()):
            if name not in prof.get("values", {}):
                continue
            for phase, (fc, reg, typ) in enumerate(_profile.value_registers(prof, name)):
                self.fields.append((name, phase, fc, reg, typ))
        self.widest = 1
        for f in self.fields:
            w = modbus.TYPE_WIDTH[f[4]]
            if w > self.widest:
                self.widest = w
        self.unsupported = []
        self.reads = []
        self.slots = []
        self.replan()

    def replan(self):
        """Rebuild reads and slots from the fields, the gap and the block limit."""
        spans = []
        for i, (name, phase, fc, reg, typ) in enumerate(self.fields):
            if (name, phase) in self.unsupported:
                continue
            spans.append((fc, reg, reg + modbus.TYPE_WIDTH[typ], i))
        spans.sort()
        reads = []
        slots = [None] * len(self.fields)
        cur = None
        for fc, start, end, i in spans:
            if (cur is not None and cur[0] == fc and start - (cur[1] + cur[2]) <= self.gap
                    and max(end, cur[1] + cur[2]) - cur[1] <= self.limit):
                cur[2] = max(end, cur[1] + cur[2]) - cur[1]
            else:
                cur = [fc, start, end - start]
                reads.append(cur)
            slots[i] = (len(reads) - 1, start - cur[1])
        self.reads = reads
        self.slots = slots

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
        for i, field in enumerate(self.fields):
            name, phase, typ = field[0], field[1], field[4]
            slot = self.slots[i]
            if slot is None or blocks[slot[0]] is None:
                continue
            spec = prof["values"][name]
            key, per_phase = READING_KEYS[name]
            try:
                value = self._value(blocks[slot[0]], slot[1], typ, spec, name, bo, wo)
            except ValueError as exc:
                faults.append((name, "undecodable: %s" % exc))
                continue
            if value is None:
                faults.append((name, "out of range [%s, %s] %s" % (spec["min"], spec["max"], spec["unit"])))
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

    @staticmethod
    def _value(regs, offset, typ, spec, name, bo, wo):
        scale = spec.get("scale", 1)
        if name == "energy_import":
            wh = modbus.decode_milli(regs, offset, typ, scale, bo, wo)
            if wh < spec["min"] * 1000 or wh > spec["max"] * 1000:
                return None
            return wh
        v = modbus.decode_scaled(regs, offset, typ, scale, bo, wo)
        if v < spec["min"] or v > spec["max"]:
            return None
        return v


def minimal_transactions(prof, names=None):
    """The fewest reads that can cover the values (ignoring gaps): the benchmark's baseline."""
    return len(MeterPlan(prof, names, gap=MAX_BLOCK).reads)
