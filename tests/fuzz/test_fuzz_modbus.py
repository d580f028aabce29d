"""Fuzz: the RTU/TCP reply parsers and the register decoders (pilecore.modbus, the planner).

Outside bytes: whatever a device (or a rogue one) puts on the RS-485 line.  The parsers must
never raise, must accept a reply only when it is exactly the answer to the request, and the
decoders must never turn a malformed register into a number that is not finite.
"""

from __future__ import annotations

import math

import pytest
from fuzzing import FUZZ, corpus
from hypothesis import example, given
from hypothesis import strategies as st

from pilecore import modbus, planner
from pilegate import siteconfig

READS = st.tuples(st.integers(1, 247), st.sampled_from([1, 2, 3, 4]), st.integers(0, 65535), st.integers(1, 125))


def _reply(address: int, function: int, regs: list[int]) -> bytes:
    body = bytes([address, function, 2 * len(regs)]) + b"".join(r.to_bytes(2, "big") for r in regs)
    return modbus.frame(body)


def _check(res, function: int, count: int) -> None:
    code, payload = res
    assert code in range(0, 8)
    if code == modbus.OK:
        assert isinstance(payload, list) and len(payload) == count
        if function >= 3:
            assert all(0 <= r <= 0xFFFF for r in payload)


@FUZZ
@given(frame=st.binary(max_size=300), req=READS)
@example(frame=bytes.fromhex("01040412341234b245"), req=(1, 3, 0, 2))  # issue 9 #3: FC 04 for 03
def test_rtu_reply_parser_never_raises_and_never_takes_a_wrong_answer(frame, req):
    address, function, register, count = req
    res = modbus.parse_rtu_reply(frame, address, function, register, count)
    _check(res, function, count)
    if res[0] == modbus.OK:
        assert frame[0] == address and frame[1] == function


@FUZZ
@given(regs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125), req=READS, flips=st.data())
def test_a_valid_reply_with_any_byte_changed_is_refused_or_still_the_right_answer(regs, req, flips):
    address, function, register, _ = req
    function = 3 if function < 3 else function
    frm = bytearray(_reply(address, function, regs))
    assert modbus.parse_rtu_reply(bytes(frm), address, function, register, len(regs)) == (modbus.OK, regs)
    i = flips.draw(st.integers(0, len(frm) - 1))
    frm[i] ^= flips.draw(st.integers(1, 255))
    code, payload = modbus.parse_rtu_reply(bytes(frm), address, function, register, len(regs))
    assert code != modbus.OK, (i, payload)  # one damaged byte never passes CRC-16


@FUZZ
@given(adu=st.binary(max_size=300), req=READS)
def test_tcp_reply_parser_never_raises(adu, req):
    address, function, register, count = req
    _check(modbus.parse_tcp_reply(adu, address, function, register, count), function, count)


@FUZZ
@given(noise=st.binary(max_size=40), regs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=60), req=READS)
def test_the_pi_finds_the_frame_pymodbus_decoded_behind_noise_and_judges_it_alike(noise, regs, req):
    # the Pi port judges the raw bytes pymodbus received: find_rtu_frame must never raise, and a
    # valid reply after line noise gets the verdict it gets alone (the noise's own CRC-valid
    # frame, if any, comes first and is judged instead, as pymodbus would decode it first)
    address, function, register, _ = req
    function = 3 if function < 3 else function
    good = _reply(address, function, regs)
    found = modbus.find_rtu_frame(noise + good)
    assert found is not None and modbus.crc_ok(found)
    if found == good:
        assert modbus.parse_rtu_reply(found, address, function, register, len(regs)) == (modbus.OK, regs)
    assert modbus.find_rtu_frame(noise[:3]) is None


@pytest.mark.parametrize("data", corpus("modbus_rtu"), ids=lambda b: b.hex()[:24])
def test_corpus_of_rtu_replies(data):
    _check(modbus.parse_rtu_reply(data, data[0] if data else 1, 3, 0, 2), 3, 2)


@FUZZ
@given(
    regs=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=6),
    offset=st.integers(0, 6),
    typ=st.sampled_from(sorted(modbus.TYPE_WIDTH)),
    bo=st.sampled_from(["big", "little"]),
    wo=st.sampled_from(["big", "little"]),
    scale=st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 1000.0]),
)
def test_decoders_give_a_finite_number_or_a_value_error(regs, offset, typ, bo, wo, scale):
    for decode in (
        lambda: modbus.decode_raw(regs, offset, typ, bo, wo),
        lambda: modbus.decode_scaled(regs, offset, typ, scale, bo, wo),
        lambda: modbus.decode_milli(regs, offset, typ, scale, bo, wo),
    ):
        try:
            v = decode()
        except ValueError:
            continue
        assert isinstance(v, (int, float)) and math.isfinite(v)


_PLANS: list = []


def _plans() -> list:
    if not _PLANS:
        profiles, problems = siteconfig.load_profiles()
        assert not problems
        for name in sorted(profiles):
            if profiles[name].get("protocol", "modbus") == "modbus":
                _PLANS.append(planner.plan_for(profiles[name]))
    return _PLANS


@FUZZ
@given(data=st.data())
def test_every_profiles_decoder_takes_any_register_values(data):
    for plan in _plans():
        blocks = []
        for read in plan.reads:
            n = read[2]
            blocks.append(data.draw(st.none() | st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n)))
        reading, faults = plan.decode(blocks)
        for key, v in reading.items():
            for x in v if isinstance(v, list) else [v]:
                assert not isinstance(x, float) or math.isfinite(x), (plan.profile.get("id"), key, x)
        assert isinstance(faults, list)
