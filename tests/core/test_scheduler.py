"""Bus scheduler: fairness, dead-meter isolation, fallback, jobs, adaptive timeouts.

A scripted bus stands in for the port: it answers each transaction after a latency chosen by
the test, on a simulated millisecond clock (both interpreters).
"""

from pilecore import modbus, planner, scheduler


def prof(max_block=40):
    return {
        "id": "t",
        "kind": "meter",
        "phases": 1,
        "function": 4,
        "byte_order": "big",
        "word_order": "big",
        "max_block": max_block,
        "min_gap_ms": 5,
        "response_ms": 40,
        "timeout_ms": 300,
        "values": {
            "voltage": {"register": [0x00], "type": "f32", "scale": 1.0, "unit": "V", "min": 0, "max": 300},
            "power": {"register": 0x0C, "type": "f32", "scale": 1.0, "unit": "W", "min": -1e5, "max": 1e5},
            "energy_import": {"register": 0x48, "type": "f32", "scale": 1.0, "unit": "kWh", "min": 0, "max": 1e7},
        },
    }


class Bus:
    """Runs a scheduler against scripted devices. behaviour[address] -> (code, latency_ms)."""

    def __init__(self, sched):
        self.s = sched
        self.now = 0
        self.behaviour = {}
        self.log = []  # (t, kind, address, function, register, count, code)
        self.results = []

    def answer(self, txn):
        how = self.behaviour.get(txn.address, ("ok", 30))
        kind, lat = how[0], how[1]
        wire = (
            scheduler.frame_time_us(8, self.s.char_us) + scheduler.frame_time_us(txn.response_len(), self.s.char_us)
        ) // 1000
        if kind == "dead":
            return modbus.E_TIMEOUT, None, txn.timeout_ms
        if kind == "exc_over" and txn.count > how[2]:
            return modbus.E_EXCEPTION, 2, wire + lat
        if kind == "refuse":  # exception 2 to everything, as a rogue or confused responder
            return modbus.E_EXCEPTION, 2, wire + lat
        if lat > txn.timeout_ms:
            return modbus.E_TIMEOUT, None, txn.timeout_ms
        return modbus.OK, [0] * txn.count, wire + lat

    def run(self, until_ms):
        while self.now < until_ms:
            txn = self.s.next_txn(self.now)
            if txn is None:
                self.now += max(1, min(self.s.wake_in_ms(self.now), until_ms - self.now))
                continue
            code, payload, elapsed = self.answer(txn)
            self.now += elapsed
            self.log.append((self.now, txn.kind, txn.address, txn.function, txn.register, txn.count, code))
            self.results.extend(self.s.complete(txn, self.now, code, payload, elapsed))

    def polls(self, key, ok=True):
        return [r for r in self.results if r[0] == "poll" and r[1] == key and r[2]["ok"] == ok]


def site(n=3, poll_ms=10000, **kw):
    s = scheduler.BusScheduler("bus1", 9600, "N", 1, 500, **kw)
    for a in range(1, n + 1):
        plan = planner.MeterPlan(prof(), char_us=s.char_us)
        s.add_device("M%d" % a, a, plan, poll_ms, response_ms=40, min_gap_ms=5, timeout_ms=300)
    return s, Bus(s)


def test_char_and_frame_times():
    assert scheduler.char_time_us(9600, "N", 1) == 1041
    assert scheduler.char_time_us(9600, "E", 1) == 1145
    assert scheduler.frame_time_us(8, 1000) == 11500


def test_every_meter_is_polled_every_interval():
    s, bus = site()
    bus.run(60000)
    for key in ("M1", "M2", "M3"):
        cycles = bus.polls(key)
        assert len(cycles) == 6, (key, len(cycles))
        starts = [c[2]["t_ms"] for c in cycles]
        assert all(b - a == 10000 for a, b in zip(starts, starts[1:])), starts


def test_a_dead_meter_is_isolated_and_does_not_delay_the_others():
    s, bus = site(max_backoff_ms=60000)
    bus.behaviour[2] = ("dead", 0)
    bus.run(300000)
    for key in ("M1", "M3"):
        starts = [c[2]["t_ms"] for c in bus.polls(key)]
        assert len(starts) == 30
        # a cycle may wait for at most one attempt (a read and its retry) at the dead meter
        assert all(b - a <= 10000 + 2 * 1000 + 200 for a, b in zip(starts, starts[1:])), starts
    attempts = [e for e in bus.log if e[2] == 2]
    # backoff 10, 20, 40, 60, 60, ... s: far fewer than one attempt per poll
    assert 10 <= len(attempts) <= 18, len(attempts)
    assert s.device("M2").failures * 2 == len(attempts)


