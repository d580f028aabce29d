"""The ESP32's Modbus RTU master over machine.UART with an RS-485 direction pin.

One `RtuMaster` per bus performs the transactions the core `BusScheduler` hands out:

1. waits until the line has been silent for 3.5 character times (1.75 ms above 19200 baud, as
   the Modbus serial line spec fixes), then discards any stale bytes (a late reply);
2. drives DE high, writes the request, calls `uart.flush()` so the last stop bit has left the
   shift register, and only then releases DE (releasing early truncates the frame's CRC);
3. reads the reply into a preallocated buffer until the expected length (or the 5 bytes of an
   exception response) has arrived or the transaction's timeout expires;
4. checks it with the core's parser: CRC first, then address, function and length.

No allocation happens per transaction except what the UART driver does; the reply is parsed in
place through a memoryview.
"""

from pilecore import modbus
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
        if de is not None:
            de.value(0)  # receive by default: never hold the bus

    def _quiet(self):
        wait = self.gap_us - ticks_diff(ticks_us(), self.last_us)
        if wait > 0:
            sleep_us(wait)
        while self.uart.any():  # a late answer to an earlier request
            self.uart.read()

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

    def _receive(self, expected, timeout_ms):
        n = 0
        start = ticks_ms()
        while n < expected:
            if ticks_diff(ticks_ms(), start) >= timeout_ms:
                break
            if not self.uart.any():
                sleep_ms(1)
                continue
            k = self.uart.readinto(self.view[n:expected])
            if k:
                n += k
                if n >= 2 and self.buf[1] & 0x80:
                    expected = 5  # exception response: addr, fc|0x80, code, CRC
        self.rx_bytes += n
        return n

    def transact(self, txn):
        """Perform a core scheduler Txn; return (result code, payload, elapsed ms)."""
        self._quiet()
        t0 = ticks_ms()
        self._send(txn.request())
        n = self._receive(txn.response_len(), txn.timeout_ms)
        self.last_us = ticks_us()
        elapsed = ticks_diff(ticks_ms(), t0)
        if n == 0:
            return modbus.E_TIMEOUT, None, elapsed
        frm = self.view[:n]
        if txn.function == 5:
            code, payload = modbus.parse_write_coil_response(frm, txn.address, txn.register, txn.value)
        else:
            code, payload = modbus.parse_read_response(frm, txn.address, txn.function, txn.count)
        if code == modbus.E_SHORT:
            # a reply that stopped short is either a damaged frame or a device that gave up
            code = modbus.E_CRC if n >= 4 else modbus.E_TIMEOUT
        return code, payload, elapsed
