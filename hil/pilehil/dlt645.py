"""A simulated DL/T 645-2007 meter: the same physical truth as :class:`SimMeter`, served as
data items instead of registers.

The meter answers, on the same simulated bus as Modbus meters (:mod:`pilehil.wire` tells the
two kinds of frame apart):

* reads (control 0x11) of the items its profile names, per-phase blocks (e.g. 0x0201FF00)
  included, with the normal reply 0x91 (four FE wake-up bytes first, as many meters send);
* the broadcast address read (68 AA AA AA AA AA AA 68 13 00 DF 16) with its own address (0x93);
* the standard's communication address (0x04000401) and meter number (0x04000402) items;
* an abnormal reply 0xD1 with error byte 0x02 ("no such data") for any other item, or the
  error byte of an injected exception fault (``add_exception(code, start=di, end=di)``).

Values are the truth encoded in packed BCD with the profile's ``decimals`` (energy truncated
to the item's resolution, as a meter's register is; other values rounded), lowest byte first.
Frames use :mod:`pilecore.dlt645`, the gateway's own codec, checked against public captures
in tests/core/test_dlt645.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from pilecore import dlt645

from .meter import SimMeter
from .registers import RegisterImage

#: The items every DL/T 645-2007 meter keeps besides the profile's values.
ADDRESS_ITEM = dlt645.DI_ADDRESS
NUMBER_ITEM = dlt645.DI_METER_NUMBER


def is_dlt645(profile: Mapping[str, Any]) -> bool:
    return profile.get("protocol", "modbus") == "dlt645"


def item_bytes(value: Any, spec: Mapping[str, Any], energy: bool = False) -> bytes:
    """A canonical value as the item's BCD bytes (``value`` in the canonical unit)."""
    decimals = int(spec["decimals"])
    scaled = Fraction(repr(float(value))) if isinstance(value, float) else Fraction(value)
    scaled = scaled / Fraction(repr(float(spec.get("scale", 1)))) * 10**decimals
    raw = int(scaled) if energy else round(scaled)  # energy registers truncate
    limit = 10 ** (2 * int(spec["bytes"])) - 1
    if spec.get("signed"):
        limit = 8 * 10 ** (2 * int(spec["bytes"]) - 1) - 1
    raw = max(-limit, min(limit, raw))
    return dlt645.encode_bcd(raw, int(spec["bytes"]), bool(spec.get("signed", False)))


class SimDltMeter(SimMeter):
    """One simulated DL/T 645 meter at a 12-digit ``address`` with meter number ``serial``.

    The physics, the clock, swaps, resets and run-time faults are :class:`SimMeter`'s."""

    def _check_address(self, address: Any) -> None:
        if not isinstance(address, str) or len(address) != 12 or not address.isdigit():
            raise ValueError(f"a DL/T 645 meter address is 12 decimal digits, got {address!r}")

    def _encode_identity(self, serial: str) -> RegisterImage:
        digits = serial if serial.isdigit() and len(serial) <= 12 else str(abs(hash(serial)) % 10**12)
        return {(0x11, NUMBER_ITEM): int(digits)}  # kept as an int, encoded in items()

    def _mapped_set(self) -> set[tuple[int, int]]:
        out = {(0x11, ADDRESS_ITEM), (0x11, NUMBER_ITEM)}
        for spec in (self.profile.get("values") or {}).values():
            dis = spec["di"] if isinstance(spec["di"], list) else [spec["di"]]
            out.update((0x11, di) for di in dis)
            if "block" in spec:
                out.add((0x11, spec["block"]))
        return out

    def live_image(self, t_ms: int | None = None) -> RegisterImage:
        """The item image: ``{(0x11, di): value bytes}`` (bytes, not register words)."""
        vals = self.values(t_ms)
        image: dict[tuple[int, int], Any] = {}
        for name, spec in (self.profile.get("values") or {}).items():
            if name == "energy_import":
                image[(0x11, spec["di"])] = item_bytes(Fraction(vals["energy_wh"], 1000), spec, energy=True)
                continue
            v = vals.get(name, 0)
            if isinstance(spec["di"], list):
                parts = [item_bytes(x, spec) for x in v]
                for di, part in zip(spec["di"], parts, strict=True):
                    image[(0x11, di)] = part
                if "block" in spec:
                    image[(0x11, spec["block"])] = b"".join(parts)
            else:
                image[(0x11, spec["di"])] = item_bytes(v, spec)
        image[(0x11, ADDRESS_ITEM)] = dlt645.address_bytes(self.address)
        with self._lock:
            number = self._ident[(0x11, NUMBER_ITEM)]
        image[(0x11, NUMBER_ITEM)] = dlt645.encode_bcd(number, 6)
        return image

    def read(self, function: int, address: int, count: int) -> list[int] | int:
        """Modbus reads never reach a DL/T 645 meter; answer as if unmapped."""
        return 1

    def read_item(self, di: int) -> bytes | int:
        """The value bytes of data item ``di``, or an error byte for an abnormal reply."""
        for exc in list(self.faults.exceptions):
            if exc.matches(0x11, di, 1):
                return exc.code
        value = self.image().get((0x11, di))
        if value is None:
            return dlt645.ERR_NO_DATA
        return value

    def answer(self, request: bytes) -> bytes | None:
        """The reply frame to a request frame addressed to this meter (or the wildcard), or
        None when the meter stays silent (not for it, a damaged frame, an unknown command)."""
        code, addr, control, data = dlt645.parse(request)
        if code != 0 or control is None or control & dlt645.REPLY:
            return None
        if control == dlt645.C_READ_ADDRESS:
            if addr != dlt645.WILDCARD:
                return None
            return dlt645.build(self.address, dlt645.C_READ_ADDRESS | dlt645.REPLY, dlt645.address_bytes(self.address))
        if addr != self.address:
            return None
        if control != dlt645.C_READ or len(data) != 4:
            return dlt645.build(self.address, control | dlt645.REPLY | dlt645.ABNORMAL, bytes((dlt645.ERR_OTHER,)))
        di = data[0] | data[1] << 8 | data[2] << 16 | data[3] << 24
        result = self.read_item(di)
        if isinstance(result, int):
            return dlt645.build(self.address, dlt645.C_READ | dlt645.REPLY | dlt645.ABNORMAL, bytes((result,)))
        return dlt645.build(self.address, dlt645.C_READ | dlt645.REPLY, bytes(data) + result)
