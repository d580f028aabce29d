"""DL/T 645-2007 framing, data items and value decoding: pure functions over bytes, no I/O.

DL/T 645-2007 ("multi-function watt-hour meter communication protocol") is the Chinese
national meter protocol.  A frame is::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes)  CS  16

* the optional FE bytes are a wake-up preamble; a master sends four, a meter may answer with
  zero to four of them;
* A0..A5 is the meter's 12-digit address in packed BCD, lowest byte (last two digits) first;
  AA AA AA AA AA AA is the wildcard used to ask the only meter on a line for its address;
* C is the control code: bit 7 set in a reply, bit 6 set in an abnormal (error) reply, bit 5
  set when more frames follow, bits 4..0 the function (0x11 read data, 0x13 read address);
* every DATA byte is sent plus 0x33 (modulo 256) and taken minus 0x33 on receipt;
* CS is the sum modulo 256 of every byte from the first 68 to the last data byte.

Reading a data item: request C = 0x11 with the 4-byte data identifier DI (DI0 first); the
normal reply C = 0x91 echoes DI and appends the value, least significant byte first, in packed
BCD with the item's fixed decimals; the highest bit of a signed item is its sign.  An abnormal
reply C = 0xD1 carries one error byte (bit 1: no such data item).

Results use the codes of `pilecore.modbus` (OK, E_CRC for a checksum error, E_ADDRESS,
E_FUNCTION for another control code or data item, E_LENGTH, E_EXCEPTION with the error byte),
so the bus scheduler treats both protocols alike.

Sources: the standard DL/T 645-2007 sections 4-7 (frame, control code, data identifiers of
appendix A) as summarised in public notes with captured frames, e.g. "DL645通信协议97/07规约
(附上下行例子)" (m.icode9.com/content-4-712469.html): the broadcast address read
``FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16`` and the read of forward active energy
``68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16`` answered by
``68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16`` (1206.42 kWh).  These frames
are the test vectors in tests/core/test_dlt645.py.
"""

from pilecore import modbus

# Line defaults of the standard: 2400 baud, 8 data bits, even parity, 1 stop bit.
DEFAULT_BAUD = 2400
DEFAULT_PARITY = "E"
DEFAULT_STOPBITS = 1

PREAMBLE = b"\xfe\xfe\xfe\xfe"
WILDCARD = "AAAAAAAAAAAA"  # the address that every meter answers to (read address only)

C_READ = 0x11  # read data
C_READ_ADDRESS = 0x13  # read communication address (wildcard address, no data)
REPLY = 0x80  # bit 7: frame from the meter
ABNORMAL = 0x40  # bit 6: abnormal answer, one error byte follows
MORE = 0x20  # bit 5: subsequent frames follow

# Bits of the error byte of an abnormal answer (DL/T 645-2007 §7.1.1, "错误信息字").
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_PASSWORD = 0x04

# Data identifiers (DI3 DI2 DI1 DI0 as written in the standard's appendix A).
DI_ENERGY_COMBINED = 0x00000000  # combined active energy total, XXXXXX.XX kWh
DI_ENERGY_IMPORT = 0x00010000  # forward (import) active energy total, XXXXXX.XX kWh
DI_ENERGY_EXPORT = 0x00020000  # reverse active energy total, XXXXXX.XX kWh
DI_VOLTAGE_A = 0x02010100  # phase A voltage XXX.X V (B: 0x02010200, C: 0x02010300)
DI_CURRENT_A = 0x02020100  # phase A current XXX.XXX A, signed (B/C: ..0200, ..0300)
DI_POWER = 0x02030000  # total active power XX.XXXX kW, signed
DI_POWER_FACTOR = 0x02060000  # total power factor X.XXX, signed
DI_FREQUENCY = 0x02800002  # line frequency XX.XX Hz
DI_ADDRESS = 0x04000401  # communication address, 12 BCD digits
DI_METER_NUMBER = 0x04000402  # meter number (表号), 12 BCD digits
DI_CT_RATIO = 0x04000306  # current transformer ratio NNNNNN
DI_PT_RATIO = 0x04000307  # voltage transformer ratio NNNNNN

MAX_DATA = 200  # the longest data field a read reply may carry (L <= 200)


def address_bytes(address):
    """A0..A5 of a 12-digit address (str of decimal digits, or the wildcard "AAAAAAAAAAAA").

    Raises ValueError naming what is wrong, so a site file's typo is reported, not sent.
    """
    if not isinstance(address, str) or len(address) != 12:
        raise ValueError("a DL/T 645 address is 12 digits, got %r" % (address,))
    if address.upper() == WILDCARD:
        return b"\xaa" * 6
    if not address.isdigit():
        raise ValueError("a DL/T 645 address holds decimal digits only, got %r" % (address,))
    out = bytearray(6)
    for i in range(6):
        pair = address[10 - 2 * i : 12 - 2 * i]  # last two digits first
        out[i] = (ord(pair[0]) - 48) << 4 | (ord(pair[1]) - 48)
    return bytes(out)


