"""The ESP32's buses and relays: the bytes of the core's metering (pilecore.gateway.SiteDriver).

One `RtuMaster` per RS-485 bus; `step(ms, now)` performs at most ONE transaction per bus (each
bounded by its reply timeout) and hands the outcome to the driver, so the main loop stays
responsive.  Which transaction comes next, and what its reply means, is the driver's.  Board
relays are `relays[name] = (Pin, active_high)`, switched when the driver says so (`actuate`).

The console's raw reads and scans go through the driver (`request`, `cancel`, `bus_stats`,
`scheds`, `meters` are the driver's, named here for the console backend).
"""

from pilecore.gateway import Scan  # noqa: F401  (the console backend's scan, from the core)


class Buses:
    """See the module docstring.  masters: {bus name: RtuMaster}; ticks_ms(): monotonic ms."""

    def __init__(self, driver, masters, relays, ticks_ms):
        self.driver = driver
        self.masters = masters
        self.relays = relays
        self.ticks_ms = ticks_ms
        self.scheds = driver.scheds
        self.meters = driver.meters
        self.request = driver.request
        self.cancel = driver.cancel
        self.bus_stats = driver.bus_stats

    def step(self, ms, now):
        """At most one transaction per bus; returns True when any bus did one."""
        did = False
        d = self.driver
        for name in self.masters:
            txn = d.next_txn(name, ms)
            if txn is None:
                continue
            code, payload, elapsed = self.masters[name].transact(txn)
            d.txn_done(name, txn, self.ticks_ms(), now, code, payload, elapsed)
            did = True
        return did

    def actuate(self, relay, on):
        pin_active = self.relays.get(relay)
        if pin_active is not None:
            pin, active_high = pin_active
            pin.value(1 if on == active_high else 0)

    def close(self):
        for master in self.masters.values():
            deinit = getattr(master.uart, "deinit", None)
            if deinit is not None:
                deinit()
