"""DL/T 645-2007 frames against public captures (both interpreters).

Test vectors (hex as published; checksums verified by the frames themselves):
- "DL645通信协议97/07规约(附上下行例子)", m.icode9.com/content-4-712469.html (also
  553668.com/manong/786292.html): the broadcast address read FE FE FE 68 AA.. 68 13 00 DF 16;
  a read of forward active energy from meter 000102030425 and its reply, 1206.42 kWh.
- 亿佰特 (Ebyte) IoT lab note on DL/T 645, mbb.eet-china.com/forum/topic/114707_1_1.html: a read
  of combined active energy from meter 652022122003 answered 0.00 kWh, and a read of the
  voltage block 0201FF00 from 652022122018 with a four-byte FE preamble on both frames.
"""

from mpytest import raises

from pilecore import dlt645, modbus


def h(text):
    return bytes([int(x, 16) for x in text.split()])


def test_broadcast_address_read_is_the_published_frame():
    assert dlt645.read_address_frame(preamble=False) == h("68 AA AA AA AA AA AA 68 13 00 DF 16")
    assert dlt645.read_address_frame() == h("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")


def test_read_forward_energy_request_matches_the_capture():
    frm = dlt645.read_request("000102030425", dlt645.DI_ENERGY_IMPORT, preamble=False)
    assert frm == h("68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16")


def test_read_forward_energy_reply_decodes_to_1206_42_kwh():
    reply = h("68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16")
    code, value = dlt645.parse_read_response(reply, "000102030425", dlt645.DI_ENERGY_IMPORT, 4)
    assert code == modbus.OK
    assert dlt645.decode_bcd(value) == 120642  # XXXXXX.XX kWh -> 1206.42


def test_combined_energy_capture_with_zero_reading():
    req = dlt645.read_request("652022122003", dlt645.DI_ENERGY_COMBINED, preamble=False)
    assert req == h("68 03 20 12 22 20 65 68 11 04 33 33 33 33 8D 16")
    reply = h("68 03 20 12 22 20 65 68 91 08 33 33 33 33 33 33 33 33 DD 16")
    code, value = dlt645.parse_read_response(reply, "652022122003", dlt645.DI_ENERGY_COMBINED)
    assert code == modbus.OK and dlt645.decode_bcd(value) == 0


def test_voltage_block_capture_with_preambles():
    req = dlt645.read_request("652022122018", 0x0201FF00)
    assert req == h("FE FE FE FE 68 18 20 12 22 20 65 68 11 04 33 32 34 35 A4 16")
    reply = h("FE FE FE FE 68 18 20 12 22 20 65 68 91 0A 33 32 34 35 33 33 33 33 C7 56 13 16")
    assert dlt645.frame_length(reply) == len(reply)
    code, value = dlt645.parse_read_response(reply, "652022122018", 0x0201FF00, 6)
    assert code == modbus.OK
    # three XXX.X V items, phase A first: 0.0, 0.0, 239.4 V
    assert [dlt645.decode_bcd(value[i : i + 2]) for i in (0, 2, 4)] == [0, 0, 2394]


def test_frame_length_needs_the_length_byte():
    reply = h("FE FE 68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16")
    for n in range(0, 12):
        assert dlt645.frame_length(reply, n) is None
    assert dlt645.frame_length(reply, 12) == len(reply)
    assert dlt645.frame_length(h("01 03 04")) == 0  # a Modbus reply is not a DL/T 645 frame


def test_damaged_and_mismatched_replies_are_refused():
    good = h("68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16")
    bad = bytearray(good)
    bad[14] ^= 0x01
    assert dlt645.parse_read_response(bad, "000102030425", dlt645.DI_ENERGY_IMPORT)[0] == modbus.E_CRC
    no_end = bytearray(good)
    no_end[-1] = 0x17
    assert dlt645.parse_read_response(no_end, "000102030425", dlt645.DI_ENERGY_IMPORT)[0] == modbus.E_CRC
    assert dlt645.parse_read_response(good, "000102030426", dlt645.DI_ENERGY_IMPORT)[0] == modbus.E_ADDRESS
    assert dlt645.parse_read_response(good, "000102030425", dlt645.DI_ENERGY_EXPORT)[0] == modbus.E_FUNCTION
    assert dlt645.parse_read_response(good, "000102030425", dlt645.DI_ENERGY_IMPORT, 3)[0] == modbus.E_LENGTH
    assert dlt645.parse_read_response(good[:15], "000102030425", dlt645.DI_ENERGY_IMPORT)[0] == modbus.E_SHORT


def test_abnormal_answer_carries_the_error_byte():
    # C = D1 (reply, abnormal, read), L = 1, error byte 02 "no such data" (+33 -> 35)
    frm = dlt645.build("000102030425", 0xD1, bytes((dlt645.ERR_NO_DATA,)))
    code, err = dlt645.parse_read_response(frm, "000102030425", dlt645.DI_FREQUENCY)
    assert (code, err) == (modbus.E_EXCEPTION, 2)
    assert dlt645.error_text(err) == "no such data item"
    assert dlt645.describe(code, err) == "abnormal answer 0x02: no such data item"


def test_address_reply_round_trip():
    frm = dlt645.build("000102030425", 0x93, dlt645.address_bytes("000102030425"))
    assert dlt645.parse_address_response(frm) == (modbus.OK, "000102030425")
    other = dlt645.build("000102030425", 0x93, dlt645.address_bytes("000102030426"))
    assert dlt645.parse_address_response(other)[0] == modbus.E_ADDRESS


def test_signed_bcd_values():
    # XX.XXXX kW, sign in the top bit: -1.2345 kW
    raw = dlt645.encode_bcd(-12345, 3, signed=True)
    assert raw == bytes((0x45, 0x23, 0x81))
    assert dlt645.decode_bcd(raw, signed=True) == -12345
    assert dlt645.decode_bcd(raw) == 812345  # read unsigned, the sign bit is a digit
    with raises(ValueError):
        dlt645.decode_bcd(bytes((0x1A,)))
    with raises(ValueError):
        dlt645.encode_bcd(-1, 2)
    with raises(ValueError):
        dlt645.encode_bcd(1000000, 3, signed=True)


def test_addresses_are_checked_and_normalised():
    assert dlt645.address_bytes("000102030425") == h("25 04 03 02 01 00")
    assert dlt645.address_text(h("25 04 03 02 01 00")) == "000102030425"
    with raises(ValueError, match="12 digits"):
        dlt645.address_bytes("12345")
    with raises(ValueError, match="decimal digits"):
        dlt645.address_bytes("00010203042X")
    assert dlt645.normalise_address(102030425) == "000102030425"
    assert dlt645.normalise_address("12") == "000000000012"
    assert dlt645.normalise_address("1234567890123") is None
    assert dlt645.normalise_address(True) is None


def test_line_defaults_are_2400_8e1():
    assert (dlt645.DEFAULT_BAUD, dlt645.DEFAULT_PARITY, dlt645.DEFAULT_STOPBITS) == (2400, "E", 1)