def address_text(a):
    """The 12-digit address of A0..A5 (6 bytes, lowest first); ValueError if not BCD."""
    if len(a) != 6:
        raise ValueError("an address field has 6 bytes, got %d" % len(a))
    if bytes(a) == b"\xaa" * 6:
        return WILDCARD
    return _bcd_digits(a)


def normalise_address(address):
    """A site file's address (int or digit string of up to 12 digits) as 12 digits, or None."""
    if isinstance(address, bool):
        return None
    if isinstance(address, int):
        if not 0 <= address <= 999999999999:
            return None
        address = str(address)
    if not isinstance(address, str) or not address.isdigit() or len(address) > 12:
        return None
    return "0" * (12 - len(address)) + address


def _bcd_digits(data):
    """Digits of packed BCD bytes sent lowest byte first, most significant digit first."""
    chars = []
    for i in range(len(data) - 1, -1, -1):
        b = data[i]
        hi, lo = b >> 4, b & 0xF
        if hi > 9 or lo > 9:
            raise ValueError("byte 0x%02X is not packed BCD" % b)
        chars.append(chr(48 + hi))
        chars.append(chr(48 + lo))
    return "".join(chars)


def checksum(data, start=0, end=None):
    """Sum modulo 256 of data[start:end]."""
    if end is None:
        end = len(data)
    s = 0
    for i in range(start, end):
        s += data[i]
    return s & 0xFF


def build(address, control, data=b"", preamble=True):
    """A complete frame: [preamble] 68 A 68 C L DATA+0x33 CS 16."""
    if len(data) > MAX_DATA:
        raise ValueError("data field of %d bytes exceeds %d" % (len(data), MAX_DATA))
    body = bytearray(b"\x68")
    body += address_bytes(address)
    body.append(0x68)
    body.append(control)
    body.append(len(data))
    for b in data:
        body.append((b + 0x33) & 0xFF)
    body.append(checksum(body))
    body.append(0x16)
    if preamble:
        return PREAMBLE + bytes(body)
    return bytes(body)


def di_bytes(di):
    """The 4 bytes of a data identifier as sent (DI0 first), before the 0x33 offset."""
    return bytes((di & 0xFF, (di >> 8) & 0xFF, (di >> 16) & 0xFF, (di >> 24) & 0xFF))


def read_request(address, di, preamble=True):
    """Request to read data item `di` (e.g. DI_ENERGY_IMPORT) from the meter at `address`."""
    return build(address, C_READ, di_bytes(di), preamble)


def read_address_frame(preamble=True):
    """The broadcast read of the communication address: FE FE FE FE 68 AA*6 68 13 00 DF 16.

    Only the single meter on a line may be asked this way (every meter answers it); the reply
    is decoded by `parse_address_response`.  Commissioning uses it to learn a new meter's
    address before it is put on a shared bus.
    """
    return build(WILDCARD, C_READ_ADDRESS, b"", preamble)


def frame_length(buf, n=None):
    """How many bytes of `buf[:n]` the frame starting there needs in total, preamble included.

    None while too few bytes have arrived to know (the length byte is the tenth of a frame);
    0 when the bytes cannot start a DL/T 645 frame (not FE and not 68).
    """
    if n is None:
        n = len(buf)
    i = 0
    while i < n and buf[i] == 0xFE:
        i += 1
    if i >= n:
        return None
    if buf[i] != 0x68:
        return 0
    if n < i + 10:
        return None
    return i + 12 + buf[i + 9]


def parse(frm):
    """Check a received frame; (code, address, control, data minus 0x33) or (code, None, ...).

    Leading FE bytes are skipped.  The checksum and the end byte are checked before anything
    else in the frame is believed.
    """
    n = len(frm)
    i = 0
    while i < n and frm[i] == 0xFE:
        i += 1
    if n - i < 12:
        return modbus.E_SHORT, None, None, None
    if frm[i] != 0x68 or frm[i + 7] != 0x68:
        return modbus.E_CRC, None, None, None  # not a frame: as good as damaged
    length = frm[i + 9]
    end = i + 10 + length
    if n < end + 2:
        return modbus.E_SHORT, None, None, None
    if checksum(frm, i, end) != frm[end] or frm[end + 1] != 0x16:
        return modbus.E_CRC, None, None, None
    try:
        address = address_text(frm[i + 1 : i + 7])
    except ValueError:
        return modbus.E_ADDRESS, None, None, None
    data = bytearray(length)
    for k in range(length):
        data[k] = (frm[i + 10 + k] - 0x33) & 0xFF
    return modbus.OK, address, frm[i + 8], bytes(data)


