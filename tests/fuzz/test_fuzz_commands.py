"""Fuzz: downlink commands (pilecore.commands.check_bytes), the bytes anyone who can publish on
the gateway's command topic sends.  Never raises (issue 9 #4: deep JSON raised RecursionError
and the command got no ack), always says why it refuses, and accepts only the exact bytes the
platform signed."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ, corpus
from hypothesis import example, given
from hypothesis import strategies as st
from mpytest import new_key

from pilecore import commands, ecdsa, envelope

PD = new_key()
PPUB = ecdsa.public_key(PD)
PKID = envelope.key_id(ecdsa.spki_der(PPUB))
NOW = 1764150000


def _signed(args: object) -> bytes:
    sign = lambda m: ecdsa.sig_raw(*ecdsa.sign(PD, m))  # noqa: E731
    return commands.make("GW-1", "c1", "set_interval", args, NOW - 5, NOW + 100, sign, PKID).encode()


GOOD = _signed({"interval_s": 60})


def _check(payload: bytes):
    res = commands.check_bytes(payload, PPUB, "GW-1", NOW, commands.ReplayGuard(), 300)
    cmd, why = res
    assert (cmd is None) != (why is None or why == ""), res
    if cmd is None:
        assert isinstance(why, str) and why
    return cmd


@FUZZ
@given(payload=st.binary(max_size=2000))
@example(payload=b"[" * 100000)
@example(payload=b"eyJhbGciOiJFUzI1NiJ9." + b"W" * 5000 + b".AA")
def test_random_bytes_are_refused_with_a_reason(payload):
    assert _check(payload) is None


@FUZZ
@given(data=st.data())
def test_a_signed_command_with_any_byte_changed_is_refused(data):
    raw = bytearray(GOOD)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != GOOD[i]))
    cmd = _check(bytes(raw))
    # base64url has 2 unused bits in the last character of a part: changing them alone decodes
    # to the same bytes, so the command is still the one the platform signed
    if cmd is not None:
        assert envelope.split(bytes(raw).decode())[1] == envelope.split(GOOD.decode())[1]


@FUZZ
@given(
    args=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=20,
    )
)
def test_validly_signed_commands_with_any_arguments_are_answered(args):
    cmd = _check(_signed(args))
    assert cmd is None or cmd["args"] == args


def test_the_good_command_is_accepted():
    assert _check(GOOD)["cmd"] == "set_interval"


@pytest.mark.parametrize("payload", corpus("commands"), ids=lambda b: b.hex()[:24])
def test_corpus_of_commands(payload):
    assert _check(payload) is None
