# pilegate ESP32 main: load /config.json, build the gateway, run it until `repl` ends the loop.
import time

from pilefw import app as _app
from pilefw.hw import DeviceHw

CONFIG = "/config.json"


def main():
    hw = DeviceHw()
    try:
        cfg, digest = _app.load_config_file(CONFIG)
    except _app.ConfigError as e:
        # Nothing can run on a bad configuration: say exactly what is wrong, again and again,
        # so a technician who plugs in later still sees it.  The watchdog is not started yet.
        while True:
            print("pilegate: %s is not usable:" % CONFIG)
            for key, msg in e.problems:
                print("  %s: %s" % (key, msg))
            time.sleep(30)
    try:
        gw = _app.App(cfg, hw, digest)
    except _app.StartRefused as e:
        # A full or failing flash before the start counter is stored: say why, then retry.
        print("pilegate: refusing to start: %s; retrying in 30 s" % e)
        time.sleep(30)
        hw.reset()
        return
    except MemoryError as e:
        # Too little heap to build the gateway at all (docs/esp32.md, Out of memory): say so
        # on the console and start again; the outbox and the chain are on flash, untouched.
        print("pilegate: out of memory while starting (%s); restarting in 10 s" % e)
        time.sleep(10)
        hw.reset()
        return
    try:
        gw.run()  # returns after `repl`, or after an out-of-memory restart was asked for
    except Exception as e:  # no silent stop: App.run logged and stored what it could
        import sys

        sys.print_exception(e)
        hw.reset()  # start again, as systemd restarts the Pi gateway


main()
