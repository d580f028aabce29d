"""Fuzz: the console's line discipline and interpreter (pilecore.console), the bytes anyone with
the cable or the socket sends.  Never raises, never lets the pending line grow past max_line,
bounds one chunk's output, never runs a privileged command without a login."""

from __future__ import annotations

import pytest
from fuzzing import FUZZ, corpus
from hypothesis import given
from hypothesis import strategies as st
from test_console import FakeBackend

from pilecore.console import Console
from pilecore.console_line import INTERRUPT, LINE, NOTHING, LineEditor

WORDS = [b"help", b"status", b"piles", b"set", b"log", b"login", b"reboot", b"--json", b"\r", b"\n", b"\x03"]
CHUNKS = st.lists(
    st.binary(max_size=64) | st.sampled_from(WORDS) | st.sampled_from([b"\x1b[A", b"\x7f", b"\x08", b"x" * 300]),
    max_size=40,
)


def _run(chunks: list[bytes]) -> FakeBackend:
    b = FakeBackend()
    c = Console(b, auth_record=None, max_line=64, max_output=4096, greet_on_input=True)
    for now, chunk in enumerate(chunks):
        out = c.feed(chunk, now)
        assert isinstance(out, bytes)
        assert len(out) <= 3 * c.max_output + 3 * len(chunk) + 1024
        assert c.pending_len() <= c.max_line
        out = c.poll(now)
        assert isinstance(out, bytes)
    # no PIN is provisioned: nothing privileged can have run
    assert not {"reboot", "factory_reset", "set_setting", "interlock"} & set(b.calls)
    return b


@FUZZ
@given(chunks=CHUNKS)
def test_any_input_is_answered_never_raised_and_stays_bounded(chunks):
    _run(chunks)


@FUZZ
@given(data=st.binary(max_size=400))
def test_the_line_editor_keeps_its_bounds(data):
    ed = LineEditor(32)
    out = bytearray()
    for b in data:
        ev = ed.step(b, out, True)
        assert ev in (NOTHING, LINE, INTERRUPT) and ed.n <= 32
        if ev == LINE:
            line = ed.take()
            assert line is None or len(line) <= 32
    assert len(out) <= 3 * len(data)


@pytest.mark.parametrize("data", corpus("console"), ids=lambda b: b.hex()[:24])
def test_corpus_of_console_input(data):
    _run([data])