def parse_read_response(frm, address, di, nbytes=None):
    """Check and unpack the reply to `read_request(address, di)`.

    Returns (OK, value bytes) — the data after the echoed identifier, lowest byte first — or
    (E_EXCEPTION, error byte) for an abnormal answer, or (error code, None): E_CRC (checksum or
    framing), E_ADDRESS (another meter), E_FUNCTION (another control code or data item),
    E_LENGTH (not `nbytes` value bytes, when given), E_SHORT.
    """
    code, addr, control, data = parse(frm)
    if code != modbus.OK:
        return code, None
    if addr != address:
        return modbus.E_ADDRESS, None
    if control == (C_READ | REPLY | ABNORMAL):
        if len(data) != 1:
            return modbus.E_LENGTH, None
        return modbus.E_EXCEPTION, data[0]
    if control & 0xDF != (C_READ | REPLY):  # MORE (subsequent frames) is tolerated
        return modbus.E_FUNCTION, None
    if len(data) < 4:
        return modbus.E_LENGTH, None
    if data[:4] != di_bytes(di):
        return modbus.E_FUNCTION, None
    value = data[4:]
    if nbytes is not None and len(value) != nbytes:
        return modbus.E_LENGTH, None
    return modbus.OK, value


def parse_address_response(frm):
    """The reply to `read_address_frame()`: (OK, 12-digit address) or (error code, None)."""
    code, addr, control, data = parse(frm)
    if code != modbus.OK:
        return code, None
    if control == (C_READ_ADDRESS | REPLY | ABNORMAL):
        return modbus.E_EXCEPTION, data[0] if data else 0
    if control != (C_READ_ADDRESS | REPLY):
        return modbus.E_FUNCTION, None
    if len(data) != 6:
        return modbus.E_LENGTH, None
    try:
        text = address_text(data)
    except ValueError:
        return modbus.E_LENGTH, None
    if text != addr:
        return modbus.E_ADDRESS, None  # the data must repeat the frame's own address
    return modbus.OK, text


def reply_length(di_value_bytes, preamble=4):
    """Bytes of a normal read reply carrying `di_value_bytes` value bytes (for timing)."""
    return preamble + 12 + 4 + di_value_bytes


def error_text(err):
    """An abnormal answer's error byte in words, e.g. "no such data item"."""
    if err & ERR_NO_DATA:
        return "no such data item"
    if err & ERR_PASSWORD:
        return "password error or not authorised"
    if err & ERR_OTHER:
        return "other error"
    return "error 0x%02X" % err


def decode_bcd(value, signed=False):
    """The integer of packed BCD bytes sent lowest first; with `signed` the top bit is the sign.

    Raises ValueError for a nibble above 9 (a meter that has no value sends such bytes, or
    the frame is not what it claims): never turned into a number.
    """
    if not value:
        raise ValueError("empty value")
    top = value[len(value) - 1]
    negative = False
    if signed and top & 0x80:
        negative = True
        value = bytes(value[: len(value) - 1]) + bytes((top & 0x7F,))
    v = int(_bcd_digits(value))
    return -v if negative else v


def encode_bcd(v, nbytes, signed=False):
    """Inverse of `decode_bcd`: `v` (int) as `nbytes` packed BCD bytes, lowest first."""
    negative = v < 0
    if negative and not signed:
        raise ValueError("negative value %d for an unsigned item" % v)
    digits = str(-v if negative else v)
    if len(digits) > 2 * nbytes or (signed and len(digits) == 2 * nbytes and digits[0] > "7"):
        raise ValueError("%d does not fit %d BCD bytes" % (v, nbytes))
    digits = "0" * (2 * nbytes - len(digits)) + digits
    out = bytearray(nbytes)
    for i in range(nbytes):
        pair = digits[2 * nbytes - 2 - 2 * i : 2 * nbytes - 2 * i]
        out[i] = (ord(pair[0]) - 48) << 4 | (ord(pair[1]) - 48)
    if negative:
        out[nbytes - 1] |= 0x80
    return bytes(out)


def describe(code, payload=None):
    """A transaction's outcome in words (abnormal answers by their error byte)."""
    if code == modbus.E_EXCEPTION:
        return "abnormal answer 0x%02X: %s" % (payload or 0, error_text(payload or 0))
    return modbus.RESULT_NAMES[code]
