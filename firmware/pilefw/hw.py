"""The ESP32's hardware behind the interface `pilefw.app.App` uses (see its docstring).

Only this module (and boot.py/main.py) imports `machine`, `network`, `ntptime`, `micropython`
and umqtt: the application itself runs on CPython against fakes.

Files on flash (all under ROOT unless the site configuration names another path):
    /config.json              the compiled site (`pilegate check --json site.toml`)
    /data/device.key          the device key (generated here at first start)
    /data/outbox/             the signed-message backlog
    /data/state/              core snapshot, replay guard, settings, start counter
    /data/wifi.json           {"ssid": "...", "password": "..."} (credentials, provisioned)
    /data/console.pin         the technician PIN record (pbkdf2-sha256$..., provisioned)
    CA, client certificate, MQTT password and platform key: the paths the site file names.
"""

import os
import time

import machine

from pilefw import ticks

ROOT = "/data"
PARITY = {"N": None, "E": 0, "O": 1}


class DeviceHw:
    """See the module docstring and pilefw.app."""

    root = ROOT

    def __init__(self):
        self.gmtime = time.gmtime
        self.ticks_ms = ticks.ticks_ms
        self.sleep_ms = ticks.sleep_ms
        self.urandom = os.urandom
        self._wlan = None
        self._wdt = None

    def time(self):
        return time.time()

    def uart(self, uart_id, baud, parity, stop, tx, rx):
        kw = {"baudrate": baud, "bits": 8, "parity": PARITY[parity], "stop": stop, "rxbuf": 512}
        if tx is not None:
            kw["tx"] = tx
        if rx is not None:
            kw["rx"] = rx
        return machine.UART(uart_id, **kw)

    def pin(self, n, out):
        return machine.Pin(n, machine.Pin.OUT if out else machine.Pin.IN)

    def wdt(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)
        return self._wdt

    def mem(self):
        import gc

        free = gc.mem_free()
        return free, free + gc.mem_alloc()

    def reset(self):
        machine.reset()

    def repl(self):
        """Give UART0 back to the REPL.  The watchdog cannot be stopped once started, so a timer
        keeps feeding it while a developer works in the REPL."""
        import micropython

        micropython.kbd_intr(3)
        wdt = self._wdt
        if wdt is not None:
            machine.Timer(0).init(period=10000, mode=machine.Timer.PERIODIC, callback=lambda t: wdt.feed())

    def console_port(self, uart_def):
        from pilefw.uart_console import StdioPort

        return StdioPort()

    # ------------------------------------------------------------ network and time

    def network_up(self):
        import network

        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        w = self._wlan
        if w.isconnected():
            return True
        try:
            import json

            with open(ROOT + "/wifi.json") as f:
                cred = json.load(f)
        except (OSError, ValueError):
            return False
        st = w.status()
        if st != network.STAT_CONNECTING:
            w.connect(cred["ssid"], cred.get("password", ""))
        return False

    def ntp_sync(self):
        try:
            import ntptime

            ntptime.settime()
            return True
        except Exception:
            return False

    # ------------------------------------------------------------ MQTT

    def mqtt_factory(self, mq, client_id, timeout_s):
        """factory() -> a umqtt.simple.MQTTClient for the site's broker: TLS with certificate
        and host-name verification unless the site allows a plain lab broker."""
        from umqtt import simple

        from pilefw.mqtt import CaptureTls, TimedSockets, parse_url

        tls, host, port = parse_url(mq["url"])
        if not isinstance(simple.socket, TimedSockets):
            simple.socket = TimedSockets(simple.socket, timeout_s)  # bounded connect and CONNACK
        user = mq.get("username")
        password = None
        if user and mq.get("password_file"):
            with open(mq["password_file"]) as f:
                password = f.read().strip()

        def factory():
            ssl = None
            if tls:
                import ssl as _ssl

                ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
                verify = mq.get("tls_verify", True) or not mq.get("allow_insecure", False)
                ctx.verify_mode = _ssl.CERT_REQUIRED if verify else _ssl.CERT_NONE
                if mq.get("ca_file"):
                    with open(mq["ca_file"], "rb") as f:
                        ctx.load_verify_locations(cadata=_der(f.read()))
                if mq.get("cert_file") and mq.get("key_file"):
                    ctx.load_cert_chain(mq["cert_file"], mq["key_file"])
                ssl = CaptureTls(ctx, timeout_s)
            return simple.MQTTClient(client_id, host, port, user, password, 0, ssl)

        return factory


def _der(pem):
    """The DER bytes of the first certificate in PEM text (load_verify_locations' cadata)."""
    import binascii

    text = pem.decode() if isinstance(pem, bytes) else pem
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----")
    if begin < 0 or end < 0:
        return pem
    body = text[begin + 27 : end].replace("\n", "").replace("\r", "")
    return binascii.a2b_base64(body)
