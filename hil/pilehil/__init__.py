"""pilehil: the hardware-in-the-loop rig's simulated meters (see docs/simulator.md)."""

from .clock import ManualClock, ScaledClock, SiteClock
from .device import BusDevice, ExceptionFault, MeterFaults
from .load import ConstantLoad, EvSessions, Load, Session, idle, parse_load
from .meter import SimMeter
from .probe import ReadError, client_for, read_profile_values, read_registers
from .registers import (
    decode_identity,
    decode_value,
    encode_identity,
    encode_value,
    load_profile,
)
from .site import Bus, Site
from .wire import BusStats, LineTiming, add_crc, crc16, crc_ok

__all__ = [
    "Bus",
    "BusDevice",
    "BusStats",
    "ConstantLoad",
    "EvSessions",
    "ExceptionFault",
    "LineTiming",
    "Load",
    "ManualClock",
    "MeterFaults",
    "ReadError",
    "ScaledClock",
    "Session",
    "SimMeter",
    "Site",
    "SiteClock",
    "add_crc",
    "client_for",
    "crc16",
    "crc_ok",
    "decode_identity",
    "decode_value",
    "encode_identity",
    "encode_value",
    "idle",
    "load_profile",
    "parse_load",
    "read_profile_values",
    "read_registers",
]
