"""The ESP32's RS-485 master over machine.UART with a direction pin: Modbus RTU and DL/T 645.

One `RtuMaster` per bus performs the transactions the core `BusScheduler` hands out, of either
protocol: the transaction builds its own request frame and checks its own reply (pilecore
scheduler.Txn), this module only moves the bytes, with the same quiet-time rules for both:

1. waits until the line has been silent for 3.5 character times (1.75 ms above 19200 baud, as
   the Modbus serial line spec fixes), then discards any stale bytes (a late reply);
2. drives DE high, writes the request, calls `uart.flush()` so the last stop bit has left the
   shift register, and only then releases DE (releasing early truncates the frame's CRC);
3. reads the reply into a preallocated buffer until the frame is complete (the transaction
   says how long it is from what has arrived: a Modbus exception is 5 bytes, a DL/T 645
   frame's length follows its header) or the transaction's timeout expires;
4. checks it with the transaction's parser (`Txn.parse`): CRC or checksum first, then that it
   answers the request (for Modbus the core's `check_reply`: device address, function code,
   byte count, register count, exactly as the Pi port checks it); a complete frame that the
   core's `scheduler.LateReplies` names an earlier request's late reply is dropped and the
   wait goes on (docs/metering.md, "Late replies").

No allocation happens per transaction except what the UART driver does; the reply is parsed in
place through a memoryview.
"""

from pilecore import modbus
from pilecore.scheduler import LateReplies
from pilefw.ticks import sleep_ms, sleep_us, ticks_diff, ticks_ms, ticks_us


def frame_gap_us(baud, parity="N", stopbits=1):
    """3.5 character times, or the spec's fixed 1750 us above 19200 baud."""
    if baud > 19200:
        return 1750
    bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
    return (35 * bits * 1000000) // (10 * baud)


class RtuMaster:
    """See the module docstring.  `uart` and `de` follow machine.UART / machine.Pin."""

    def __init__(self, uart, de, baud, parity="N", stopbits=1):
        self.uart = uart
        self.de = de
        self.gap_us = frame_gap_us(baud, parity, stopbits)
        self.buf = bytearray(260)
        self.view = memoryview(self.buf)
        self.last_us = ticks_us()
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.late = LateReplies()  # requests whose replies are still due (the core's rule)
        self.discarded = 0  # late replies dropped during the current wait
        self._t_ms = 0  # a millisecond count that never wraps (ESP32 ticks do), for self.late
        self._last_tick = ticks_ms()
        if de is not None:
            de.value(0)  # receive by default: never hold the bus

    def _ms(self):
        t = ticks_ms()
        self._t_ms += ticks_diff(t, self._last_tick)
        self._last_tick = t
        return self._t_ms

    def _quiet(self):
        """Wait for the line's quiet time, then discard any input (late replies); returns how
        many late replies were discarded (the CRC-valid frames in it, at least 1 if any)."""
        wait = self.gap_us - ticks_diff(ticks_us(), self.last_us)
        if wait > 0:
            sleep_us(wait)
        stale = b""
        while self.uart.any():  # a late answer to an earlier request
            chunk = self.uart.read()
            if chunk:
                stale += chunk
        return modbus.late_replies_in(stale)

    def _send(self, frame):
        if self.de is not None:
            self.de.value(1)
        try:
            self.uart.write(frame)
            self.uart.flush()
        finally:
            if self.de is not None:
                self.de.value(0)
        self.tx_bytes += len(frame)

    def _receive(self, txn, request, timeout_ms):
        n = 0
        start = ticks_ms()
        limit = len(self.buf)
        while True:
            need = txn.reply_needed(self.buf, n)
            if need and n >= need:
                if self.late.claim(txn, request, bytes(self.view[:need])):
                    break
                # an earlier request's late reply: drop it, keep waiting for this one's
                self.discarded += 1
                self.rx_bytes += need
                self.buf[: n - need] = self.buf[need:n]
                n -= need
                continue
            if ticks_diff(ticks_ms(), start) >= timeout_ms:
                break
            if not self.uart.any():
                sleep_ms(1)
                continue
            end = need if need else min(limit, n + 16)  # header first, then the rest
            if end > limit:
                end = limit
            if end <= n:
                break
            k = self.uart.readinto(self.view[n:end])
            if k:
                n += k
        self.rx_bytes += n
        return n

    def transact(self, txn):
        """Perform a core scheduler Txn; return (result code, payload, elapsed ms)."""
        drained = self._quiet()
        self.late.before_send(self._ms(), drained)
        t0 = ticks_ms()
        request = txn.request()
        self._send(request)
        self.late.sent(txn, request)
        self.discarded = 0
        n = self._receive(txn, request, txn.timeout_ms)
        self.last_us = ticks_us()
        elapsed = ticks_diff(ticks_ms(), t0)
        if n == 0:
            if self.discarded:
                return modbus.E_LATE, None, elapsed
            self.late.timed_out(txn, self._ms())
            return modbus.E_TIMEOUT, None, elapsed
        code, payload = txn.parse(self.view[:n])
        if code == modbus.E_SHORT:
            # a reply that stopped short is either a damaged frame or a device that gave up
            code = modbus.E_CRC if n >= 4 else (modbus.E_LATE if self.discarded else modbus.E_TIMEOUT)
        return code, payload, elapsed