def test_a_meter_that_comes_back_is_polled_normally_again():
    s, bus = site(max_backoff_ms=40000)
    bus.behaviour[1] = ("dead", 0)
    bus.run(100000)
    bus.behaviour[1] = ("ok", 30)
    bus.run(200000)
    assert s.device("M1").failures == 0
    late = [c for c in bus.polls("M1") if c[2]["t_ms"] > 150000]
    assert len(late) >= 4


def test_exception_on_a_merged_read_is_learned_per_meter():
    s, bus = site(n=2)
    bus.behaviour[1] = ("exc_over", 30, 4)  # meter 1 refuses reads longer than 4 registers
    bus.run(30000)
    shrunk = [r for r in bus.results if r[0] == "shrunk"]
    assert shrunk and all(r[1] == "M1" for r in shrunk)
    assert s.device("M1").plan.gap == 0 and s.device("M2").plan.gap > 0
    assert len(bus.polls("M1")) == 3 and len(bus.polls("M2")) == 3
    late = [e for e in bus.log if e[2] == 1 and e[0] > 15000]
    assert late and all(e[5] <= 4 and e[6] == modbus.OK for e in late)


def test_interactive_job_goes_next_and_alternates_with_polls():
    s, bus = site(n=3)
    bus.run(100)  # a poll cycle is under way
    ids = [s.submit(9, 3, 0, 1) for _ in range(3)]
    bus.run(2000)
    kinds = [e[1] for e in bus.log]
    first_job = kinds.index("job")
    assert kinds[first_job : first_job + 5] == ["job", "poll", "job", "poll", "job"]
    done = [r[1].id for r in bus.results if r[0] == "job"]
    assert done == ids


def test_background_jobs_only_fill_idle_time():
    s, bus = site(n=3)
    for a in range(10, 20):
        s.submit(a, 3, 0, 1, prio=scheduler.PRIO_BACKGROUND, tag="scan")
    bus.run(9000)
    polls_done = [e[0] for e in bus.log if e[1] == "poll"]
    jobs_done = [e[0] for e in bus.log if e[1] == "job"]
    assert len(jobs_done) == 10
    assert min(jobs_done) > max(polls_done[:6])
    assert s.cancel_jobs("scan") == 0


def test_timeout_adapts_to_a_slower_meter_and_back():
    s, bus = site(n=1)
    dev = s.device("M1")
    t0 = s.timeout_for(dev, 4, 14)
    bus.behaviour[1] = ("ok", 200)  # slower while a car charges
    bus.run(120000)
    t_slow = s.timeout_for(dev, 4, 14)
    assert t_slow > 200 + 20 and t_slow > t0
    # the first slow reply is lost once, the retry with a longer timeout gets it, and no poll
    # cycle fails
    assert len([e for e in bus.log if e[6] == modbus.E_TIMEOUT]) == 1
    assert bus.polls("M1", ok=False) == [] and len(bus.polls("M1")) == 12
    bus.behaviour[1] = ("ok", 20)
    bus.run(400000)
    assert s.timeout_for(dev, 4, 14) < t_slow


def test_statistics_count_every_outcome():
    s, bus = site(n=2)
    bus.behaviour[2] = ("dead", 0)
    bus.run(25000)
    st = s.snapshot()
    assert st["requests"] == len(bus.log)
    assert st["timeouts"] == len([e for e in bus.log if e[6] == modbus.E_TIMEOUT])
    assert st["replies"] == len([e for e in bus.log if e[6] == modbus.OK])
    assert st["busy_ms"] > 0
    assert st["devices"]["M2"]["timeouts"] >= 1


def test_a_meters_quiet_time_is_used_for_other_meters():
    s = scheduler.BusScheduler("bus1", 9600, "N", 1, 500)
    for a in (1, 2):
        plan = planner.MeterPlan(prof(), gap=0)  # several reads per cycle
        s.add_device("M%d" % a, a, plan, 10000, response_ms=5, min_gap_ms=200, timeout_ms=300)
    bus = Bus(s)
    bus.behaviour = {1: ("ok", 5), 2: ("ok", 5)}
    bus.run(5000)
    first = [e[2] for e in bus.log[:4]]
    assert first == [1, 2, 1, 2]  # not 1, (idle 200 ms), 1, ...
    assert len(bus.polls("M1")) == 1 and len(bus.polls("M2")) == 1


