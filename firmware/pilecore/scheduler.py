"""Bus scheduler: one master per RS-485 bus decides which transaction goes next.

Polls of every meter, console raw reads and commissioning scans all go through the same queue,
so nothing talks over anything else.  The scheduler does no I/O and reads no clock: the port
asks `next_txn(now_ms)` for the next transaction, performs it, and reports the outcome with
`complete(txn, now_ms, code, payload, elapsed_ms)`.  `now_ms` is any monotonic millisecond
count (ticks on the ESP32, time.monotonic() * 1000 on the Pi, a simulated clock in the HIL).

Fairness and isolation:
- devices are polled round-robin when due; while a meter needs its quiet time between two
  reads of one cycle (`min_gap_ms`), the bus serves another meter's cycle instead of idling
  (open cycles are always continued first, oldest first, so on a real line, where one
  transaction outlasts a meter's quiet time, about two cycles are open at once and a reading
  stays a snapshot taken within a few transactions; `max_active` bounds it regardless);
- a read that gets no valid reply is retried once (with a longer timeout after a timeout);
  a device that fails again is put in backoff (doubling up to `max_backoff_ms`) and probed with
  a single read when the backoff ends, so a dead meter costs one timeout per backoff period,
  not one per poll, and never stalls the others;
- interactive jobs (console `mbread`) go at the next transaction boundary, but at most every
  other transaction while polls are due; background jobs (scans) only fill idle bus time;
- both protocols share the bus: a transaction carries its protocol ("modbus" or "dlt645",
  the plan's for a poll; a job's from its address, a 12-digit string for DL/T 645 and an int
  for Modbus), builds its own request frame and checks its own reply (`request`,
  `reply_needed`, `parse`), so a port moves bytes and never knows which protocol it carries;
- each device's reply timeout adapts to its measured response time (smoothed mean plus four
  deviations, as TCP does), bounded between `min_timeout_ms` and the bus's `timeout_ms` * 4.
"""

from pilecore import dlt645, modbus

PRIO_INTERACTIVE = 0
PRIO_BACKGROUND = 1


def char_time_us(baud, parity="N", stopbits=1):
    """Microseconds per character on the wire: start + 8 data + parity + stop bits."""
    bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
    return bits * 1000000 // baud


def frame_time_us(nbytes, char_us):
    """Wire time of a frame plus the 3.5-character silence that ends it."""
    return nbytes * char_us + (7 * char_us) // 2


def protocol_of(address):
    """The protocol a device address belongs to: "dlt645" for a 12-digit string, else "modbus"."""
    return "dlt645" if isinstance(address, str) else "modbus"


def reply_bytes(protocol, function, count):
    """Length of a normal reply: Modbus by function and count; DL/T 645 by value bytes."""
    if protocol == "dlt645":
        if function == dlt645.C_READ_ADDRESS:
            return dlt645.reply_length(2)  # 6 address bytes, no identifier
        return dlt645.reply_length(count)
    return modbus.response_length(function, count if function != 5 else 1)


