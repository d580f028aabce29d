"""Modbus RTU framing, CRC-16, exception decoding and typed register decoding.

Pure functions over bytes and lists of 16-bit register values; no I/O.  Used by the ESP32's own
RTU master, by the Pi port (which reads through pymodbus but checks raw frames and decodes
registers here) and by the tools.

Frames are bytes: address, function, data, CRC (low byte first).  Register values are ints
0..65535 as they arrive on the wire (big-endian bytes within a register, per the Modbus spec);
a profile's `byte_order = "little"` swaps the bytes of each register before decoding.
"""

import struct

from pilecore import crc

# Result codes of parse_read_response(): 0 is success.
OK = 0
E_SHORT = 1  # fewer bytes than a valid frame needs
E_CRC = 2  # CRC mismatch: the frame is damaged, nothing in it can be trusted
E_ADDRESS = 3  # answer from another device than the one asked
E_FUNCTION = 4  # answer to another function than the one asked
E_LENGTH = 5  # byte count does not match the registers asked for
E_EXCEPTION = 6  # a Modbus exception response (to the function asked); its code is returned with it
E_TIMEOUT = 7  # no (complete) answer in time; set by the ports, never by the parser
E_LATE = 8  # only a late reply to an earlier request came in time (scheduler.LateReplies); by the ports

RESULT_NAMES = (
    "ok",
    "short frame",
    "CRC error",
    "wrong device address",
    "wrong function",
    "wrong byte count",
    "Modbus exception",
    "timeout",
    "late reply",
)

_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (busy with a long command)",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

TYPE_WIDTH = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4, "s64": 4}

crc16 = crc.crc16_modbus  # CRC-16/MODBUS of data[:end]; see pilecore.crc


def frame(pdu_with_address):
    """Append the CRC (low byte first) to an address+PDU byte string."""
    c = crc16(pdu_with_address)
    return bytes(pdu_with_address) + bytes((c & 0xFF, c >> 8))


def crc_ok(frm):
    """True when the last two bytes of `frm` are the CRC of the rest."""
    n = len(frm)
    if n < 4:
        return False
    c = crc16(frm, n - 2)
    return frm[n - 2] == (c & 0xFF) and frm[n - 1] == (c >> 8)


def read_request(address, function, register, count):
    """RTU request to read `count` registers (function 3 or 4) or coils/inputs (1, 2)."""
    return frame(bytes((address, function, register >> 8, register & 0xFF, count >> 8, count & 0xFF)))


def write_coil_request(address, coil, on):
    """RTU request (function 5) to switch one coil on or off."""
    return frame(bytes((address, 5, coil >> 8, coil & 0xFF, 0xFF if on else 0, 0)))


def response_length(function, count):
    """Length in bytes of a normal RTU response to a read of `count` items."""
    if function in (3, 4):
        return 5 + 2 * count
    if function in (1, 2):
        return 5 + (count + 7) // 8
    if function in (5, 6, 15, 16):
        return 8
    raise ValueError("unsupported function %d" % function)


def exception_name(code):
    return _EXCEPTIONS.get(code, "exception %d" % code)


def describe(code, payload=None):
    """A transaction's outcome in words, e.g. "exception 2: illegal data address" or "timeout"."""
    if code == E_EXCEPTION:
        return "exception %s: %s" % (payload, exception_name(payload))
    return RESULT_NAMES[code]


