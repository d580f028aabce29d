"""Fuzz: plate-reader messages (pilecore.gateway.SiteDriver.plate), the bytes any camera on the
site's local broker publishes.  Never raises; a message that is not usable is answered with why
(the port logs it), and a usable one reaches the bays as the plate read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fuzzing import FUZZ, corpus
from hypothesis import example, given
from hypothesis import strategies as st
from mpytest import new_key

from pilecore import ecdsa, envelope, ocmf
from pilecore.gateway import SiteDriver
from pilecore.site import SiteCore
from pilegate import siteconfig

ROOT = Path(__file__).resolve().parents[2]
NOW = 1764150000


class Hands:
    """The port's hands: nothing to switch or store here, only what the driver logs."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, str]] = []

    def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))

    def save(self, name: str, obj: Any) -> None:
        pass

    def actuate(self, relay: str, on: bool) -> None:
        pass

    def read_input(self, name: str) -> None:
        return None

    def set_clock(self, t: int) -> int:
        return 0

    def resend(self, first: int, last: int) -> tuple[int, int]:
        return 0, 0


_DRIVER: list[SiteDriver] = []


def driver() -> SiteDriver:
    if not _DRIVER:
        site, problems = siteconfig.load_site(ROOT / "examples" / "site.toml")
        assert site is not None, problems
        cfg = site.config
        d = new_key()
        kid = envelope.key_id(ecdsa.spki_der(ecdsa.public_key(d)))
        core = SiteCore(cfg, ocmf.signer(d), cfg["gateway"]["id"], "0.1.0")
        chain = envelope.Chain(cfg["gateway"]["id"], cfg["gateway"]["site"], kid, lambda m: b"\0" * 64, 1)
        ident = {"fw": "0.1.0", "platform": "rpi", "board": "b", "config_hash": "h", "kid": kid, "pubkey": ""}
        _DRIVER.append(SiteDriver(cfg, core, chain, Hands(), ident))
    return _DRIVER[0]


MESSAGES = st.one_of(
    st.binary(max_size=1200),
    st.builds(
        lambda m: json.dumps(m).encode(),
        st.dictionaries(
            st.sampled_from(["camera", "plate", "colour", "t", "x"]),
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.lists(st.integers()),
            max_size=5,
        ),
    ),
)


@FUZZ
@given(payload=MESSAGES)
@example(payload=b"[" * 1000)
@example(payload=b'{"camera": "CAM1", "plate": "\\u8c6bC12345", "colour": "green", "t": 1e400}')
@example(payload=b'"camera"')
def test_any_plate_message_is_used_or_refused_with_a_reason(payload):
    why = driver().plate(NOW, payload)
    assert isinstance(why, str)


def test_a_good_plate_message_is_used():
    assert driver().plate(NOW, b'{"camera": "CAM1", "plate": "A12345", "colour": "blue", "t": 1764149999}') == ""


@pytest.mark.parametrize("payload", corpus("plates"), ids=lambda b: b.hex()[:24])
def test_corpus_of_plate_messages(payload):
    assert isinstance(driver().plate(NOW, payload), str)
