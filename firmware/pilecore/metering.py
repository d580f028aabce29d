"""One pile, one meter (一桩一表), enforced at run time.

`SiteGuard` watches every pile's meter and decides, from readings, identity reads and the
time, whether each pile is *metered*: its own commissioned meter answers, is the bound one
(serial number), counts forward, and measures what the pile draws.  It raises events and says
which interlocks must be open.  No I/O: the port feeds it and acts on what it returns.

Time: `now` is Unix seconds (int) from the port's clock.  A clock that steps backwards (time
sync) restarts the windows instead of producing negative durations.

Events are dicts {"type", "pile", "t", ...}:
  meter.bound           a serial bound to a pile whose config left `serial` empty: the same
                        serial read twice, at least BIND_CONFIRM_S apart
  meter.verified        identity matches the binding (after start, reconnect, or periodically)
  meter.swapped         identity differs from the binding: tamper; pile unmetered
  meter.identity_failed identity could not be read or decoded, or two first reads differ
  meter.energy_backwards total energy decreased (reset or replaced meter); pile unmetered
  meter.energy_jump     energy rose faster than the pile can draw: reading rejected
  meter.fault           a value failed decoding or its sane range: the whole reading is
                        rejected and the pile unmetered ("fault") until a clean reading
  meter.comm_error      a poll failed (timeout, CRC error, exception) after good ones
  meter.comm_restored   a poll succeeded again after failures
  meter.offline         no valid reading for offline_after_s; pile unmetered
  meter.online          readings again after offline (identity is re-checked)
  meter.wiring_swapped  the pile charges but its meter stays flat while another rises
  site.unmetered_load   main meter exceeds the sum of pile meters beyond tolerance (the
                        configured one plus the meters' energy steps: see _balance)
  site.load_balanced    the difference is back within tolerance
  pile.metered / pile.unmetered   the pile's state changed (with the reasons)
"""

from pilecore import profile as _profile

DEFAULTS = {"offline_after_s": 120, "verify_serial_s": 3600, "idle_power_w": 50.0, "swap_window_s": 120}

# A first-read binding needs the same serial read twice, this many seconds apart: one reply,
# however well-formed, may come from a rogue or confused responder (issue 9, defect #3).
BIND_CONFIRM_S = 30


MAIN_KEY = "_main"  # the main meter's key in SiteGuard.steps (pilecore.site.MAIN)


def _energy_step(prof):
    """A profile's energy step in Wh at a transformer ratio of 1 (1 when it names no energy)."""
    if "energy_import" not in prof.get("values", {}):
        return 1
    return _profile.energy_step_wh(prof)


def _ceil(x):
    n = int(x)
    return n if n >= x else n + 1


def decode_identity(ident, regs):
    """The identity string of a meter from the registers of its identity table (for a DL/T 645
    meter: the BCD bytes of its identity item, e.g. the meter number 0x04000402)."""
    if "di" in ident:
        digits = []
        for i in range(len(regs) - 1, -1, -1):
            b = regs[i]
            if b >> 4 > 9 or b & 0xF > 9:
                raise ValueError("identity item holds a non-BCD byte 0x%02x" % b)
            digits.append(chr(48 + (b >> 4)))
            digits.append(chr(48 + (b & 0xF)))
        return "".join(digits).lstrip("0") or "0"
    typ = ident.get("type")
    if typ in ("u16", "u32", "u64"):
        v = 0
        for r in regs:
            v = (v << 16) | r
        return str(v)
    if typ == "ascii":
        chars = []
        for r in regs:
            for b in (r >> 8, r & 0xFF):
                if 32 < b < 127:
                    chars.append(chr(b))
                elif b not in (0, 32):
                    raise ValueError("identity register holds non-text byte 0x%02x" % b)
        return "".join(chars)
    if typ == "bcd":
        digits = []
        for r in regs:
            for shift in (12, 8, 4, 0):
                d = (r >> shift) & 0xF
                if d > 9:
                    raise ValueError("identity register holds a non-BCD digit")
                digits.append(chr(48 + d))
        return "".join(digits)
    raise ValueError("profile identity has no readable register (kind %r)" % ident.get("kind"))