def check_reply(unit, pdu, address, function, register, count, value=None):
    """Check a reply against the request it answers; the one check both ports use.

    `unit` is the device address the reply came from; `pdu` its function code and data, without
    address or CRC (an RTU frame's bytes 1..n-3, a Modbus TCP frame's bytes after the MBAP
    header).  The request was `function` (1-5) at `address` for `count` items at `register`
    (function 5: coil `register` set to `value`).  Checks, in order: device address, function
    code (an exception reply must carry the request's function), byte count against the items
    asked, the frame's length against its byte count, and for function 5 the echo.

    Returns (OK, payload) -- registers (3, 4), bits as 0/1 (1, 2), None (5) -- or (error code,
    detail): detail is the exception code for E_EXCEPTION, and for the mismatches a text saying
    what was expected and what came, for the event that reports it.  Nothing in a reply that
    fails here is a value (DESIGN.md rule 5).
    """
    n = len(pdu)
    if n < 2:
        return E_SHORT, None
    if unit != address:
        return E_ADDRESS, "asked device %d, device %d answered" % (address, unit)
    fc = pdu[0]
    if fc & 0x80:
        if fc != (function | 0x80):
            return E_FUNCTION, "asked function %d, got an exception to function %d" % (function, fc & 0x7F)
        if n != 2:
            return E_LENGTH, "exception reply of %d bytes, expected 2" % n
        return E_EXCEPTION, pdu[1]
    if fc != function:
        return E_FUNCTION, "asked function %d, function %d answered" % (function, fc)
    if function == 5:
        want = bytes((5, register >> 8, register & 0xFF, 0xFF if value else 0, 0))
        if bytes(pdu) != want:
            return E_FUNCTION, "write-coil echo differs from the request"
        return OK, None
    expected = response_length(function, count) - 5
    if pdu[1] != expected:
        return E_LENGTH, "asked %d items (%d bytes), reply says %d bytes" % (count, expected, pdu[1])
    if n != 2 + expected:
        return E_LENGTH, "reply says %d bytes but carries %d" % (expected, n - 2)
    if function in (1, 2):
        bits = [0] * count
        for i in range(count):
            bits[i] = (pdu[2 + i // 8] >> (i % 8)) & 1
        return OK, bits
    regs = [0] * count
    for i in range(count):
        regs[i] = (pdu[2 + 2 * i] << 8) | pdu[3 + 2 * i]
    return OK, regs


def rtu_frame_length(frm):
    """Length of the RTU reply frame at the start of `frm`, from its own header: 5 for an
    exception reply, 5 plus the byte count for a read (functions 1-4), 8 for functions 5, 6,
    15, 16.  0 when the header is not complete yet; for any other function, whose length the
    header does not give, all of `frm` (so that its CRC decides)."""
    if len(frm) < 3:
        return 0
    fc = frm[1]
    if fc & 0x80:
        return 5
    if 1 <= fc <= 4:
        return 5 + frm[2]
    if fc in (5, 6, 15, 16):
        return 8
    return len(frm)


def find_rtu_frame(buf):
    """The first CRC-valid reply frame in `buf` (bytes a port received, perhaps after noise), or
    None.  For ports whose library framed the reply itself: the core's check then runs on the
    very bytes the library decoded."""
    n = len(buf)
    for start in range(n - 3):
        length = rtu_frame_length(buf[start:])
        if 4 <= length <= n - start and crc_ok(buf[start : start + length]):
            return bytes(buf[start : start + length])
    return None


def late_replies_in(data):
    """How many late replies `data` (input a port drained before a request) holds: its
    CRC-valid RTU frames, and at least one if it holds anything (a DL/T 645 reply, or a
    damaged one).  Both ports tell `scheduler.LateReplies.before_send` this count."""
    n, i = 0, 0
    while i < len(data):
        frm = find_rtu_frame(data[i:])
        if frm is None:
            break
        n += 1
        i = data.find(frm, i) + len(frm)
    return n if n or not data else 1


def parse_rtu_reply(frm, address, function, register, count, value=None):
    """Check and unpack an RTU reply frame (address, PDU, CRC; trailing bytes ignored).

    The CRC is checked before anything else in the frame is believed, over the length the
    frame's own header gives; then `check_reply`.  Returns as `check_reply` does; E_SHORT when
    the frame is not complete, E_CRC when it is damaged.
    """
    length = rtu_frame_length(frm)
    if length < 4 or len(frm) < length:
        return E_SHORT, None
    if not crc_ok(frm[:length]):
        return E_CRC, None
    return check_reply(frm[0], frm[1 : length - 2], address, function, register, count, value)


def parse_read_response(frm, address, function, count):
    """`parse_rtu_reply` for a read (function 1-4) of `count` items."""
    return parse_rtu_reply(frm, address, function, 0, count)


def parse_write_coil_response(frm, address, coil, on):
    """`parse_rtu_reply` for a function-5 write: the reply must echo the request."""
    return parse_rtu_reply(frm, address, 5, coil, 1, on)


def parse_tcp_reply(adu, address, function, register, count, value=None):
    """Check and unpack a Modbus TCP reply (MBAP header, then the PDU) as `check_reply` does.

    The MBAP length field must match the bytes that follow it and the protocol id must be 0;
    the transaction id is the transport's business (pymodbus matches it)."""
    if len(adu) < 9:
        return E_SHORT, None
    if adu[2] != 0 or adu[3] != 0:
        return E_FUNCTION, "protocol id %d is not Modbus" % ((adu[2] << 8) | adu[3])
    length = (adu[4] << 8) | adu[5]
    if length < 2 or len(adu) < 6 + length:
        return E_LENGTH, "MBAP length %d, %d bytes follow" % (length, len(adu) - 6)
    return check_reply(adu[6], adu[7 : 6 + length], address, function, register, count, value)


# ---------------------------------------------------------------- typed decoding


def _words(regs, offset, width, byte_order, word_order):
    """The value's registers in most-significant-first order, bytes swapped if needed."""
    w = regs[offset : offset + width]
    if len(w) != width:
        raise ValueError("value needs %d registers at offset %d, block has %d" % (width, offset, len(regs)))
    if word_order == "little":
        w = w[::-1]
    if byte_order == "little":
        w = [((r & 0xFF) << 8) | (r >> 8) for r in w]
    return w


def _f32_check(bits):
    """Refuse the f32 bit patterns no meter measures: NaN, infinity, and denormals (magnitudes
    below 1.2e-38, which no meter's arithmetic produces; they are what a register of another
    kind, or random bytes, look like when read as a float)."""
    exp = (bits >> 23) & 0xFF
    if exp == 0xFF:
        raise ValueError("f32 register holds NaN or infinity")
    if exp == 0 and bits & 0x7FFFFF:
        raise ValueError("f32 register holds a denormal number, never a measurement")


def decode_raw(regs, offset, typ, byte_order="big", word_order="big"):
    """The raw value of `typ` at regs[offset]: an int, or a float for f32.

    Raises ValueError for an unknown type, a short block, or an f32 that is NaN, infinite or
    denormal (a meter that reports NaN has no reading: never turn it into a number).
    """
    width = TYPE_WIDTH.get(typ)
    if width is None:
        raise ValueError("unknown register type %r" % typ)
    w = _words(regs, offset, width, byte_order, word_order)
    v = 0
    for r in w:
        v = (v << 16) | r
    if typ[0] == "s":
        bits = 16 * width
        if v >= 1 << (bits - 1):
            v -= 1 << bits
    elif typ == "f32":
        _f32_check(v)
        return struct.unpack(">f", struct.pack(">I", v))[0]
    return v


def f32_parts(regs, offset, byte_order="big", word_order="big"):
    """(mantissa, exponent) with value == mantissa * 2**exponent, exactly (ints)."""
    w = _words(regs, offset, 2, byte_order, word_order)
    bits = (w[0] << 16) | w[1]
    _f32_check(bits)
    exp = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    if exp == 0:
        m, e = frac, -149
    else:
        m, e = frac | 0x800000, exp - 150
    if bits >> 31:
        m = -m
    return m, e


def pow10_exponent(scale):
    """k when scale == 10**k (k in -9..9), else None."""
    for k in range(-9, 10):
        ref = 10.0**k
        if abs(scale - ref) <= ref * 1e-6:
            return k
    return None


def decode_milli(regs, offset, typ, scale, byte_order="big", word_order="big"):
    """The value times 1000, rounded half away from zero, as an exact int.

    For energy: kWh registers give Wh without any float arithmetic when `scale` is a power of
    ten, so a reading decodes to the same integer on a 32-bit-float ESP32 and on a Pi.
    """
    k = pow10_exponent(scale)
    if k is None:
        v = decode_raw(regs, offset, typ, byte_order, word_order) * scale * 1000
        return int(v + 0.5) if v >= 0 else -int(-v + 0.5)
    k += 3
    if typ == "f32":
        num, e = f32_parts(regs, offset, byte_order, word_order)
        den = 1
        if e >= 0:
            num <<= e
        else:
            den <<= -e
    else:
        num, den = decode_raw(regs, offset, typ, byte_order, word_order), 1
    if k >= 0:
        num *= 10**k
    else:
        den *= 10 ** (-k)
    return _div_round(num, den)


def _div_round(num, den):
    if num >= 0:
        return (2 * num + den) // (2 * den)
    return -((-2 * num + den) // (2 * den))


def decode_scaled(regs, offset, typ, scale, byte_order="big", word_order="big"):
    """The value in its unit (raw * scale) as a float."""
    return decode_raw(regs, offset, typ, byte_order, word_order) * scale
