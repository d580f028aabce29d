"""A simulated energy meter: physical truth from a load profile, registers per a meter profile,
and run-time faults.

Truth is a pure function of the injected clock: the meter's time is
``t_ms = round((clock() - t0) * 1000)`` with ``t0`` the clock at creation, power comes from the
load, and the energy total is an integer count of Wh computed from the load's exact integral,
so it never drifts however often it is read. Voltage sags slightly with phase power
(0.4 V per kW), current is ``P_phase / (V * PF)``, so ``sum(V * I * PF) == P``.

Faults live in :attr:`SimMeter.faults`; the datastore side (exceptions, block limit, frozen
values, unmapped registers) is applied by :meth:`SimMeter.read`, the wire side (no reply, late
reply, corrupted CRC) by :mod:`pilehil.wire`. State changes (swap, energy reset) are methods.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from .device import BusDevice, MeterFaults, _check_code
from .load import MJ_PER_WH, ConstantLoad, Load
from .registers import (
    CANONICAL_UNITS,
    RegisterImage,
    encode_identity,
    encode_ratios,
    encode_value,
    mapped_registers,
)

SAG_V_PER_KW = 0.4
DEFAULT_VOLTAGES = (230.0, 231.0, 229.0)  # distinct per phase so phase mix-ups show


class SimMeter(BusDevice):
    """One simulated meter at a bus ``address`` with factory ``serial``.

    ``profile`` is a meter profile dict (profiles/meters/*.toml). ``load`` defaults to idle.
    ``clock`` returns seconds (default: real time). ``energy_wh`` is the register total at
    creation. ``latency_ms`` (default: the profile's ``response_ms``) is the time from the end
    of a request to the start of the reply in the bus-timing model. ``unmapped`` says what a
    read of a register the profile does not define gives: ``"zero"`` (reads as 0) or
    ``"exception"`` (exception 2, illegal data address). ``baud`` is the meter's own line
    speed when it differs from the bus's (None: the bus's)."""

    def __init__(
        self,
        profile: Mapping[str, Any],
        address: Any,  # 1..247, or a DL/T 645 meter's 12 digits (pilehil.dlt645.SimDltMeter)
        serial: str,
        load: Load | None = None,
        clock: Callable[[], float] | None = None,
        *,
        energy_wh: int = 0,
        voltage_v: Sequence[float] | None = None,
        frequency_hz: float = 50.0,
        power_factor: float = 0.99,
        latency_ms: float | None = None,
        unmapped: str = "zero",
        baud: int | None = None,
        ratios: Mapping[str, int] | None = None,
    ) -> None:
        if unmapped not in ("zero", "exception"):
            raise ValueError("unmapped must be 'zero' or 'exception'")
        super().__init__(address, clock, profile.get("response_ms", 0) if latency_ms is None else latency_ms)
        self.profile = profile
        self.phases = int(profile.get("phases", 1))
        self.load: Load = load if load is not None else ConstantLoad(0)
        self.voltage_nominal = list(voltage_v or DEFAULT_VOLTAGES[: self.phases])
        if len(self.voltage_nominal) != self.phases:
            raise ValueError(f"voltage_v needs {self.phases} values")
        self.frequency_hz = frequency_hz
        self.pf = power_factor
        self.unmapped = unmapped
        #: The meter's own baud rate when it differs from its bus's (a meter left at its factory
        #: setting): on a pty bus it answers only masters set to this rate. None = the bus's.
        self.baud = baud
        #: Transformer ratios the meter holds (profile [ratios]): 1 = direct connection.
        self.ratios = {name: 1 for name in (profile.get("ratios") or {})}
        self.ratios.update(ratios or {})
        self._lock = threading.Lock()
        self._t0 = self.clock()
        self._serial = serial
        self._ident = self._encode_identity(serial)
        self._mapped = frozenset(self._mapped_set())
        self._start_wh = int(energy_wh)  # register total after the last swap/reset ...
        self._base_mj = 0  # ... and delivered energy at that moment
        self._frozen_image: RegisterImage | None = None
        self.image()  # fail now, not on the first read, if the profile cannot be encoded

    # ---- protocol hooks (pilehil.dlt645.SimDltMeter overrides them) ----------------------

    def _encode_identity(self, serial: str) -> RegisterImage:
        return encode_identity(self.profile, serial)

    def _mapped_set(self) -> set[tuple[int, int]]:
        return mapped_registers(self.profile)

    def __repr__(self) -> str:
        return f"SimMeter({self.profile.get('id', '?')!r}, address={self.address}, serial={self._serial!r})"

    # ---- truth --------------------------------------------------------------------------

    @property
    def t_ms(self) -> int:
        """Meter time: milliseconds since creation, from the clock."""
        return max(0, round((self.clock() - self._t0) * 1000))

    @property
    def serial(self) -> str:
        return self._serial

    @property
    def delivered_mj(self) -> int:
        """Exact energy drawn by the load since creation (W·ms), untouched by swap/reset."""
        return self.load.energy_mj(0, self.t_ms)

    @property
    def delivered_wh(self) -> int:
        """Whole Wh drawn by the load since creation (the pile's true consumption)."""
        return self.delivered_mj // MJ_PER_WH

    @property
    def energy_wh(self) -> int:
        """The meter's energy register total in whole Wh (reflects swap and reset, not
        freezing)."""
        return self._energy_wh_at(self.t_ms)

    def _energy_wh_at(self, t_ms: int) -> int:
        with self._lock:
            start, base = self._start_wh, self._base_mj
        return start + (self.load.energy_mj(0, t_ms) - base) // MJ_PER_WH

    @property
    def power_w(self) -> int:
        return self.load.power_w(self.t_ms)

    def phase_power_w(self, t_ms: int | None = None) -> list[float]:
        """Power per meter phase: a 1-phase load lands on L1, a 3-phase load splits evenly."""
        t = self.t_ms if t_ms is None else t_ms
        p = self.load.power_w(t)
        if self.phases == 1:
            return [float(p)]
        if self.load.phases_at(t) == 1:
            return [float(p), 0.0, 0.0]
        return [p / 3.0] * 3

    def values(self, t_ms: int | None = None) -> dict[str, Any]:
        """Canonical truth values now (or at ``t_ms``): energy_import (kWh, float),
        energy_wh (int), power (W), voltage / current (per-phase lists), frequency,
        power_factor."""
        t = self.t_ms if t_ms is None else t_ms
        phase_p = self.phase_power_w(t)
        power = self.load.power_w(t)
        pf = self.pf if power > 0 else 1.0
        volts = [vn - SAG_V_PER_KW * p / 1000.0 for vn, p in zip(self.voltage_nominal, phase_p, strict=True)]
        amps = [p / (v * pf) if p > 0 else 0.0 for v, p in zip(volts, phase_p, strict=True)]
        wh = self._energy_wh_at(t)
        return {
            "energy_wh": wh,
            "energy_import": wh / 1000.0,
            "power": power,
            "voltage": volts,
            "current": amps,
            "frequency": self.frequency_hz,
            "power_factor": pf,
        }

    @property
    def voltage(self) -> list[float]:
        return self.values()["voltage"]

    @property
    def current(self) -> list[float]:
        return self.values()["current"]

    # ---- registers ----------------------------------------------------------------------

    def live_image(self, t_ms: int | None = None) -> RegisterImage:
        """Register image of the truth now (ignores freezing)."""
        vals = self.values(t_ms)
        image: RegisterImage = {}
        for name in self.profile.get("values") or {}:
            if name == "energy_import":
                v: Any = Fraction(vals["energy_wh"], 1000)  # exact kWh
            elif name in CANONICAL_UNITS:
                v = vals[name]
            else:
                v = 0  # a value this simulator does not model (e.g. export energy)
            factor = 1
            for rname in self.profile["values"][name].get("ratios", ()):
                factor *= self.ratios[rname]
            if factor not in (0, 1):  # a secondary-side register: the primary value over the ratios
                v = [x / factor for x in v] if isinstance(v, list) else Fraction(v) / factor
            image.update(encode_value(self.profile, name, v))
        image.update(encode_ratios(self.profile, self.ratios))
        with self._lock:
            image.update(self._ident)
        return image

    def image(self) -> RegisterImage:
        """What a read serves now: the frozen image while frozen, else the live one."""
        with self._lock:
            frozen = self._frozen_image
        return dict(frozen) if frozen is not None else self.live_image()

    @property
    def mapped(self) -> frozenset[tuple[int, int]]:
        """Every ``(function, register)`` the profile defines."""
        return self._mapped

    def is_mapped(self, function: int, register: int) -> bool:
        return (function, register) in self._mapped

    def _serve(self, function: int, address: int, count: int) -> list[int] | int:
        """A read of ``count`` registers at ``address`` with ``function`` (3 or 4), after the
        injected exceptions (:meth:`BusDevice.read`): the register values, or a Modbus exception
        code for the block-size limit or unmapped registers (if ``unmapped == "exception"``)."""
        f = self.faults
        if f.block_limit is not None and count > f.block_limit:
            return f.block_limit_code
        span = range(address, address + count)
        if self.unmapped == "exception" and not all(self.is_mapped(function, r) for r in span):
            return 2
        image = self.image()
        return [image.get((function, r), 0) for r in span]

    # ---- faults -------------------------------------------------------------------------

    def set_block_limit(self, max_registers: int | None, code: int = 2) -> None:
        """Reads of more than ``max_registers`` registers get exception ``code`` (2 or 3 as
        real meters do); None removes the limit."""
        self.faults.block_limit_code = _check_code(code)
        self.faults.block_limit = max_registers

    def freeze(self, on: bool = True) -> None:
        """Stuck values: the registers keep serving the image of this instant."""
        image = self.live_image() if on else None
        with self._lock:
            self._frozen_image = image
        self.faults.frozen = on

    def swap(self, serial: str, energy_wh: int = 0) -> None:
        """Replace the meter: a new ``serial`` and an energy total restarting at
        ``energy_wh``. The load (the pile) is unchanged; a frozen image is dropped."""
        ident = self._encode_identity(serial)
        base = self.delivered_mj
        with self._lock:
            self._serial, self._ident = serial, ident
            self._start_wh, self._base_mj = int(energy_wh), base
            self._frozen_image = None
        self.faults.frozen = False

    def reset_energy(self) -> None:
        """The energy total goes back to 0 (and counts on from there)."""
        base = self.delivered_mj
        with self._lock:
            self._start_wh, self._base_mj = 0, base

    def clear_faults(self) -> None:
        """All run-time faults off (swap and reset are state changes and stay)."""
        self.freeze(False)
        self.faults = MeterFaults()