def test_a_meter_that_refuses_every_value_is_asked_for_all_of_them_again():
    # issue 9 defect #3: exception 2 to every read shrank the plan to nothing and the next poll
    # crashed the bus loop on an empty plan; the real meter's values were disabled for good
    s, bus = site(n=2, poll_ms=1000)
    bus.behaviour[1] = ("refuse", 30)
    bus.run(20000)
    unsupported = [r for r in bus.results if r[0] == "unsupported" and r[1] == "M1"]
    assert unsupported and bus.polls("M1", ok=False)  # refused, reported, and no crash
    assert len(bus.polls("M2")) >= 15  # the other meter is read on
    plan = s.device("M1").plan
    assert plan.unsupported == [] and len(plan.reads) >= 1  # relearned: the full plan again
    bus.behaviour[1] = ("ok", 30)  # the real meter answers again
    bus.run(bus.now + 600000)
    ok = bus.polls("M1")
    assert ok and all(b is not None for b in ok[-1][2]["blocks"])


def test_trace_hook_sees_every_completed_transaction_and_what_it_finished():
    s, bus = site()
    bus.behaviour[2] = ("dead", 0)
    seen = []
    s.trace = lambda txn, code, results: seen.append((txn.key, code, list(results)))
    bus.run(30000)
    assert len(seen) == len(bus.log)  # one call per transaction, in bus order
    assert [(k, c) for k, c, _ in seen] == [(k, e[6]) for (k, _, _), e in zip(seen, bus.log)]
    assert [r for _, _, rs in seen for r in rs] == bus.results  # exactly what complete() returned
    assert any(k == "M2" and c == modbus.E_TIMEOUT for k, c, _ in seen)


# ------------------------------------------------------------ late replies (issue 13)


def _read(address, reg, timeout_ms=100):
    return scheduler.Txn("poll", None, address, 3, reg, 1, timeout_ms)


def _reply(address, value):
    return modbus.frame(bytes([address, 3, 2, value >> 8, value & 0xFF]))


def _send(late, txn):
    req = txn.request()
    late.sent(txn, req)
    return req


def test_a_late_reply_to_another_register_of_the_same_device_is_not_taken():
    late = scheduler.LateReplies(grace_ms=1000)
    a, b = _read(50, 0x12), _read(50, 0x13)
    late.before_send(0)
    _send(late, a)
    late.timed_out(a, 100)  # a's reply (0) is still due
    late.before_send(100)
    req = _send(late, b)
    assert late.claim(b, req, _reply(50, 0)) is False  # a's late reply: discarded
    assert late.claim(b, req, _reply(50, 1)) is True  # b's own
    assert late.late == 1 and late.items == []


def test_an_identical_earlier_reads_reply_is_good_data_and_its_own_stays_due():
    late = scheduler.LateReplies()
    a, retry, b = _read(50, 0x12), _read(50, 0x12), _read(50, 0x13)
    late.before_send(0)
    _send(late, a)
    late.timed_out(a, 100)
    late.before_send(100)
    req = _send(late, retry)
    assert late.claim(retry, req, _reply(50, 0)) is True  # a's reply: the same registers
    late.before_send(150)
    req = _send(late, b)
    assert late.claim(b, req, _reply(50, 0)) is False  # the retry's own reply, late
    assert late.claim(b, req, _reply(50, 1)) is True


def test_a_reply_from_another_device_means_the_earlier_reply_was_lost():
    late = scheduler.LateReplies()
    dead, other = _read(7, 0x12), _read(50, 0x12)
    late.before_send(0)
    _send(late, dead)
    late.timed_out(dead, 100)
    late.before_send(100)
    req = _send(late, other)
    assert late.claim(other, req, _reply(50, 1)) is True  # not the dead device's answer
    assert late.late == 0 and late.items == []


def test_replies_drained_before_a_request_settle_the_oldest_and_the_memory_expires():
    late = scheduler.LateReplies(grace_ms=1000)
    a, b, c = _read(50, 0x10), _read(50, 0x11), _read(50, 0x12)
    late.before_send(0)
    _send(late, a)
    late.timed_out(a, 100)
    late.before_send(120, drained_frames=1)  # a's late reply was waiting in the input
    req = _send(late, b)
    assert late.claim(b, req, _reply(50, 1)) is True
    _send(late, c)
    late.timed_out(c, 300)
    late.before_send(300 + 1000)  # a second later nothing is still due
    d = _read(50, 0x13)
    req = _send(late, d)
    assert late.claim(d, req, _reply(50, 5)) is True
    assert late.late == 1


def test_a_late_reply_is_a_failure_reason_of_its_own():
    assert modbus.RESULT_NAMES[modbus.E_LATE] == "late reply"
