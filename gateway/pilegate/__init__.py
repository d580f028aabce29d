"""pilegate: the Raspberry Pi port of the pilegate gateway, and its command line."""

from pilecore import VERSION

__all__ = ["VERSION"]
