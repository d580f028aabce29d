"""The console's line discipline: terminal bytes in, whole lines out.

`LineEditor.step(b, out, echo)` takes one byte and returns what it completed:

    NOTHING    the byte was absorbed (typed, edited, swallowed); echo bytes, if any, in `out`
    LINE       CR or LF ended a line (CRLF counts once): `take()` gives its bytes, or None when
               it was longer than `max_line` (it was discarded; the rest up to the newline too)
    INTERRUPT  Ctrl-C: the pending line is cleared; what that means is the session's business

Backspace and DEL delete the last character (a whole UTF-8 sequence); ANSI escape sequences
(arrow keys) are swallowed; every other control byte is dropped.  The pending line never grows
past `max_line` bytes.  No I/O, no clock: the session (pilecore.console) decides what to echo
(nothing while a PIN is typed) and what a line means.
"""

NOTHING = 0
LINE = 1
INTERRUPT = 2


class LineEditor:
    """See the module docstring."""

    def __init__(self, max_line):
        self.max_line = max_line
        self.buf = bytearray(max_line)
        self.n = 0
        self.overflow = False
        self._cr = False
        self._esc = 0  # 0, 1 after ESC, 2 in CSI, 3 after ESC O
        self._esc_len = 0

    def pending(self):
        """The bytes typed so far on the current line (to redraw it after a prompt)."""
        return bytes(self.buf[: self.n])

    def had_input(self):
        return self.n > 0 or self.overflow

    def clear(self):
        self.n = 0
        self.overflow = False

    def take(self):
        """The line just ended: its bytes, or None when it overflowed.  Clears the editor."""
        line = None if self.overflow else bytes(self.buf[: self.n])
        self.clear()
        return line

    def step(self, b, out, echo):
        if self._esc and self._escape(b):
            return NOTHING
        if b == 13 or b == 10:
            if b == 10 and self._cr:
                self._cr = False
                return NOTHING
            self._cr = b == 13
            return LINE
        self._cr = False
        if b == 8 or b == 127:
            self._backspace(out, echo)
        elif b == 3:
            self.clear()
            return INTERRUPT
        elif b == 27:
            self._esc = 1
            self._esc_len = 0
        elif b >= 32:
            self._put(b, out, echo)
        return NOTHING

    def _escape(self, b):
        """Swallow an ANSI escape sequence; False when `b` ends it abnormally (process b)."""
        self._esc_len += 1
        if b < 32 or b == 127 or self._esc_len > 16:
            self._esc = 0
            return False
        if self._esc == 1:
            self._esc = 2 if b == 0x5B else (3 if b == 0x4F else 0)
        elif self._esc == 3 or 0x40 <= b <= 0x7E:
            self._esc = 0
        return True

    def _put(self, b, out, echo):
        if self.overflow:
            return
        if self.n >= self.max_line:
            self.overflow = True
            self.n = 0
            return
        self.buf[self.n] = b
        self.n += 1
        if echo:
            out.append(b)

    def _backspace(self, out, echo):
        if self.overflow or self.n == 0:
            return
        n = self.n - 1
        while n > 0 and (self.buf[n] & 0xC0) == 0x80:
            n -= 1
        self.n = n
        if echo:
            out += b"\x08 \x08"
