# ruff: noqa: F821 -- include/require/package are defined by MicroPython's manifest reader
# Frozen build of the pilegate ESP32 gateway (docs/esp32.md, "Frozen build"): the two packages
# and umqtt.simple are compiled into the MicroPython firmware image, so their bytecode stays
# in flash and costs no heap.  boot.py and main.py stay files on the board's file system.
#
#   make -C ports/esp32 BOARD=ESP32_GENERIC BOARD_VARIANT=SPIRAM FROZEN_MANIFEST=<this file>
#
# Not a module: `make firmware` skips it.  $(PORT_DIR) is MicroPython's own variable.
include("$(PORT_DIR)/boards/manifest.py")  # the port's own frozen modules (inisetup, ...)
require("umqtt.simple")  # from micropython-lib, as `mip install umqtt.simple` would
package("pilecore")  # paths are relative to this file's folder (MicroPython's manifestfile.py)
package("pilefw")