class Txn:
    """One transaction for the port to perform.

    kind: "poll" (part of a device's poll cycle), "job" (a submitted one-off).
    Modbus (`protocol` "modbus", `address` 1..247): function 1-4 reads `count` items at
    `register`; function 5 writes coil `register` to `value`.
    DL/T 645 (`protocol` "dlt645", `address` a 12-digit string): function 0x11 reads data item
    `register` whose value has `count` bytes; function 0x13 is the broadcast address read.
    timeout_ms: how long the port waits for the complete reply.
    """

    def __init__(self, kind, key, address, function, register, count, timeout_ms, value=None, protocol="modbus"):
        self.protocol = protocol
        self.kind = kind
        self.key = key
        self.address = address
        self.function = function
        self.register = register
        self.count = count
        self.timeout_ms = timeout_ms
        self.value = value
        self.read_index = 0
        self.attempt = 0
        self.job = None

    def request(self):
        """The request frame: Modbus RTU, or DL/T 645 with its wake-up preamble."""
        if self.protocol == "dlt645":
            if self.function == dlt645.C_READ_ADDRESS:
                return dlt645.read_address_frame()
            return dlt645.read_request(self.address, self.register)
        if self.function == 5:
            return modbus.write_coil_request(self.address, self.register, self.value)
        return modbus.read_request(self.address, self.function, self.register, self.count)

    def request_len(self):
        """Bytes of the request frame (without building it)."""
        if self.protocol == "dlt645":
            return 16 if self.function == dlt645.C_READ_ADDRESS else 20
        return 8

    def response_len(self):
        """Bytes of a normal reply (an estimate for DL/T 645: the meter's preamble varies)."""
        return reply_bytes(self.protocol, self.function, self.count)

    def reply_needed(self, buf, n):
        """Bytes the reply in buf[:n] needs in total (0: cannot tell yet, keep reading).

        Lets a port stop reading as soon as a frame is complete: a Modbus exception reply is
        5 bytes; a DL/T 645 frame's length is in its tenth byte (after any preamble).
        """
        if self.protocol == "dlt645":
            need = dlt645.frame_length(buf, n)
            if need is None:
                return 0
            return need if need > 0 else n  # not a frame: stop and let parse() reject it
        if n >= 3 and (buf[1] & 0x80 or 1 <= buf[1] <= 4):
            # the reply's own header gives its length (an exception is 5 bytes, a read 5 +
            # its byte count): a reply of the wrong size is read whole and judged by parse(),
            # not cut off and taken for a damaged frame
            return modbus.rtu_frame_length(buf[:n])
        if n >= 2 and buf[1] & 0x80:
            return 5
        return self.response_len()

    def parse(self, frm):
        """Check a received reply against this request: (result code, payload).

        payload: Modbus registers or bits; DL/T 645 value bytes (or the address, for 0x13);
        the exception code / error byte with E_EXCEPTION.
        """
        if self.protocol == "dlt645":
            if self.function == dlt645.C_READ_ADDRESS:
                return dlt645.parse_address_response(frm)
            return dlt645.parse_read_response(frm, self.address, self.register, self.count)
        return modbus.parse_rtu_reply(frm, self.address, self.function, self.register, self.count, self.value)


class LateReplies:
    """A master's memory of requests whose replies have not been seen: which received frame
    answers which request, when a reply comes after its request timed out.

    A device on a half-duplex line answers in order, and a reply that misses the master's
    timeout still goes out.  An RTU frame carries no transaction number, so a late reply to
    a read of register 0x12 arrives looking exactly like the reply to the next read of 0x13
    of the same device (same address, function, byte count): taken as that reply it is a
    false reading.  The port (which moves the bytes) tells this object what it sends, what
    it discards before sending and each complete frame it receives; `claim` then says whether
    the frame is the current request's reply or an earlier one's late reply.

    Rules, oldest unanswered request first:
    - a frame that could not answer the oldest (another device, function or byte count)
      means that request's reply was lost: it is forgotten and the next is tried;
    - a frame that could answer it is its reply: for the current request, or for an earlier
      request identical to the current one (the same registers read again: its data is as
      good), the frame is taken; for an earlier different request it is a late reply, which
      the port discards (counted in `late`) while it keeps waiting for the current one's;
    - a port that drains input before a request reports how many frames it found
      (`drained`): those were the oldest requests' late replies;
    - a request whose reply was taken is no longer awaited; one that timed out or whose wait
      ended with only a late reply stays awaited (its reply may come in the next wait), and
      one answered by an identical earlier request's reply does too;
    - the memory ends `grace_ms` (at least the request's timeout) after the last plain
      timeout (`timed_out`): a reply is not expected later than that.  A wait that ended
      with a late reply does not extend it, so a lost reply costs at most that long.
    """

    def __init__(self, grace_ms=1000):
        self.grace_ms = grace_ms
        self.items = []  # [(request bytes, Txn)], oldest first
        self.until_ms = 0  # the memory is forgotten at this time
        self.late = 0  # late replies recognised (discarded) so far

    def before_send(self, now_ms, drained_frames=0):
        """Call before sending a request: forget what expired, and the requests whose late
        replies were drained from the input (`drained_frames` complete frames)."""
        if self.items and now_ms - self.until_ms >= 0:
            self.items = []
        n = min(drained_frames, len(self.items))
        if n:
            self.late += n
            self.items = self.items[n:]

    def sent(self, txn, request):
        """Call when `request` (the bytes of `txn`) has been sent."""
        self.items.append((bytes(request), txn))

    def claim(self, txn, request, frm):
        """A complete frame `frm` arrived while waiting for `txn`'s reply: True when it is to
        be judged as that reply (`txn.parse`), False when it is a late reply to discard."""
        request = bytes(request)
        while self.items:
            old_req, old = self.items[0]
            if old is txn:
                self.items.pop(0)
                return True
            code = old.parse(frm)[0]
            self.items.pop(0)
            if code in (modbus.E_ADDRESS, modbus.E_FUNCTION, modbus.E_LENGTH):
                continue  # not that request's reply: its reply was lost
            if code == modbus.E_CRC or old_req == request:
                return True  # damaged (judge it as ours), or the same read's data
            self.late += 1
            return False
        return True

    def timed_out(self, txn, now_ms):
        """Call when `txn`'s wait ended with nothing received: its reply may still come."""
        grace = txn.timeout_ms if txn.timeout_ms > self.grace_ms else self.grace_ms
        self.until_ms = now_ms + grace


