"""Read planner: merging, learned fallback, decoding with range checks (both interpreters)."""

from pilecore import planner


def one_phase():
    return {
        "id": "t1",
        "kind": "meter",
        "phases": 1,
        "function": 4,
        "byte_order": "big",
        "word_order": "big",
        "max_block": 40,
        "min_gap_ms": 10,
        "response_ms": 50,
        "timeout_ms": 500,
        "values": {
            "voltage": {"register": [0x00], "type": "f32", "scale": 1.0, "unit": "V", "min": 0, "max": 300},
            "current": {"register": [0x06], "type": "f32", "scale": 1.0, "unit": "A", "min": 0, "max": 100},
            "power": {"register": 0x0C, "type": "f32", "scale": 1.0, "unit": "W", "min": -20000, "max": 20000},
            "frequency": {"register": 0x46, "type": "f32", "scale": 1.0, "unit": "Hz", "min": 45, "max": 65},
            "energy_import": {"register": 0x48, "type": "f32", "scale": 1.0, "unit": "kWh", "min": 0, "max": 9999999},
        },
    }


def three_phase():
    return {
        "id": "t3",
        "kind": "meter",
        "phases": 3,
        "function": 3,
        "byte_order": "big",
        "word_order": "big",
        "max_block": 125,
        "min_gap_ms": 10,
        "response_ms": 50,
        "timeout_ms": 500,
        "values": {
            "voltage": {
                "register": [0x2006, 0x2008, 0x200A],
                "type": "f32",
                "scale": 0.1,
                "unit": "V",
                "min": 0,
                "max": 300,
            },
            "current": {
                "register": [0x200C, 0x200E, 0x2010],
                "type": "f32",
                "scale": 0.001,
                "unit": "A",
                "min": 0,
                "max": 100,
            },
            "power": {"register": 0x2012, "type": "f32", "scale": 0.1, "unit": "W", "min": -70000, "max": 70000},
            "energy_import": {"register": 0x101E, "type": "f32", "scale": 1.0, "unit": "kWh", "min": 0, "max": 9999999},
        },
    }


def f32(x):
    import struct

    b = struct.pack(">f", x)
    return [(b[0] << 8) | b[1], (b[2] << 8) | b[3]]


def block(start, count, values):
    regs = [0] * count
    for reg, words in values:
        regs[reg - start : reg - start + len(words)] = words
    return regs


def test_without_gap_bridging_each_cluster_is_a_read():
    plan = planner.MeterPlan(one_phase(), gap=0)
    assert plan.reads == [[4, 0x00, 2], [4, 0x06, 2], [4, 0x0C, 2], [4, 0x46, 4]]


def test_gap_bridging_merges_within_block_limit():
    plan = planner.MeterPlan(one_phase(), gap=10)
    assert plan.reads == [[4, 0x00, 14], [4, 0x46, 4]]
    plan = planner.MeterPlan(one_phase(), gap=100)
    # 0x00..0x4A is 74 registers: over the 40-register block limit, so two reads remain
    assert len(plan.reads) == 2 and all(r[2] <= 40 for r in plan.reads)


def test_functions_are_never_merged():
    prof = one_phase()
    prof["values"]["energy_import"]["function"] = 3
    plan = planner.MeterPlan(prof, gap=125)
    fcs = sorted(set(r[0] for r in plan.reads))
    assert fcs == [3, 4]


def test_exception_first_stops_gap_bridging_then_halves_the_block():
    plan = planner.MeterPlan(one_phase(), gap=10)
    assert plan.shrink(0, 2) is True
    assert plan.gap == 0
    assert plan.reads[0] == [4, 0x00, 2]
    # busy or device failure never shrink anything
    assert plan.shrink(0, 6) is False and plan.gap == 0


def test_block_limit_is_learned_down_to_the_widest_value():
    prof = one_phase()
    prof["values"] = {
        "energy_import": {"register": 0, "type": "u32", "scale": 0.01, "unit": "kWh", "min": 0, "max": 1e9},
        "power": {"register": 2, "type": "s32", "scale": 1.0, "unit": "W", "min": -1e5, "max": 1e5},
        "frequency": {"register": 4, "type": "u16", "scale": 0.01, "unit": "Hz", "min": 45, "max": 65},
    }
    plan = planner.MeterPlan(prof, gap=0)
    assert plan.reads == [[4, 0, 5]]
    assert plan.shrink(0, 3) is True and plan.limit == 2
    assert plan.reads == [[4, 0, 2], [4, 2, 2], [4, 4, 1]]
    # a single value still refused becomes unsupported; the others keep being read
    assert plan.shrink(2, 2) is False
    assert ("frequency", 0) in plan.unsupported
    assert plan.reads == [[4, 0, 2], [4, 2, 2]]


def test_decode_three_phase_with_scales():
    plan = planner.MeterPlan(three_phase(), gap=20)
    blocks = []
    for fc, start, count in plan.reads:
        vals = [
            (0x2006, f32(2301.0)),
            (0x2008, f32(2299.0)),
            (0x200A, f32(2310.0)),
            (0x200C, f32(16000.0)),
            (0x200E, f32(15500.0)),
            (0x2010, f32(0.0)),
            (0x2012, f32(73000.0)),
            (0x101E, f32(1234.5)),
        ]
        blocks.append(block(start, count, [v for v in vals if start <= v[0] < start + count]))
    reading, faults = plan.decode(blocks)
    assert faults == []
    assert reading["energy_wh"] == 1234500
    assert [round(v, 1) for v in reading["voltage_v"]] == [230.1, 229.9, 231.0]
    assert [round(v, 3) for v in reading["current_a"]] == [16.0, 15.5, 0.0]
    assert round(reading["power_w"], 1) == 7300.0


