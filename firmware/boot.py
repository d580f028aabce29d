# pilegate ESP32 boot: minimal on purpose; main.py starts the gateway.
#
# Production builds give UART0 to the technician console: Ctrl-C must reach the console as a
# byte (it clears the line there) instead of interrupting the firmware.  A developer board
# keeps Ctrl-C for the REPL when the flag file /dev-repl exists (create it over the REPL or
# with `mpremote touch :dev-repl`; the console's `repl` command is the only other way back).
import os

import micropython

try:
    os.stat("/dev-repl")
except OSError:
    micropython.kbd_intr(-1)
