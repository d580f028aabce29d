"""DL/T 645 in the planner, the scheduler and the site file (both interpreters, inline data)."""

from pilecore import config, dlt645, modbus, planner, profile
from pilecore.scheduler import BusScheduler

DTSU = {
    "id": "dtsu-dlt",
    "kind": "meter",
    "protocol": "dlt645",
    "maker": "Chint",
    "model": "DTSU666",
    "phases": 3,
    "source": "DL/T 645-2007 appendix A",
    "min_gap_ms": 30,
    "response_ms": 100,
    "timeout_ms": 700,
    "serial": {"baud": 2400, "parity": "E", "stopbits": 1},
    "values": {
        "energy_import": {
            "di": 0x00010000,
            "bytes": 4,
            "decimals": 2,
            "scale": 1.0,
            "unit": "kWh",
            "min": 0.0,
            "max": 999999.99,
        },
        "power": {
            "di": 0x02030000,
            "bytes": 3,
            "decimals": 4,
            "signed": True,
            "scale": 1000.0,
            "unit": "W",
            "min": -90000.0,
            "max": 90000.0,
        },
        "voltage": {
            "di": [0x02010100, 0x02010200, 0x02010300],
            "block": 0x0201FF00,
            "bytes": 2,
            "decimals": 1,
            "scale": 1.0,
            "unit": "V",
            "min": 0.0,
            "max": 300.0,
        },
    },
    "identity": {"kind": "serial", "di": 0x04000402, "bytes": 6, "note": "meter number, the nameplate's"},
}
MODBUS = {
    "id": "mb",
    "kind": "meter",
    "maker": "x",
    "model": "y",
    "phases": 1,
    "source": "manual",
    "function": 3,
    "byte_order": "big",
    "word_order": "big",
    "max_block": 40,
    "min_gap_ms": 0,
    "response_ms": 50,
    "timeout_ms": 500,
    "serial": {"baud": 9600, "parity": "N", "stopbits": 1},
    "values": {
        "energy_import": {"register": 0, "type": "u32", "scale": 0.01, "unit": "kWh", "min": 0.0, "max": 1e6},
        "power": {"register": 2, "type": "s32", "scale": 1.0, "unit": "W", "min": -20000.0, "max": 20000.0},
    },
    "identity": {"kind": "address", "note": "bus address only"},
}


def test_dlt645_profile_validates_and_names_items():
    assert profile.validate_profile(DTSU, "dtsu-dlt") == []
    assert profile.value_registers(DTSU, "power") == [(0x11, 0x02030000, 3)]
    bad = dict(DTSU)
    bad["function"] = 3
    bad["values"] = {"power": {"di": [1], "bytes": 9, "decimals": 7, "scale": 1.0, "unit": "W", "min": 0, "max": 1}}
    keys = [k for k, _ in profile.validate_profile(bad, "dtsu-dlt")]
    for key in ("function", "values.energy_import", "values.power.di", "values.power.bytes", "values.power.decimals"):
        assert key in keys, (key, keys)


def test_one_item_per_request_and_blocks_for_phases():
    plan = planner.plan_for(DTSU)
    assert plan.protocol == "dlt645"
    assert plan.reads == [[0x11, 0x00010000, 4], [0x11, 0x02030000, 3], [0x11, 0x0201FF00, 6]]
    # request 20 + reply 20 + value + 7 gap characters + latency per read
    latency = 100 * 1000 // planner.CHAR_US_9600
    assert plan.cost_chars() == sum(47 + latency + r[2] for r in plan.reads)


def test_decode_exact_energy_signed_power_and_phase_block():
    plan = planner.plan_for(DTSU)
    blocks = [
        dlt645.encode_bcd(120642, 4),  # 1206.42 kWh
        dlt645.encode_bcd(-12345, 3, True),  # -1.2345 kW
        dlt645.encode_bcd(2301, 2) + dlt645.encode_bcd(2290, 2) + dlt645.encode_bcd(2315, 2),
    ]
    reading, faults = plan.decode(blocks)
    assert faults == []
    assert reading["energy_wh"] == 1206420
    assert abs(reading["power_w"] - -1234.5) < 1e-6
    assert [round(v, 1) for v in reading["voltage_v"]] == [230.1, 229.0, 231.5]


def test_non_bcd_and_out_of_range_are_faults_not_readings():
    plan = planner.plan_for(DTSU)
    volts = dlt645.encode_bcd(3100, 2) + dlt645.encode_bcd(2300, 2) + dlt645.encode_bcd(2300, 2)
    reading, faults = plan.decode([bytes((0xFF, 0xFF, 0xFF, 0xFF)), None, volts])
    assert reading == {"voltage_v": [None, 230.0, 230.0]}
    assert [f[0] for f in faults] == ["energy_import", "voltage"]