def test_out_of_range_and_nan_are_faults_not_readings():
    plan = planner.MeterPlan(one_phase(), gap=0)
    blocks = [f32(500.0), f32(10.0), [0x7FC0, 0], block(0x46, 4, [(0x46, f32(50.0)), (0x48, f32(5.0))])]
    reading, faults = plan.decode(blocks)
    names = [f[0] for f in faults]
    assert "voltage" in names and "power" in names
    assert "voltage_v" not in reading and "power_w" not in reading
    assert reading["energy_wh"] == 5000 and reading["current_a"] == [10.0]


def test_failed_read_leaves_values_absent():
    plan = planner.MeterPlan(one_phase(), gap=0)
    reading, faults = plan.decode([None, None, None, block(0x46, 4, [(0x46, f32(50.0)), (0x48, f32(1.0))])])
    assert faults == [] and sorted(reading) == ["energy_wh", "frequency_hz"]


def _brute_force_cost(plan, runs):
    """The cheapest split of runs into contiguous reads, by trying every split."""
    n = len(runs)
    best = None
    for mask in range(1 << (n - 1)):
        cost, first, ok = 0, 0, True
        for k in range(n):
            if k == n - 1 or mask & (1 << k):
                count = runs[k][1] - runs[first][0]
                gaps = [runs[g + 1][0] - runs[g][1] for g in range(first, k)]
                if count > plan.limit or (gaps and max(gaps) > plan.gap):
                    ok = False
                    break
                cost += plan.read_cost + 2 * count
                first = k + 1
        if ok and (best is None or cost < best):
            best = cost
    return best


def test_grouping_is_optimal_against_brute_force():
    seed = 12345
    for trial in range(40):
        values = {}
        reg = 0
        for name in ("voltage", "current", "power", "frequency", "energy_import", "power_factor"):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            reg += 2 + seed % 30
            spec = {"type": "f32", "scale": 1.0, "unit": "", "min": -1e9, "max": 1e9}
            spec["register"] = [reg] if name in ("voltage", "current") else reg
            values[name] = spec
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        prof = {
            "id": "r",
            "phases": 1,
            "function": 4,
            "max_block": 20 + seed % 60,
            "response_ms": (0, 5, 20, 60)[trial % 4],
            "values": values,
        }
        plan = planner.MeterPlan(prof, gap=(125, 10, 0)[trial % 3])
        runs = sorted([(r, r + 2) for r in (s[3] for s in plan.fields)])
        assert plan.cost_chars() == _brute_force_cost(plan, runs), trial


def test_latency_decides_whether_a_gap_is_worth_bridging():
    # bridging 0x0E..0x46 costs 112 character times; a separate read costs 20 plus the latency
    prof = one_phase()
    prof["max_block"] = 125
    prof["response_ms"] = 0
    assert planner.MeterPlan(prof).reads == [[4, 0x00, 14], [4, 0x46, 4]]
    prof["response_ms"] = 100
    assert planner.MeterPlan(prof).reads == [[4, 0x00, 0x4A]]


def ratio_meter():
    """An ADL400-like map: energy in 0.01 kWh on the secondary side, PT and CT ratios held."""
    return {
        "id": "adl",
        "kind": "meter",
        "phases": 1,
        "function": 3,
        "byte_order": "big",
        "word_order": "big",
        "max_block": 34,
        "min_gap_ms": 10,
        "response_ms": 50,
        "timeout_ms": 500,
        "ratios": {"pt": {"register": 0x8D, "type": "u16"}, "ct": {"register": 0x8E, "type": "u16"}},
        "values": {
            "energy_import": {
                "register": 0x0A,
                "type": "u32",
                "scale": 0.01,
                "unit": "kWh",
                "min": 0,
                "max": 9999999,
                "ratios": ["pt", "ct"],
            },
            "power": {"register": 0x20, "type": "s32", "scale": 1.0, "unit": "W", "min": -9e5, "max": 9e5},
        },
    }


def test_ratios_are_read_with_the_values_and_scale_energy_exactly():
    plan = planner.MeterPlan(ratio_meter())
    for reg in (0x0A, 0x8D, 0x8E):  # energy and both ratios are part of the poll
        assert any(fc == 3 and start <= reg < start + count for fc, start, count in plan.reads)
    assert plan.energy_step_wh() is None  # unknown until the ratios are read
    blocks = []
    for fc, start, count in plan.reads:
        block = [0] * count
        for reg, value in ((0x0A, 0), (0x0B, 23333), (0x20, 0), (0x21, 1500), (0x8D, 1), (0x8E, 40)):
            if start <= reg < start + count:
                block[reg - start] = value
        blocks.append(block)
    reading, faults = plan.decode(blocks)
    assert faults == []
    assert reading["energy_wh"] == 23333 * 10 * 40  # 233.33 kWh secondary x CT 40, exact
    assert plan.energy_step_wh() == 400


def test_a_zero_ratio_is_a_fault():
    plan = planner.MeterPlan(ratio_meter())
    blocks = [[0] * r[2] for r in plan.reads]  # every register 0, the ratios too
    reading, faults = plan.decode(blocks)
    assert "energy_wh" not in reading
    assert ("energy_import", "transformer ratio pt unreadable or 0") in faults
