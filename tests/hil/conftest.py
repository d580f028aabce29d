"""Fixtures shared by the simulator tests."""

import logging

import pytest


@pytest.fixture(autouse=True)
def quiet_pymodbus():
    """Expected timeouts and exceptions are not news; restore the level afterwards."""
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