def test_refused_block_falls_back_and_no_data_marks_unsupported():
    plan = planner.plan_for(DTSU)
    assert plan.shrink(2, dlt645.ERR_OTHER) is True
    assert plan.reads[2:] == [[0x11, 0x02010100, 2], [0x11, 0x02010200, 2], [0x11, 0x02010300, 2]]
    assert plan.shrink(3, dlt645.ERR_NO_DATA) is False
    assert plan.unsupported == [("voltage", 1)]
    assert [0x11, 0x02010200, 2] not in plan.reads


def test_site_ranges_override_the_profiles():
    plan = planner.plan_for(MODBUS, ranges={"power": [-500000.0, 500000.0]})
    regs = [0, 100, 0x0001, 0x86A0]  # 1.00 kWh, 100000 W (a CT main meter)
    reading, faults = plan.decode([regs])
    assert faults == [] and reading["power_w"] == 100000.0
    reading, faults = planner.plan_for(MODBUS).decode([regs])
    assert "power_w" not in reading and faults[0][0] == "power"


def test_scheduler_mixes_protocols_on_one_bus():
    sched = BusScheduler("bus1", 2400, "E", 1)
    sched.add_device("P1", "000012345678", planner.plan_for(DTSU), 1000)
    sched.add_device("P2", 2, planner.plan_for(MODBUS), 1000)
    seen = []
    now = 0
    while len(seen) < 4:
        txn = sched.next_txn(now)
        if txn is None:
            now += 10
            continue
        seen.append((txn.protocol, txn.request()[:5]))
        if txn.protocol == "dlt645":
            di = dlt645.di_bytes(txn.register)
            reply = dlt645.build(txn.address, 0x91, di + bytes(txn.count))
            assert txn.reply_needed(reply, 13) == 0 and txn.reply_needed(reply, 14) == len(reply)
        else:
            body = bytes((2, 3, 2 * txn.count)) + bytes(2 * txn.count)
            reply = modbus.frame(body)
        code, payload = txn.parse(reply)
        assert code == modbus.OK
        sched.complete(txn, now, code, payload, 50)
        now += 100
    protocols = set([p for p, _ in seen])
    assert protocols == set(["dlt645", "modbus"])
    assert bytes(seen[0][1][:4]) == dlt645.PREAMBLE or bytes(seen[1][1][:4]) == dlt645.PREAMBLE


def test_job_protocol_follows_the_address():
    sched = BusScheduler("bus1")
    sched.submit(dlt645.WILDCARD, dlt645.C_READ_ADDRESS, 0, 0)
    txn = sched.next_txn(0)
    assert txn.protocol == "dlt645" and txn.request() == dlt645.read_address_frame()
    reply = dlt645.build("000012345678", 0x93, dlt645.address_bytes("000012345678"))
    assert txn.parse(reply) == (modbus.OK, "000012345678")


def _site(meter):
    return {
        "gateway": {"id": "GW-1", "site": "s1", "board": "b1"},
        "mqtt": {"url": "mqtts://broker.example:8883"},
        "bus": [{"name": "bus1", "port": "/dev/ttyUSB0", "baud": 2400, "parity": "E"}],
        "pile": [{"id": "P01", "meter": meter}],
    }


BOARD = {
    "id": "b1",
    "name": "test board",
    "platform": "rpi",
    "flash_mb": 16384,
    "uart": [{"name": "usb0", "role": "rs485", "device": "/dev/ttyUSB0", "de_mode": "auto"}],
}


def _check(meter):
    board, _ = config.validate_board(BOARD, "b1")
    compiled, problems = config.validate_site(_site(meter), {"b1": board}, {"dtsu-dlt": DTSU, "mb": MODBUS})
    return compiled, dict(problems)


def test_site_file_takes_a_12_digit_dlt645_address():
    compiled, problems = _check({"bus": "bus1", "address": 12345678, "profile": "dtsu-dlt"})
    assert problems == {}
    assert compiled["pile"][0]["meter"]["address"] == "000012345678"
    _, problems = _check({"bus": "bus1", "address": "12-345", "profile": "dtsu-dlt"})
    assert "12-digit address" in problems["pile[P01].meter.address"]
    _, problems = _check({"bus": "bus1", "address": "000012345678", "profile": "mb"})
    assert "Modbus address" in problems["pile[P01].meter.address"]


def test_site_file_ranges_are_checked():
    meter = {"bus": "bus1", "address": 3, "profile": "mb", "ranges": {"power": [5, 1], "voltage": [0, 300]}}
    _, problems = _check(meter)
    assert "min < max" in problems["pile[P01].meter.ranges.power"]
    assert "does not read voltage" in problems["pile[P01].meter.ranges.voltage"]


def test_a_dlt645_meter_on_a_modbus_tcp_bus_is_refused():
    board, _ = config.validate_board(BOARD, "b1")
    cfg = _site({"bus": "bus1", "address": "000012345678", "profile": "dtsu-dlt"})
    cfg["bus"][0]["port"] = "tcp://10.0.0.5:502"
    _, problems = config.validate_site(cfg, {"b1": board}, {"dtsu-dlt": DTSU, "mb": MODBUS})
    why = dict(problems)["pile[P01].meter.bus"]
    assert "cannot carry DL/T 645" in why and "rtu+tcp" in why