class Device:
    """A polled device (a meter) and what the scheduler has learned about it."""

    def __init__(self, key, address, plan, poll_ms, response_ms, min_gap_ms, timeout_ms):
        self.key = key
        self.address = address
        self.plan = plan
        self.poll_ms = poll_ms
        self.min_gap_ms = min_gap_ms
        self.next_poll = 0
        self.ready_at = 0
        self.srtt = response_ms * 8  # smoothed latency, ms * 8 (integer EWMA)
        self.rttvar = response_ms * 2  # smoothed deviation, ms * 4
        self.timeout_hint = timeout_ms  # the profile's or bus's configured timeout
        self.failures = 0
        self.backoff_until = 0
        self.boost = 1  # timeout multiplier after timeouts (1, 2, 4, 8)
        self.retry = None  # read index to repeat once after a lost reply
        self.requests = 0
        self.replies = 0
        self.timeouts = 0
        self.errors = 0
        self.last_latency_ms = None
        self.cycle = None  # [started_ms, blocks, codes] while polling

    def stats(self):
        return {
            "address": self.address,
            "requests": self.requests,
            "replies": self.replies,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "latency_ms": self.last_latency_ms,
            "srtt_ms": self.srtt // 8,
            "failures": self.failures,
            "backoff_until_ms": self.backoff_until,
        }


class Job:
    """A one-off request: raw read, coil write, or one probe of a scan."""

    def __init__(self, job_id, address, function, register, count, prio, value=None, tag=None):
        self.protocol = protocol_of(address)
        self.id = job_id
        self.address = address
        self.function = function
        self.register = register
        self.count = count
        self.prio = prio
        self.value = value
        self.tag = tag