def identity_read(ident):
    """(function, register, count) to read a profile's identity, or None if it has none."""
    if ident and ident.get("kind") == "serial" and "di" in ident:
        return 0x11, ident["di"], ident["bytes"]  # a DL/T 645 read of the identity item
    if not ident or ident.get("kind") != "serial" or "register" not in ident:
        return None
    count = ident.get("count")
    if count is None:
        count = {"u16": 1, "u32": 2, "u64": 4}.get(ident.get("type"), 1)
    return ident.get("function", 3), ident["register"], count


class PileGuard:
    """The run-time state of one pile's meter; see SiteGuard."""

    def __init__(self, pile, prof, params, state=None):
        self.id = pile["id"]
        m = pile["meter"]
        self.where = "%s/%s" % (m["bus"], m["address"])
        self.profile = prof
        self.params = params
        self.max_w = int(pile.get("max_power_kw", 7.0) * 1000)
        self.configured_serial = m.get("serial", "")
        self.has_serial = identity_read(prof.get("identity")) is not None
        st = state or {}
        self.bound = st.get("bound") or self.configured_serial or None
        self.bound_by = st.get("bound_by") or ("config" if self.configured_serial else None)
        self.last_wh = st.get("last_wh")
        self.last_wh_t = st.get("last_wh_t")
        if self.configured_serial and self.bound != self.configured_serial:
            # Commissioning (the config) wins over a binding learned earlier; the energy
            # baseline learned with that other binding is not this meter's (a rogue's 0 Wh
            # would make every true reading an energy jump), so it goes with it.
            self.bound, self.bound_by = self.configured_serial, "config"
            self.last_wh = self.last_wh_t = None
        # Fail-safe: at start nothing is verified yet, so every pile starts unmetered.
        self.reasons = ["unverified"]
        self.last_ok = None
        self.started = None
        self.offline = False
        self.identity_due_at = 0
        self.last_power = None
        self.charging = None
        self.comm_ok = True
        self.candidate = None  # (serial, t) of a first read awaiting its confirming read

    def snapshot(self):
        return {"bound": self.bound, "bound_by": self.bound_by, "last_wh": self.last_wh, "last_wh_t": self.last_wh_t}

    @property
    def metered(self):
        return not self.reasons

    def _event(self, out, now, typ, **kw):
        ev = {"type": typ, "pile": self.id, "t": now, "meter": self.where}
        for k in kw:
            ev[k] = kw[k]
        out.append(ev)

    def _set(self, out, now, reason, on):
        before = self.metered
        if on and reason not in self.reasons:
            self.reasons.append(reason)
        elif not on and reason in self.reasons:
            self.reasons.remove(reason)
        if before != self.metered:
            self._event(out, now, "pile.metered" if self.metered else "pile.unmetered", reasons=list(self.reasons))

    def identity_due(self, now):
        # A meter without a serial register is identified by answering at its address: its
        # readings verify it (on_reading), there is nothing else to read.
        return self.has_serial and now >= self.identity_due_at

    def on_identity(self, now, ident, error=None):
        """Result of an identity read: the identity string, or None with an error text."""
        out = []
        self.identity_due_at = now + self.params["verify_serial_s"]
        if ident is None:
            self._event(out, now, "meter.identity_failed", reason=error or "no answer")
            self.identity_due_at = now + 60
            return out
        if not self.has_serial:
            ident = "address:" + self.where
        if self.bound is None and self.has_serial:
            if not self._confirmed(out, now, ident):
                return out
            self.bound, self.bound_by = ident, "first-read"
            self._event(out, now, "meter.bound", serial=ident, source="read twice (config serial empty)")
        elif self.bound is None:
            self.bound, self.bound_by = ident, "first-read"
            self._event(out, now, "meter.bound", serial=ident, source="first read (config serial empty)")
        if ident != self.bound:
            self._event(out, now, "meter.swapped", expected=self.bound, found=ident)
            self._set(out, now, "swapped", True)
            return out
        self._event(out, now, "meter.verified", serial=ident, energy_wh=self.last_wh)
        for reason in ("swapped", "unverified", "energy_backwards"):
            self._set(out, now, reason, False)
        return out

    def _confirmed(self, out, now, ident):
        """True when `ident` was also read at least BIND_CONFIRM_S earlier (and every read in
        between agreed); otherwise remember it and ask for the confirming read."""
        cand = self.candidate
        if cand is not None and cand[0] != ident:
            self._event(
                out, now, "meter.identity_failed", reason="serial read %r, then %r: not bound" % (cand[0], ident)
            )
            cand = None
        if cand is None or now < cand[1]:  # first read, or the clock stepped back
            self.candidate = (ident, now)
            self.identity_due_at = now + BIND_CONFIRM_S
            return False
        if now - cand[1] < BIND_CONFIRM_S:
            self.identity_due_at = cand[1] + BIND_CONFIRM_S
            return False
        self.candidate = None
        return True

    def on_failure(self, now, reason):
        """A poll cycle failed (after its retry): one event per streak of failures."""
        out = []
        if self.comm_ok:
            self.comm_ok = False
            self._event(out, now, "meter.comm_error", reason=reason)
        if self.started is None:
            self.started = now
        return out

    def on_reading(self, now, reading, faults):
        out = []
        if not self.comm_ok:
            self.comm_ok = True
            self._event(out, now, "meter.comm_restored")
        for name, why in faults:
            self._event(out, now, "meter.fault", value=name, reason=why)
        if self.started is None:
            self.started = now
        # One value outside its range says the reply cannot be trusted: none of its values is
        # a reading (DESIGN.md rule 5), and the pile is unmetered until a clean reading.
        self._set(out, now, "fault", bool(faults))
        if faults:
            return out, False
        wh = reading.get("energy_wh")
        if "power_w" in reading:
            self.last_power = reading["power_w"]
        if wh is None:
            return out, False
        if self.last_wh is not None:
            if wh < self.last_wh:
                self._event(out, now, "meter.energy_backwards", before_wh=self.last_wh, after_wh=wh)
                self._set(out, now, "energy_backwards", True)
                self.identity_due_at = now  # who is this meter now?
            else:
                dt = now - self.last_wh_t if self.last_wh_t is not None and now >= self.last_wh_t else 0
                limit = 2 * self.max_w * dt // 3600 + 10 if dt > 0 else None
                if limit is not None and wh - self.last_wh > limit and self.last_ok is not None:
                    self._event(
                        out, now, "meter.energy_jump", before_wh=self.last_wh, after_wh=wh, seconds=dt, limit_wh=limit
                    )
                    return out, False
        self.last_wh, self.last_wh_t = wh, now
        self.last_ok = now
        if self.offline:
            self.offline = False
            self._event(out, now, "meter.online")
            self.identity_due_at = now  # after every reconnect: is it the same meter?
            self._set(out, now, "unverified", True)
            self._set(out, now, "offline", False)
        if not self.has_serial and ("unverified" in self.reasons or "energy_backwards" in self.reasons):
            out += self.on_identity(now, "")
        return out, True

    def tick(self, now):
        out = []
        since = self.last_ok if self.last_ok is not None else self.started
        if since is None:
            self.started = now
            return out
        if now < since:  # clock stepped back: restart the window
            self.last_ok = now if self.last_ok is not None else None
            self.started = now
            return out
        if not self.offline and now - since >= self.params["offline_after_s"]:
            self.offline = True
            self._event(out, now, "meter.offline", silent_s=now - since)
            self._set(out, now, "offline", True)
        return out


