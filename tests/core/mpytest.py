"""The little of pytest that core tests need, in a form MicroPython also runs.

Core test modules import only pilecore and this file, so the same module runs under pytest on
CPython and under tests/mpy/run.mjs on MicroPython.
"""


class raises:
    """Context manager: the block must raise `exc` (or a subclass).

    On success the exception is kept in `.value`; `match` (optional) must be a substring of
    its message.  Fails with AssertionError when nothing, or something else, was raised.
    """

    def __init__(self, exc, match=None):
        self.exc = exc
        self.match = match
        self.value = None

    def __enter__(self):
        return self

    def __exit__(self, etype, value, tb):
        if etype is None:
            raise AssertionError("expected %s, nothing was raised" % self.exc.__name__)
        if not issubclass(etype, self.exc):
            return False
        if self.match is not None and self.match not in str(value):
            raise AssertionError("%r does not contain %r" % (str(value), self.match))
        self.value = value
        return True


def approx(a, b, rel=1e-6, abs_=1e-9):
    """True when a and b agree within a relative or absolute tolerance."""
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def new_key():
    """A throw-away P-256 private key made at run time: tests keep no key material in files.

    `random` rather than os.urandom because MicroPython's WebAssembly build has no urandom;
    these keys protect nothing.
    """
    import random

    from pilecore import ecdsa

    return ecdsa.private_key_from_seed(bytes([random.getrandbits(8) for _ in range(48)]))
