"""RTU framing, CRC-16 and typed decoding (both interpreters)."""

from mpytest import raises

from pilecore import modbus


def test_crc_of_the_classic_read_request():
    # "read 10 holding registers from device 1 at 0": 01 03 00 00 00 0A C5 CD
    req = modbus.read_request(1, 3, 0, 10)
    assert req == bytes((0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD))
    assert modbus.crc_ok(req)
    assert modbus.crc16(b"") == 0xFFFF


def test_crc_detects_a_flipped_bit():
    req = bytearray(modbus.read_request(7, 4, 0x48, 2))
    req[3] ^= 0x01
    assert not modbus.crc_ok(req)


def _reply(addr, fc, regs):
    body = bytearray((addr, fc, 2 * len(regs)))
    for r in regs:
        body.append(r >> 8)
        body.append(r & 0xFF)
    return modbus.frame(bytes(body))


def test_parse_good_response_and_trailing_bytes_ignored():
    frm = _reply(5, 4, [0x1234, 0xABCD])
    assert modbus.parse_read_response(frm, 5, 4, 2) == (modbus.OK, [0x1234, 0xABCD])
    assert modbus.parse_read_response(frm + b"\x00", 5, 4, 2)[0] == modbus.OK


def test_parse_rejects_damage_and_mismatches():
    frm = bytearray(_reply(5, 3, [1, 2, 3]))
    assert modbus.parse_read_response(frm, 6, 3, 3)[0] == modbus.E_ADDRESS
    assert modbus.parse_read_response(frm, 5, 4, 3)[0] == modbus.E_FUNCTION
    assert modbus.parse_read_response(frm, 5, 3, 4)[0] == modbus.E_LENGTH
    assert modbus.parse_read_response(frm[:6], 5, 3, 3)[0] == modbus.E_SHORT
    frm[4] ^= 0xFF
    assert modbus.parse_read_response(frm, 5, 3, 3)[0] == modbus.E_CRC


def test_exception_response_is_decoded():
    frm = modbus.frame(bytes((9, 0x83, 0x02)))
    assert modbus.parse_read_response(frm, 9, 3, 10) == (modbus.E_EXCEPTION, 2)
    assert modbus.exception_name(2) == "illegal data address"
    assert modbus.exception_name(99) == "exception 99"
    bad = bytearray(frm)
    bad[2] = 3
    assert modbus.parse_read_response(bad, 9, 3, 10)[0] == modbus.E_CRC


def _frame(*octets):
    return modbus.frame(bytes(octets))


def test_every_reply_is_checked_against_its_request():
    # defect #3 of issue 9: a CRC-valid answer that is not the answer to the request is never data
    asked = (5, 3, 0x2000, 2)  # device 5, function 3, two registers
    good = _frame(5, 3, 4, 0x43, 0x66, 0x33, 0x34)
    assert modbus.parse_rtu_reply(good, *asked) == (modbus.OK, [0x4366, 0x3334])
    cases = (
        (_frame(5, 4, 4, 0x43, 0x66, 0x33, 0x34), modbus.E_FUNCTION),  # FC 04 answers FC 03
        (_frame(6, 3, 4, 0x43, 0x66, 0x33, 0x34), modbus.E_ADDRESS),  # another device
        (_frame(5, 3, 2, 0x43, 0x66), modbus.E_LENGTH),  # one register short
        (_frame(5, 3, 6, 0, 1, 0, 2, 0, 3), modbus.E_LENGTH),  # one register too many
        (_frame(5, 3, 4, 0x43, 0x66, 0x33), modbus.E_SHORT),  # byte count promises more than came
        (_frame(5, 0x84, 2), modbus.E_FUNCTION),  # an exception to another function
        (_frame(5, 0x11, 4, 1, 2, 3, 4), modbus.E_FUNCTION),  # some other function entirely
    )
    for frm, code in cases:
        got = modbus.parse_rtu_reply(frm, *asked)
        assert got[0] == code, (frm, got)
    assert modbus.parse_rtu_reply(_frame(5, 0x83, 4), *asked) == (modbus.E_EXCEPTION, 4)
    # the reverse mismatch: FC 03 answering FC 04
    assert modbus.parse_read_response(good, 5, 4, 2)[0] == modbus.E_FUNCTION


def test_byte_count_must_match_the_frame_in_a_tcp_reply():
    mbap = bytes((0, 1, 0, 0, 0, 7, 5))
    assert modbus.parse_tcp_reply(mbap + bytes((3, 4, 0, 1, 0, 2)), 5, 3, 0, 2) == (modbus.OK, [1, 2])
    assert modbus.parse_tcp_reply(mbap + bytes((4, 4, 0, 1, 0, 2)), 5, 3, 0, 2)[0] == modbus.E_FUNCTION
    assert modbus.parse_tcp_reply(mbap + bytes((3, 5, 0, 1, 0, 2)), 5, 3, 0, 2)[0] == modbus.E_LENGTH
    short = bytes((0, 1, 0, 0, 0, 9, 5, 3, 4, 0, 1, 0, 2))
    assert modbus.parse_tcp_reply(short, 5, 3, 0, 2)[0] == modbus.E_LENGTH
    assert modbus.parse_tcp_reply(bytes((0, 1, 0, 0, 0, 3, 5, 0x83, 2)), 5, 3, 0, 2) == (modbus.E_EXCEPTION, 2)


