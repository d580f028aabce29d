"""A plain pymodbus master for simulator endpoints: open a client for an endpoint string and
read profile values with it. Used by the simulator's tests and handy in gateway tests and
benchmarks as an independent reference reader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.client.base import ModbusBaseSyncClient
from pymodbus.framer import FramerType

from .registers import (
    TYPE_WIDTH,
    decode_identity,
    decode_value,
    identity_span,
    spec_function,
    spec_registers,
)


class ReadError(Exception):
    """A read answered with a Modbus exception (``code``) or not at all (``code`` None)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def client_for(
    endpoint: str, baud: int = 9600, parity: str = "N", stopbits: int = 1, timeout: float = 1.0, retries: int = 0
) -> ModbusBaseSyncClient:
    """A connected pymodbus sync client for ``endpoint`` (``/dev/pts/N``,
    ``tcp://host:port`` or ``rtu+tcp://host:port``). The caller closes it."""
    client: ModbusBaseSyncClient
    if endpoint.startswith(("tcp://", "rtu+tcp://")):
        scheme, _, hostport = endpoint.partition("://")
        host, _, port = hostport.rpartition(":")
        framer = FramerType.SOCKET if scheme == "tcp" else FramerType.RTU
        client = ModbusTcpClient(host, port=int(port), framer=framer, timeout=timeout, retries=retries)
    else:
        client = ModbusSerialClient(
            endpoint, baudrate=baud, parity=parity, stopbits=stopbits, timeout=timeout, retries=retries
        )
    if not client.connect():
        raise ConnectionError(f"cannot open {endpoint}")
    return client


def read_registers(client: ModbusBaseSyncClient, function: int, address: int, count: int, device_id: int) -> list[int]:
    """Read ``count`` registers with function 3 or 4; raises :class:`ReadError` on an
    exception reply, pymodbus's ``ModbusIOException`` on no (valid) reply."""
    if function == 3:
        rr = client.read_holding_registers(address, count=count, device_id=device_id)
    elif function == 4:
        rr = client.read_input_registers(address, count=count, device_id=device_id)
    else:
        raise ValueError(f"function {function} is not a register read")
    if rr.isError():
        code = getattr(rr, "exception_code", None)
        raise ReadError(f"device {device_id} fc{function} @0x{address:04X}+{count}: exception {code}", code)
    return list(rr.registers)


def read_profile_values(client: ModbusBaseSyncClient, profile: Mapping[str, Any], device_id: int) -> dict[str, Any]:
    """Read every value of ``profile`` (one request per register of each value) and the
    serial number; returns ``{name: value in canonical unit, ..., "serial": str | None}``."""
    out: dict[str, Any] = {}
    for name, spec in (profile.get("values") or {}).items():
        fn = spec_function(profile, spec)
        width = TYPE_WIDTH[spec["type"]]
        image = {}
        for reg in spec_registers(spec):
            words = read_registers(client, fn, reg, width, device_id)
            image.update({(fn, reg + i): w for i, w in enumerate(words)})
        out[name] = decode_value(profile, name, image)
    span = identity_span(profile)
    if span is None:
        out["serial"] = None
    else:
        fn, reg, count = span
        words = read_registers(client, fn, reg, count, device_id)
        out["serial"] = decode_identity(profile, {(fn, reg + i): w for i, w in enumerate(words)})
    return out
