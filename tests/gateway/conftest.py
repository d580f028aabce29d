"""Fixtures for gateway tests: simulated sites and private brokers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e import end_leftover_gateways
from simsite import SimSite, make_sim_site

from pilehil.broker import Broker


@pytest.fixture(autouse=True)
def no_leftover_gateways() -> Iterator[None]:
    """A test that fails after starting `pilegate run` must not leave it running."""
    yield
    end_leftover_gateways()


@pytest.fixture
def sim_site(tmp_path) -> Iterator[Any]:
    """Factory: sim_site(body, loads=...) -> SimSite; every simulator is stopped afterwards."""
    made: list[SimSite] = []

    def factory(body: str, **kw: Any) -> SimSite:
        s = make_sim_site(tmp_path, body, **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.sim.stop()


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def tls_broker(tmp_path) -> Iterator[Broker]:
    b = Broker(tmp_path / "tls-broker", tls=True).start()
    yield b
    b.stop()