class BusScheduler:
    """See the module docstring."""

    def __init__(
        self,
        name,
        baud=9600,
        parity="N",
        stopbits=1,
        timeout_ms=500,
        max_backoff_ms=300000,
        min_timeout_ms=50,
        max_active=32,
    ):
        self.name = name
        self.char_us = char_time_us(baud, parity, stopbits)
        self.timeout_ms = timeout_ms
        self.max_backoff_ms = max_backoff_ms
        self.min_timeout_ms = min_timeout_ms
        self.devices = []
        self._by_key = {}
        self._rr = 0
        self.max_active = max_active
        self._active = []  # devices whose poll cycle is open, oldest first
        self._jobs = []
        self._next_job_id = 1
        self._polls_since_job = 1
        self.busy = False
        self.stats = {
            "requests": 0,
            "replies": 0,
            "timeouts": 0,
            "crc_errors": 0,
            "exceptions": 0,
            "other_errors": 0,
            "busy_us": 0,
        }
        # Trace hook, as pymodbus's trace_packet: None, or a callable (txn, code, results) called
        # after every completed transaction with what it finished (tests and diagnostics).
        self.trace = None

    # ------------------------------------------------------------ configuration

    def add_device(self, key, address, plan, poll_ms, response_ms=100, min_gap_ms=0, timeout_ms=None):
        dev = Device(
            key,
            address,
            plan,
            poll_ms,
            response_ms,
            min_gap_ms,
            timeout_ms if timeout_ms is not None else self.timeout_ms,
        )
        self.devices.append(dev)
        self._by_key[key] = dev
        return dev

    def device(self, key):
        return self._by_key.get(key)

    def set_poll_ms(self, key, poll_ms):
        """Poll device `key` every poll_ms from its next cycle on (a console setting); False if
        there is no such device."""
        dev = self.device(key)
        if dev is None:
            return False
        dev.poll_ms = poll_ms
        return True

    def submit(self, address, function, register, count, prio=PRIO_INTERACTIVE, value=None, tag=None):
        """Queue a one-off request; returns its job id (reported back by `complete`).

        A DL/T 645 request has a 12-digit string address (`dlt645.WILDCARD` with function
        0x13 for the broadcast address read), a data identifier as `register` and the value's
        byte count as `count`; a Modbus request an int address."""
        job = Job(self._next_job_id, address, function, register, count, prio, value, tag)
        self._next_job_id += 1
        self._jobs.append(job)
        return job.id

    def pending_jobs(self):
        return len(self._jobs)

    def cancel_jobs(self, tag):
        """Drop queued jobs with this tag (e.g. an abandoned scan); returns how many."""
        before = len(self._jobs)
        self._jobs = [j for j in self._jobs if j.tag != tag]
        return before - len(self._jobs)

    # ------------------------------------------------------------ timing

    def timeout_for(self, dev, function, count, protocol="modbus"):
        """Reply timeout: adaptive latency bound plus the wire time of the expected reply."""
        if dev is None:
            rto = self.timeout_ms
        else:
            rto = (dev.srtt // 8 + dev.rttvar) * dev.boost
            hi = 2 * max(self.timeout_ms, dev.timeout_hint)
            rto = min(hi, max(self.min_timeout_ms, rto))
        wire = frame_time_us(reply_bytes(protocol, function, count), self.char_us) // 1000
        return rto + wire + 1

    def _observe_latency(self, dev, elapsed_ms, txn):
        wire_us = frame_time_us(txn.request_len(), self.char_us) + frame_time_us(txn.response_len(), self.char_us)
        lat = elapsed_ms - wire_us // 1000
        if lat < 0:
            lat = 0
        dev.last_latency_ms = lat
        err = lat - dev.srtt // 8
        dev.srtt += err
        if err < 0:
            err = -err
        dev.rttvar += err - dev.rttvar // 4

    # ------------------------------------------------------------ choosing

    def next_txn(self, now_ms):
        """The next transaction to perform, or None when nothing is due now."""
        if self.busy:
            return None
        job = self._pick_job(now_ms)
        if job is not None:
            return self._start_job(job, now_ms)
        dev = self._pick_device(now_ms)
        if dev is not None:
            return self._poll_txn(dev, now_ms)
        return None

    def _polls_due(self, now_ms):
        if self._active:
            return True
        return any(d.next_poll <= now_ms and d.backoff_until <= now_ms for d in self.devices)

    def _pick_job(self, now_ms):
        if not self._jobs:
            return None
        due = self._polls_due(now_ms)
        best = None
        for job in self._jobs:
            if best is None or job.prio < best.prio:
                best = job
        if best.prio == PRIO_BACKGROUND and due:
            return None
        if due and self._polls_since_job < 1:
            return None
        self._jobs.remove(best)
        return best

    def _pick_device(self, now_ms):
        for dev in self._active:  # finish open cycles first, oldest first
            if dev.ready_at <= now_ms:
                return dev
        if len(self._active) >= self.max_active:
            return None
        n = len(self.devices)
        for i in range(n):
            cand = self.devices[(self._rr + i) % n]
            if (
                cand.cycle is None
                and cand.next_poll <= now_ms
                and cand.backoff_until <= now_ms
                and cand.ready_at <= now_ms
            ):
                self._rr = (self._rr + i + 1) % n
                cand.cycle = [now_ms, [None] * len(cand.plan.reads), []]
                self._active.append(cand)
                return cand
        return None

    def _poll_txn(self, dev, now_ms):
        attempt = 0
        if dev.retry is not None:
            idx, attempt, dev.retry = dev.retry, 1, None
        else:
            idx = self._next_read(dev)
        fc, start, count = dev.plan.reads[idx]
        proto = getattr(dev.plan, "protocol", "modbus")
        txn = Txn("poll", dev.key, dev.address, fc, start, count, self.timeout_for(dev, fc, count, proto), None, proto)
        txn.read_index = idx
        txn.attempt = attempt
        self.busy = True
        self._polls_since_job += 1
        return txn

    def _next_read(self, dev):
        blocks = dev.cycle[1]
        for i in range(len(blocks)):
            if blocks[i] is None and i not in dev.cycle[2]:
                return i
        return 0

    def _start_job(self, job, now_ms):
        dev = None
        for d in self.devices:
            if d.address == job.address:
                dev = d
        txn = Txn(
            "job",
            None,
            job.address,
            job.function,
            job.register,
            job.count,
            self.timeout_for(dev, job.function, job.count, job.protocol),
            job.value,
            job.protocol,
        )
        txn.job = job
        self.busy = True
        self._polls_since_job = 0
        return txn

    def wake_in_ms(self, now_ms):
        """Milliseconds until something may be due (0: call next_txn now)."""
        if self._jobs and (not self._polls_due(now_ms) or self._polls_since_job >= 1):
            return 0
        soonest = None
        for dev in self._active:
            if soonest is None or dev.ready_at < soonest:
                soonest = dev.ready_at
        for dev in self.devices:
            if dev.cycle is not None or len(self._active) >= self.max_active:
                continue
            t = max(dev.next_poll, dev.backoff_until, dev.ready_at)
            if soonest is None or t < soonest:
                soonest = t
        if soonest is None:
            return 1000
        return max(0, soonest - now_ms)

    # ------------------------------------------------------------ outcomes

    def complete(self, txn, now_ms, code, payload, elapsed_ms):
        """Record the outcome of `txn`; return a list of finished results.

        code is a pilecore.modbus result code (OK, E_TIMEOUT, E_CRC, E_EXCEPTION, ...); payload
        the registers (OK) or the exception code (E_EXCEPTION).  Results are tuples:
          ("poll", device_key, {"t_ms", "blocks", "codes", "ok"})  when a poll cycle ends
          ("job", job, code, payload)                              for a one-off job
          ("shrunk", device_key, read_index)                       a plan fell back (info)
          ("unsupported", device_key, [(value, phase)])            values the meter refuses
          ("exception", device_key, [fc, start, count], code)      a read refused (busy, failure)
        """
        results = self._complete(txn, now_ms, code, payload, elapsed_ms)
        if self.trace is not None:
            self.trace(txn, code, results)
        return results

    def _complete(self, txn, now_ms, code, payload, elapsed_ms):
        self.busy = False
        self._count(code, elapsed_ms)
        if txn.kind == "job":
            dev = None
            for d in self.devices:
                if d.address == txn.address:
                    dev = d
            if dev is not None:
                dev.ready_at = now_ms + dev.min_gap_ms
            return [("job", txn.job, code, payload)]
        dev = self._by_key[txn.key]
        dev.requests += 1
        dev.ready_at = now_ms + dev.min_gap_ms
        out = []
        if code == modbus.OK:
            dev.replies += 1
            dev.boost = 1
            self._observe_latency(dev, elapsed_ms, txn)
            dev.cycle[1][txn.read_index] = payload
        elif code == modbus.E_EXCEPTION:
            dev.replies += 1
            self._observe_latency(dev, elapsed_ms, txn)
            before = list(dev.plan.unsupported)
            if dev.plan.shrink(txn.read_index, payload):
                dev.cycle[1] = [None] * len(dev.plan.reads)
                dev.cycle[2] = []
                out.append(("shrunk", dev.key, txn.read_index))
                return out
            new = [u for u in dev.plan.unsupported if u not in before]
            if new:
                out.append(("unsupported", dev.key, new))
                dev.cycle[1] = [None] * len(dev.plan.reads)
                dev.cycle[2] = []
                if not dev.plan.reads:
                    return out + [self._end_cycle(dev, now_ms, False)]
                return out
            dev.cycle[2].append(txn.read_index)
            dev.errors += 1
            out.append(("exception", dev.key, list(dev.plan.reads[txn.read_index]), payload))
        else:
            # The reply may just be slower than the estimate: wait longer next time (a late
            # reply to an earlier request says so too).
            if (code == modbus.E_TIMEOUT or code == modbus.E_LATE) and dev.boost < 8:
                dev.boost *= 2
            if code == modbus.E_TIMEOUT:
                dev.timeouts += 1
            else:
                dev.errors += 1
            if txn.attempt == 0:
                dev.retry = txn.read_index  # one retry: noise or a slow reply, not yet dead
                return out
            out.append(self._end_cycle(dev, now_ms, False, code))
            return out
        blocks, failed = dev.cycle[1], dev.cycle[2]
        if all(blocks[i] is not None or i in failed for i in range(len(blocks))):
            out.append(self._end_cycle(dev, now_ms, True))
        return out

    def _end_cycle(self, dev, now_ms, ok, code=None):
        """Finish dev's cycle: a result with whatever was read; backoff on failure."""
        started, blocks, failed = dev.cycle
        dev.cycle = None
        self._active.remove(dev)
        if ok:
            dev.failures = 0
            dev.backoff_until = 0
            dev.next_poll = max(dev.next_poll + dev.poll_ms, now_ms - dev.poll_ms)
            if dev.next_poll < started:
                dev.next_poll = started + dev.poll_ms
        else:
            dev.failures += 1
            if dev.failures >= 3:
                dev.boost = 1  # a dead device: keep its probes cheap for the others
            backoff = dev.poll_ms << min(dev.failures - 1, 16)
            if backoff > self.max_backoff_ms:
                backoff = self.max_backoff_ms
            dev.backoff_until = now_ms + backoff
            dev.next_poll = dev.backoff_until
        if not dev.plan.reads:
            # The meter refused every value: after the backoff, ask for all of them again
            # rather than never polling it (and crashing on an empty plan) for good.
            dev.plan.relearn()
        return ("poll", dev.key, {"t_ms": started, "blocks": blocks, "failed": failed, "ok": ok, "code": code})

    def _count(self, code, elapsed_ms):
        s = self.stats
        s["requests"] += 1
        s["busy_us"] += elapsed_ms * 1000
        if code == modbus.OK:
            s["replies"] += 1
        elif code == modbus.E_TIMEOUT:
            s["timeouts"] += 1
        elif code == modbus.E_CRC:
            s["crc_errors"] += 1
        elif code == modbus.E_EXCEPTION:
            s["replies"] += 1
            s["exceptions"] += 1
        else:
            s["other_errors"] += 1

    def snapshot(self):
        """Per-bus and per-device statistics (plain dicts, for console and telemetry)."""
        st = dict(self.stats)
        st["busy_ms"] = st.pop("busy_us") // 1000
        st["devices"] = dict([(d.key, d.stats()) for d in self.devices])
        st["queued_jobs"] = len(self._jobs)
        return st