def test_discrete_reads_give_bits():
    frm = _frame(7, 2, 2, 0b00000101, 0b1)
    assert modbus.parse_read_response(frm, 7, 2, 9) == (modbus.OK, [1, 0, 1, 0, 0, 0, 0, 0, 1])


def test_find_rtu_frame_skips_noise_before_the_reply():
    good = _frame(5, 3, 2, 0, 7)
    assert modbus.find_rtu_frame(b"\x00\xff" + good + b"\x01") == good
    assert modbus.find_rtu_frame(b"\x00\xff\x05\x03") is None


def test_late_replies_in_counts_the_frames_a_port_drained():
    one = modbus.frame(b"\x05\x03\x02\x00\x07")
    two = modbus.frame(b"\x05\x03\x02\x00\x08")
    assert modbus.late_replies_in(b"") == 0
    assert modbus.late_replies_in(one) == 1
    assert modbus.late_replies_in(b"\x00" + one + b"\xff" + two) == 2
    assert modbus.late_replies_in(one + one) == 2  # the same bytes twice are two replies
    assert modbus.late_replies_in(b"\x68\x11\x22") == 1  # not a Modbus frame, still a reply


def test_write_coil_round_trip():
    req = modbus.write_coil_request(50, 0, False)
    assert req[:6] == bytes((50, 5, 0, 0, 0, 0))
    assert modbus.parse_write_coil_response(req, 50, 0, False) == (modbus.OK, None)
    assert modbus.parse_write_coil_response(req, 50, 0, True)[0] != modbus.OK
    exc = modbus.frame(bytes((50, 0x85, 4)))
    assert modbus.parse_write_coil_response(exc, 50, 0, True) == (modbus.E_EXCEPTION, 4)


def test_response_length():
    assert modbus.response_length(3, 10) == 25
    assert modbus.response_length(1, 9) == 7
    assert modbus.response_length(5, 1) == 8


def test_decode_integer_types_and_orders():
    regs = [0x0001, 0x0002, 0xFFFF, 0xFFFE]
    assert modbus.decode_raw(regs, 0, "u32") == 0x00010002
    assert modbus.decode_raw(regs, 0, "u32", word_order="little") == 0x00020001
    assert modbus.decode_raw(regs, 2, "s32") == -2
    assert modbus.decode_raw(regs, 2, "s16") == -1
    assert modbus.decode_raw(regs, 0, "u16", byte_order="little") == 0x0100
    assert modbus.decode_raw(regs, 0, "u64") == 0x00010002FFFFFFFE
    assert modbus.decode_raw([0x8000, 0, 0, 0], 0, "s64") == -(1 << 63)


def test_decode_float_and_nan():
    # 230.5 = 0x43668000
    assert modbus.decode_raw([0x4366, 0x8000], 0, "f32") == 230.5
    assert modbus.decode_raw([0x8000, 0x4366], 0, "f32", word_order="little") == 230.5
    with raises(ValueError, match="NaN"):
        modbus.decode_raw([0x7FC0, 0x0000], 0, "f32")
    with raises(ValueError, match="denormal"):  # 0x00001234: what an integer register looks like as f32
        modbus.decode_raw([0x0000, 0x1234], 0, "f32")
    with raises(ValueError, match="denormal"):
        modbus.decode_milli([0x8000, 0x0001], 0, "f32", 1.0)
    assert modbus.decode_raw([0x0000, 0x0000], 0, "f32") == 0.0  # a true zero is a value
    assert modbus.decode_raw([0x8000, 0x0000], 0, "f32") == 0.0
    with raises(ValueError, match="needs 2 registers"):
        modbus.decode_raw([0x4366], 0, "f32")
    with raises(ValueError, match="unknown register type"):
        modbus.decode_raw([1], 0, "u8")


def test_energy_decodes_to_exact_watt_hours():
    # 12345.67 kWh as f32 is 0x4640E6AE = 12345.669921875 kWh -> 12345670 Wh (rounded)
    assert modbus.decode_milli([0x4640, 0xE6AE], 0, "f32", 1.0) == 12345670
    # u64 in 0.01 kWh (ABB style): 123456789 -> 1234567.89 kWh -> 1234567890 Wh
    regs = [0, 0, 123456789 >> 16, 123456789 & 0xFFFF]
    assert modbus.decode_milli(regs, 0, "u64", 0.01) == 1234567890
    # u32 in Wh with scale 0.001 kWh
    assert modbus.decode_milli([0, 1500], 0, "u32", 0.001) == 1500
    # negative, non-power-of-ten scale falls back to float arithmetic
    assert modbus.decode_milli([0xFFFF], 0, "s16", 1.0) == -1000
    assert modbus.decode_milli([4], 0, "u16", 0.25) == 1000


def test_pow10_exponent():
    assert modbus.pow10_exponent(1) == 0
    assert modbus.pow10_exponent(0.01) == -2
    assert modbus.pow10_exponent(1000.0) == 3
    assert modbus.pow10_exponent(0.25) is None
