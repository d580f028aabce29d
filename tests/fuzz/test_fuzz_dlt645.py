"""Fuzz: DL/T 645-2007 replies (pilecore.dlt645), the other protocol on the RS-485 line.
Never raises; a reply is accepted only from the meter asked, for the item asked, with the
checksum right; BCD that is not BCD is never a number."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ, corpus
from hypothesis import given
from hypothesis import strategies as st

from pilecore import dlt645, modbus

ADDRESS = "000012345678"
DIS = [dlt645.DI_ENERGY_IMPORT, dlt645.DI_VOLTAGE_A, dlt645.DI_POWER, dlt645.DI_METER_NUMBER]


@FUZZ
@given(frm=st.binary(max_size=300), di=st.sampled_from(DIS), nbytes=st.none() | st.integers(1, 8))
def test_any_bytes_as_a_read_reply(frm, di, nbytes):
    code, value = dlt645.parse_read_response(frm, ADDRESS, di, nbytes)
    assert code in range(0, 8)
    if code == modbus.OK:
        assert isinstance(value, (bytes, bytearray)) and (nbytes is None or len(value) == nbytes)


@FUZZ
@given(frm=st.binary(max_size=64))
def test_any_bytes_as_an_address_reply(frm):
    code, addr = dlt645.parse_address_response(frm)
    assert code in range(0, 8)
    if code == modbus.OK:
        assert isinstance(addr, str) and len(addr) == 12 and addr.isdigit()


@FUZZ
@given(value=st.binary(max_size=8), signed=st.booleans())
def test_bcd_is_a_number_or_a_value_error(value, signed):
    try:
        v = dlt645.decode_bcd(value, signed)
    except ValueError:
        return
    assert isinstance(v, int) and abs(v) < 10 ** (2 * len(value))


@FUZZ
@given(data=st.data(), di=st.sampled_from(DIS))
def test_a_valid_reply_with_any_byte_changed_is_refused_or_the_same_answer(data, di):
    value = data.draw(st.binary(min_size=2, max_size=6))
    body = dlt645.di_bytes(di) + value
    frm = bytearray(dlt645.build(ADDRESS, dlt645.C_READ | dlt645.REPLY, body, preamble=False))
    good = dlt645.parse_read_response(bytes(frm), ADDRESS, di)
    assert good == (modbus.OK, value), good
    i = data.draw(st.integers(0, len(frm) - 1))
    frm[i] ^= data.draw(st.integers(1, 255))
    code, got = dlt645.parse_read_response(bytes(frm), ADDRESS, di)
    if code == modbus.OK:
        assert (code, got) == good, (i, got, good)


@pytest.mark.parametrize("frm", corpus("dlt645"), ids=lambda b: b.hex()[:24])
def test_corpus_of_dlt645_replies(frm):
    assert dlt645.parse_read_response(frm, ADDRESS, dlt645.DI_ENERGY_IMPORT)[0] in range(0, 8)
