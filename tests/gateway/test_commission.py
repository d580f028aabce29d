"""`pilegate commission` against the HIL simulator: a pty bus with meters whose loads run
through the (possibly miswired) meters, switched by a simulated pile controller's enable coils.

Each scenario of issue 12's acceptance gives its verdict and the electrician's words; the
correct site ends with bindings written into the site file (comments kept), a record that
`pilegate verify --record` accepts, and an HTML/SVG/PDF report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import commission_rig as cr
import pytest

from pilegate import cli
from piletools import commission, commission_report

# Short probes for the empty addresses; devices that answered get a long patience, which costs
# nothing when they answer and keeps a loaded test machine from looking like a faulty bus.
SCAN = ["--lines", "9600N1,2400N1", "--addresses", "1-5,50", "--timeout-ms", "400", "--answer-timeout-ms", "5000"]
SCAN += ["--settle", "5"]


def run(rig: cr.Rig, tmp_path: Path, *extra: str, more_site: str = "") -> tuple[int, Path, Path]:
    """Start the rig, write its site file, commission it unattended. Returns (exit, site, out)."""
    rig.site.start()
    site = tmp_path / "site.toml"
    site.write_text(cr.site_text(rig.port, tmp_path / "data") + more_site)
    out = tmp_path / "out"
    parser, _ = cli.build_parser()
    args = parser.parse_args(["commission", str(site), "--yes", "--by", "tester", "-o", str(out), *SCAN, *extra])
    code = commission.main(args, ask=None, wait=rig.clock.advance)
    return code, site, out


def faults(out: Path) -> list[dict]:
    return json.loads((out / "record.json").read_text())["faults"]


def texts(out: Path) -> str:
    return "\n".join(f["text"] for f in faults(out))


def codes(out: Path) -> list[str]:
    return sorted(f["code"] for f in faults(out))


def pile(out: Path, pid: str) -> dict:
    return next(p for p in json.loads((out / "record.json").read_text())["piles"] if p["pile"] == pid)


def test_correct_site_is_proven_written_signed_and_verified(tmp_path, capsys):
    rig = cr.build()
    with rig.site:
        code, site, out = run(rig, tmp_path)
        coils_after = dict(rig.controller.enable)
    assert code == 0, capsys.readouterr()
    assert faults(out) == []
    for pid, (addr, prof, _serial) in cr.PILES.items():
        p = pile(out, pid)
        assert p["verdict"] == "proven"
        assert p["meter"]["address"] == addr and p["meter"]["profile"] == prof
        assert p["evidence"]["method"] == "interlock"
        assert p["evidence"]["rise_a"] > 25  # 7 kW at 230 V
        assert p["evidence"]["others_max_rise_a"] < 1
        assert p["interlock"]["result"] == "pass"
        assert p["reading"]["power"] == pytest.approx(7000, abs=1)
    assert coils_after == {0: True, 1: True, 2: True, 3: True}  # every pile switched back on
    # the serials are written, the comments and layout kept
    text = site.read_text()
    assert 'serial = "20260003"' in text and 'serial = "20260004"' in text
    assert "# the RS-485 adapter" in text and 'id = "P02"   # bay 2' in text
    assert "# commissioning test site" in text
    # the record verifies with the gateway's registered key
    keys = tmp_path / "keys.toml"
    capsys.readouterr()
    assert cli.main(["keys", str(site), "--register"]) == 0
    keys.write_text(capsys.readouterr().out)
    assert cli.main(["verify", "--record", str(out / "record.jws"), "--keys", str(keys)]) == 0
    printed = capsys.readouterr().out
    assert "signature valid" in printed and "verdict PASS" in printed
    assert "P03: proven; meter bus1 address 3 eastron-sdm120 serial 20260003; interlock pass" in printed
    # the gateway keeps a copy for publishing
    assert (tmp_path / "data" / "commissioning.jws").read_text() == (out / "record.jws").read_text()
    # the report: a table, an SVG diagram, a PDF
    page = (out / "report.html").read_text()
    assert "<table>" in page and "<td>P04</td><td>proven</td>" in page and "<svg" in page
    svg = (out / "report.svg").read_text()
    assert "addr 3" in svg and ">P03<" in svg
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    startxref = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    assert pdf[startxref : startxref + 4] == b"xref"


def test_a_tampered_record_is_rejected(tmp_path, capsys):
    rig = cr.build()
    with rig.site:
        code, site, out = run(rig, tmp_path)
    assert code == 0
    capsys.readouterr()
    assert cli.main(["keys", str(site), "--register"]) == 0
    keys = tmp_path / "keys.toml"
    keys.write_text(capsys.readouterr().out)
    h, p, s = (out / "record.jws").read_text().strip().split(".")
    body = json.loads(commission.envelope.b64url_decode(p))
    body["data"]["piles"][0]["meter"]["serial"] = "99999999"
    forged = tmp_path / "forged.jws"
    forged.write_text(".".join([h, commission.envelope.b64url(json.dumps(body).encode()), s]))
    assert cli.main(["verify", "--record", str(forged), "--keys", str(keys)]) == 1
    assert "bad signature" in capsys.readouterr().err


def test_p03_load_on_p04_meter_is_a_crossed_wiring_fault(tmp_path):
    rig = cr.build(wiring={"P03": 4, "P04": 3})
    with rig.site:
        code, site, out = run(rig, tmp_path)
    assert code == 1
    assert codes(out) == ["wrong_meter", "wrong_meter"]
    words = texts(out)
    assert "P03: its load shows on the meter at bus1 address 4, which the site file gives to P04" in words
    assert "P03's supply runs through P04's meter" in words
    assert "P04: its load shows on the meter at bus1 address 3, which the site file gives to P03" in words
    assert pile(out, "P03")["verdict"] == "wrong meter"
    # the proven binding follows the wiring: P03 is measured by the meter at address 4
    text = site.read_text()
    assert re.search(
        r'id = "P03".*\nmeter = \{ bus = "bus1", address = 4, profile = "eastron-sdm120", serial = "20260004" \}', text
    )
    assert pile(out, "P03")["interlock"]["result"] == "pass"


def test_two_piles_through_one_meter(tmp_path):
    rig = cr.build(wiring={"P03": 4})
    with rig.site:
        code, _, out = run(rig, tmp_path)
    assert code == 1
    assert codes(out) == ["idle_meter", "shared_meter"]
    assert "The meter at bus1 address 4 measures P03 and P04" in texts(out)
    assert "one pile, one meter" in texts(out)
    assert pile(out, "P03")["verdict"] == pile(out, "P04")["verdict"] == "shared meter"


def test_missing_meter(tmp_path):
    rig = cr.build(missing=(2,))
    with rig.site:
        code, _, out = run(rig, tmp_path)
    assert code == 1
    assert codes(out) == ["missing", "unmetered"]
    assert "P02: no meter answers at bus1 address 2 at any line setting tried (9600 8N1, 2400 8N1)" in texts(out)
    assert "its display is on" in texts(out)
    assert pile(out, "P02")["verdict"] == "unmetered"
    assert pile(out, "P01")["verdict"] == "proven"


def test_meter_at_2400_baud_among_9600(tmp_path):
    rig = cr.build(baud={3: 2400})
    with rig.site:
        code, _, out = run(rig, tmp_path)
    assert code == 1
    assert codes(out) == ["wrong_line"]
    words = texts(out)
    assert "P03: the meter at bus1 address 3 talks at 2400 8N1, the bus runs at 9600 8N1" in words
    assert "set the communication to 9600 baud, parity none, 1 stop bit" in words
    assert "Eastron SDM120-Modbus meters leave the factory at 2400 8N1" in words
    assert pile(out, "P03")["meter"]["line"] == "2400 8N1"


def test_two_meters_on_one_address(tmp_path):
    rig = cr.build(twin=4)
    with rig.site:
        code, _, out = run(rig, tmp_path)
        collisions = rig.site.bus_stats("bus1").collisions
    assert code == 1
    assert codes(out) == ["collision"]
    assert "bus1 address 4: two devices answer at once (garbled replies" in texts(out)
    assert "Two meters are set to address 4" in texts(out)
    assert collisions > 0
    assert pile(out, "P04")["verdict"] == "not proven"
    bus = json.loads((out / "record.json").read_text())["buses"][0]
    assert bus["stats"]["crc_errors"] > 0
    assert any(d["address"] == 4 and d["collision"] for d in bus["devices"])


def test_a_model_no_profile_matches(tmp_path):
    rig = cr.build(foreign=4)
    with rig.site:
        code, _, out = run(rig, tmp_path)
    assert code == 1
    assert codes(out) == ["unknown_model"]
    assert "P04: the device at bus1 address 4 answers but matches no meter profile" in texts(out)
    assert pile(out, "P04")["verdict"] == "not proven"


def test_plan_file_answers_and_no_interlock_means_not_proven(tmp_path):
    rig = cr.build()
    plan = tmp_path / "plan.toml"
    plan.write_text('write = false\n[load]\nP01 = "skip"\n')
    with rig.site:
        code, site, out = run(rig, tmp_path, "--plan", str(plan))
    assert code == 1
    assert codes(out) == ["not_proven"]
    assert "P01: not load-tested" in texts(out)
    assert 'serial = ""' in site.read_text()  # the plan said: do not write


def test_a_dlt645_meter_is_read_at_its_address_and_proven(tmp_path):
    rig = cr.build(dlt=True)
    with rig.site:
        rig.site.start()
        site = tmp_path / "site.toml"
        site.write_text(cr.site_text(rig.port, tmp_path / "data", dlt=True))
        parser, _ = cli.build_parser()
        out = tmp_path / "out"
        argv = ["commission", str(site), "--yes", "--by", "tester", "-o", str(out), *SCAN]
        code = commission.main(parser.parse_args(argv), ask=None, wait=rig.clock.advance)
    assert code == 0, texts(out)
    p05 = pile(out, "P05")
    assert p05["verdict"] == "proven" and p05["interlock"]["result"] == "pass"
    assert p05["meter"]["address"] == "000000000005" and p05["meter"]["profile"] == "chint-ddsu666-dlt645"
    assert p05["meter"]["serial"] == "5"  # the meter number, leading zeros dropped as the core does
    assert p05["evidence"]["rise_a"] > 25
    assert p05["reading"]["power"] == pytest.approx(7000, abs=1)
    assert 'address = "000000000005", profile = "chint-ddsu666-dlt645", serial = "5"' in site.read_text()


def test_prompted_load_test_the_installer_plugs_a_load_into_each_pile(tmp_path):
    rig = cr.build()
    for load in rig.loads.values():
        load.set(False)  # no car anywhere: the installer carries the test load from pile to pile
    asked: list[str] = []

    def installer(prompt: str) -> str:
        asked.append(prompt)
        plug = re.search(r"into (P0\d)", prompt)
        unplug = re.search(r"from (P0\d)", prompt)
        if plug:
            rig.loads[plug.group(1)].set(True)
        if unplug:
            rig.loads[unplug.group(1)].set(False)
        return "y"

    with rig.site:
        rig.site.start()
        site = tmp_path / "site.toml"
        site.write_text(cr.site_text(rig.port, tmp_path / "data"))
        parser, _ = cli.build_parser()
        argv = ["commission", str(site), "--by", "tester", "-o", str(tmp_path / "out"), *SCAN]
        code = commission.main(parser.parse_args(argv), ask=installer, wait=rig.clock.advance)
    out = tmp_path / "out"
    assert code == 0, texts(out)
    assert asked[:2] == [
        "Plug the test load (or a car) into P01 and start charging.  [Enter when done] ",
        "Unplug the load from P01.  [Enter when done] ",
    ]
    assert asked[-1].startswith("Write these bindings into") and asked[-1].endswith("? [y/N] ")
    for pid in cr.PILES:
        p = pile(out, pid)
        assert p["verdict"] == "proven" and p["evidence"]["method"] == "installer"
        assert p["interlock"]["result"] == "not tested"  # no load plugged in any more: said so
    assert 'serial = "20260003"' in site.read_text()


def test_an_interlock_that_does_not_switch_its_pile(tmp_path):
    rig = cr.build(dead_coil="P02")
    with rig.site:
        code, _, out = run(rig, tmp_path)
    assert code == 1
    assert codes(out) == ["interlock_fail"]
    words = texts(out)
    assert (
        "P02: with its enable coil 1 of the pile controller at bus1 address 50 off, its meter (bus1 address 2)" in words
    )
    assert "the interlock does not switch this pile's supply" in words
    assert pile(out, "P02")["verdict"] == "not proven"
    assert pile(out, "P01")["verdict"] == "proven"


def test_bad_arguments_are_clear(tmp_path, capsys):
    rig = cr.build()
    with rig.site:
        code, _, _ = run(rig, tmp_path, "--addresses", "0-300")
    assert code == 2
    assert "address range '0-300' must lie within 1-247" in capsys.readouterr().err


def test_line_parsing_and_pdf_text_escape():
    assert str(commission.Line.parse("9600 8E1")) == "9600 8E1"
    assert str(commission.Line.parse("2400")) == "2400 8N1"
    with pytest.raises(ValueError, match="9600N1"):
        commission.Line.parse("fast")
    assert commission_report._pdf_text("a(b)\\c 桩") == "a\\(b\\)\\\\c ?"


def test_the_record_is_published_retained_on_its_topic_and_a_receiver_accepts_it(tmp_path, broker):
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from piletools.receiver import KeyRegister, Receiver

    rig = cr.build()
    with rig.site:
        rig.site.start()
        site = tmp_path / "site.toml"
        site.write_text(cr.site_text(rig.port, tmp_path / "data").replace("mqtt://127.0.0.1:1883", broker.url))
        parser, _ = cli.build_parser()
        argv = ["commission", str(site), "--yes", "--by", "tester", "-o", str(tmp_path / "out"), "--publish", *SCAN]
        assert commission.main(parser.parse_args(argv), ask=None, wait=rig.clock.advance) == 0
    topic = "pilegate/v1/commission-test/GW-C1/commissioning"
    got: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()

    def on_message(client, userdata, msg):
        got.append(msg)
        arrived.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    try:
        assert arrived.wait(10), "the retained record never arrived"
    finally:
        c.loop_stop()
        c.disconnect()
    msg = got[0]
    assert msg.retain and msg.payload.decode() == (tmp_path / "out" / "record.jws").read_text().strip()
    from pilegate import keys

    key, _ = keys.load_or_create(tmp_path / "data")
    register = KeyRegister()
    register.add("GW-C1", key.public_pem)
    verdict = Receiver(register, "pilegate/v1").accept(msg.topic, msg.payload)
    assert verdict.status == "accepted" and verdict.kind == "commissioning"


def _notes(out: Path) -> list[str]:
    return json.loads((out / "record.json").read_text())["notes"]


def test_the_scan_lists_a_dlt645_meter_found_by_the_broadcast_address_read(tmp_path):
    rig = cr.build(dlt=True)
    with rig.site:
        rig.site.start()
        site = tmp_path / "site.toml"
        site.write_text(cr.site_text(rig.port, tmp_path / "data", dlt=True))
        parser, _ = cli.build_parser()
        out = tmp_path / "out"
        argv = ["commission", str(site), "--yes", "--by", "tester", "-o", str(out), "--no-write", *SCAN]
        commission.main(parser.parse_args(argv), ask=None, wait=rig.clock.advance)
    found = [n for n in _notes(out) if "broadcast address read" in n]
    assert found == ["bus1 at 9600 8N1: a DL/T 645 meter answered the broadcast address read: address 000000000005"]


def test_two_dlt645_meters_answering_the_broadcast_read_are_reported_as_a_collision(tmp_path):
    rig = cr.build(dlt=True)
    rig.site.add_meter("bus1", "000000000006", cr.DLT[2], "000000000006", baud=9600)
    with rig.site:
        rig.site.start()
        site = tmp_path / "site.toml"
        second = '\n[[pile]]\nid = "P06"\nmeter = { bus = "bus1", address = "000000000006", profile = "%s" }\n'
        site.write_text(cr.site_text(rig.port, tmp_path / "data", dlt=True) + second % cr.DLT[2])
        parser, _ = cli.build_parser()
        out = tmp_path / "out"
        argv = ["commission", str(site), "--yes", "--by", "tester", "-o", str(out), "--no-write", *SCAN]
        commission.main(parser.parse_args(argv), ask=None, wait=rig.clock.advance)
    notes = [n for n in _notes(out) if "broadcast address read" in n]
    assert len(notes) == 1 and "more than one DL/T 645 meter answered" in notes[0], notes
    assert "connect that meter alone" in notes[0]


def test_no_broadcast_read_note_without_a_dlt645_line(tmp_path):
    rig = cr.build()
    with rig.site:
        code, _, out = run(rig, tmp_path, "--no-write")
    assert code == 0, texts(out)  # no DL/T 645 line scanned: no broadcast read, no note
    assert not [n for n in _notes(out) if "broadcast" in n]


def test_the_broadcast_address_read_on_the_link_alone_none_and_two():
    """RtuLink.dlt_read_address(): one DL/T 645 meter alone -> its address; Modbus meters only
    -> silent (no DL/T 645 meter answers); two DL/T 645 meters -> no clean answer."""
    from piletools.rtulink import Line, RtuLink

    rig = cr.build()  # Modbus meters only
    with rig.site:
        rig.site.start()
        with RtuLink(rig.port, timeout_s=0.3, patient_timeout_s=1.0) as link:
            link.set_line(Line(9600))
            assert link.dlt_read_address().kind == "silent"
    rig = cr.build(dlt=True)
    with rig.site:
        rig.site.start()
        with RtuLink(rig.port, timeout_s=0.3, patient_timeout_s=5.0) as link:
            link.set_line(Line(9600))
            res = link.dlt_read_address()
            assert (res.kind, res.data) == ("ok", b"000000000005")
    rig = cr.build(dlt=True)
    rig.site.add_meter("bus1", "000000000006", cr.DLT[2], "000000000006", baud=9600)
    with rig.site:
        rig.site.start()
        with RtuLink(rig.port, timeout_s=0.3, patient_timeout_s=1.0) as link:
            link.set_line(Line(9600))
            assert link.dlt_read_address().kind != "ok"