class SiteGuard:
    """All piles of a site, the main-meter balance and swapped-wiring detection."""

    def __init__(self, cfg, state=None):
        params = dict(DEFAULTS)
        for k in cfg.get("metering", {}):
            if k in params:
                params[k] = cfg["metering"][k]
        self.params = params
        st = state or {}
        piles_state = st.get("piles", {})
        self.piles = {}
        self.order = []
        for pile in cfg["pile"]:
            prof = cfg["profiles"][pile["meter"]["profile"]]
            self.piles[pile["id"]] = PileGuard(pile, prof, params, piles_state.get(pile["id"]))
            self.order.append(pile["id"])
        self.main = cfg.get("main_meter")
        # each meter's energy step (Wh): a counter reading is truncated to it (set_energy_step)
        self.steps = dict([(pid, _energy_step(self.piles[pid].profile)) for pid in self.order])
        if self.main is not None:
            self.steps[MAIN_KEY] = _energy_step(cfg["profiles"].get(self.main["profile"], {}))
        self.main_window = []  # [(t, main_wh, {pile: wh})]
        self.unbalanced = False
        self.swap_since = {}
        self.swap_pairs = {}  # suspect pile -> piles whose meters drew instead
        self.interlock_mode = dict([(p["id"], p.get("interlock", "report")) for p in cfg["pile"]])
        self.overrides = {}

    def snapshot(self):
        return {"piles": dict([(pid, self.piles[pid].snapshot()) for pid in self.order])}

    # ------------------------------------------------------------ inputs

    def reading(self, now, pile_id, reading, faults=()):
        events, accepted = self.piles[pile_id].on_reading(now, reading, faults)
        return events, accepted

    def failure(self, now, pile_id, reason):
        return self.piles[pile_id].on_failure(now, reason)

    def identity(self, now, pile_id, ident, error=None):
        return self.piles[pile_id].on_identity(now, ident, error)

    def charging(self, pile_id, state):
        """The pile's own charging indication (plug/contactor), when the site has one."""
        self.piles[pile_id].charging = state

    def set_energy_step(self, key, step_wh):
        """The energy step of a pile's meter (`key` its pile id) or of the main meter
        (MAIN_KEY), once the transformer ratios its energy is scaled by are known."""
        if key in self.steps and step_wh:
            self.steps[key] = step_wh

    def main_reading(self, now, main_wh):
        """A reading of the site main meter's total energy (Wh)."""
        if self.main is None or main_wh is None:
            return []
        snap = {}
        for pid in self.order:
            g = self.piles[pid]
            if g.last_wh is None or g.offline:
                self.main_window = []  # a blind pile makes the comparison meaningless
                return []
            snap[pid] = g.last_wh
        if self.main_window and now < self.main_window[-1][0]:
            self.main_window = []
        self.main_window.append((now, main_wh, snap))
        return self._balance(now)

    def _balance(self, now):
        out = []
        win = self.main["window_s"]
        while len(self.main_window) > 2 and now - self.main_window[1][0] >= win:
            self.main_window.pop(0)
        t0, m0, p0 = self.main_window[0]
        if now - t0 < win:
            return out
        _, m1, p1 = self.main_window[-1]
        d_main = m1 - m0
        d_piles = 0
        for pid in p1:
            d_piles += p1[pid] - p0.get(pid, p1[pid])
        diff = d_main - d_piles
        hours_x1000 = (now - t0) * 1000 // 3600
        tol = max(int(self.main["tolerance_w"] * hours_x1000) // 1000, int(d_main * self.main["tolerance_pct"]) // 100)
        # Every reading is a counter truncated to its meter's energy step, so a difference of
        # two readings is off by less than one step: the main meter's window may show up to a
        # step more than was drawn and each pile's up to a step less.  That much difference is
        # quantisation, never a load (a 100 Wh main meter against a 75 Wh tolerance would
        # otherwise raise and clear the alarm all day on a site with nothing unmetered).
        quant = 0
        for key in self.steps:
            if key == MAIN_KEY or key in p1:
                quant += _ceil(self.steps[key])
        # raised above tolerance + quantisation, cleared at or below the tolerance: the band
        # between keeps a load whose window fills or empties from flapping on the steps
        if diff > tol + quant and not self.unbalanced:
            self.unbalanced = True
            out.append(
                {
                    "type": "site.unmetered_load",
                    "t": now,
                    "main_wh": d_main,
                    "piles_wh": d_piles,
                    "difference_wh": diff,
                    "tolerance_wh": tol,
                    "quantisation_wh": quant,
                    "window_s": now - t0,
                }
            )
        elif diff <= tol and self.unbalanced:
            self.unbalanced = False
            out.append(
                {
                    "type": "site.load_balanced",
                    "t": now,
                    "difference_wh": diff,
                    "tolerance_wh": tol,
                    "quantisation_wh": quant,
                }
            )
        return out

    def tick(self, now):
        """Time-driven checks: offline meters, swapped wiring.  Returns events."""
        out = []
        for pid in self.order:
            out += self.piles[pid].tick(now)
        out += self._wiring(now)
        return out

    def _wiring(self, now):
        """A pile that charges (by its own indication) while its meter stays below idle power,
        while another meter whose pile is not charging draws power, for swap_window_s."""
        out = []
        idle = self.params["idle_power_w"]
        drawing = [
            pid
            for pid in self.order
            if self.piles[pid].last_power is not None
            and self.piles[pid].last_power > idle
            and self.piles[pid].charging is False
        ]
        for pid in self.order:
            g = self.piles[pid]
            suspect = g.charging is True and g.last_power is not None and g.last_power <= idle and len(drawing) > 0
            if not suspect:
                self.swap_since.pop(pid, None)
                if self.swap_pairs.pop(pid, None) is not None:
                    self._refresh_wiring(out, now)
                continue
            since = self.swap_since.setdefault(pid, now)
            if now < since:
                self.swap_since[pid] = now
            elif now - since >= self.params["swap_window_s"] and pid not in self.swap_pairs:
                self.swap_pairs[pid] = list(drawing)
                g._event(out, now, "meter.wiring_swapped", other_meters=list(drawing), power_w=g.last_power)
                self._refresh_wiring(out, now)
        return out

    def _refresh_wiring(self, out, now):
        flagged = []
        for suspect in self.swap_pairs:
            flagged.append(suspect)
            flagged += self.swap_pairs[suspect]
        for pid in self.order:
            self.piles[pid]._set(out, now, "wiring", pid in flagged)

    # ------------------------------------------------------------ outputs

    def identity_due(self, now):
        """Piles whose meter identity should be read now."""
        return [pid for pid in self.order if self.piles[pid].identity_due(now) and not self.piles[pid].offline]

    def override(self, pid, mode):
        """A technician's interlock override: "on", "off", or "auto" (the guard decides again).

        Returns (ok, message); the caller audits it and then drives the relays (interlocks()).
        """
        if pid not in self.piles:
            return False, "no pile %s (piles: %s)" % (pid, ", ".join(self.order))
        if self.interlock_mode[pid] != "relay":
            return False, 'pile %s has interlock = "report": there is no relay or coil to switch' % pid
        if mode == "auto":
            self.overrides.pop(pid, None)
        elif mode in ("on", "off"):
            self.overrides[pid] = mode == "on"
        else:
            return False, "mode is on, off or auto"
        return True, "pile %s interlock %s" % (pid, mode)

    def interlocks(self):
        """{pile: True (enable) / False (switch off)} for piles in relay mode.

        Fail-safe: a pile is enabled only while its meter is verified and metering; a manual
        override (audited by the caller) wins until cleared.
        """
        out = {}
        for pid in self.order:
            if self.interlock_mode[pid] != "relay":
                continue
            if pid in self.overrides:
                out[pid] = self.overrides[pid]
            else:
                out[pid] = self.piles[pid].metered
        return out

    def status(self, pid):
        g = self.piles[pid]
        return {
            "pile": pid,
            "metered": g.metered,
            "reasons": list(g.reasons),
            "serial": g.bound,
            "bound_by": g.bound_by,
            "energy_wh": g.last_wh,
            "last_ok": g.last_ok,
            "offline": g.offline,
        }
