"""Bay devices: which Modbus devices the bays need, and their raw answers as bay inputs."""

from pilecore import baydevices


def cfg():
    return {
        "sensor_profiles": {
            "dist": {"measures": "distance", "function": 3, "register": 0x34, "type": "u16", "scale": 10},
            "pres": {"measures": "presence", "function": 4, "register": 0x10, "type": "u32", "present_values": [1]},
        },
        "bay": [
            {
                "id": "B1",
                "pile": "P1",
                "presence": [
                    {"type": "modbus", "bus": "b", "address": 31, "profile": "dist"},
                    {"type": "input", "input": "DI1", "active": "low"},
                ],
                "plug": {"source": "modbus", "bus": "b", "address": 50, "function": 3, "register": 16},
            },
            {
                "id": "B2",
                "pile": "P2",
                "presence": [{"type": "modbus", "bus": "b", "address": 32, "profile": "pres"}],
                "plug": {"source": "input", "input": "DI2"},
            },
            {"id": "B3", "pile": "P3"},
        ],
    }


def test_devices_are_listed_with_their_reads():
    devs = baydevices.devices(cfg(), 5000)
    assert [(d[0], d[2], d[3], d[4], d[5]) for d in devs] == [
        ("B1#0", 31, 3, 0x34, 1),
        ("B1#plug", 50, 3, 16, 1),
        ("B2#0", 32, 4, 0x10, 2),
    ]


def test_values_are_decoded_per_profile():
    c = cfg()
    assert baydevices.value(c, "B1#0", [123]) == 1230  # 123 cm -> mm
    assert baydevices.value(c, "B2#0", [0, 1]) == 1
    assert baydevices.value(c, "B1#plug", [2]) == 2
    assert baydevices.value(c, "B1#0", None) is None
    assert baydevices.value(c, "B9#0", [1]) is None


def test_gather_uses_fresh_values_and_inputs():
    c = cfg()
    latest = {"B1#0": (1000, 1230), "B1#plug": (1000, 1), "B2#0": (900, 1)}
    levels = {"DI1": 0, "DI2": 1}
    out = baydevices.gather(c, 1010, latest, lambda name: levels.get(name))
    assert out == [("B1", [1230, 0], 1), ("B2", [None], 1), ("B3", [], None)]  # B2#0 is stale
    assert baydevices.gather(c, 1010, latest, None)[0] == ("B1", [1230, None], 1)
