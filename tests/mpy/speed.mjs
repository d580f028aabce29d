// CPU cost of the ESP32 gateway's heavy steps on the MicroPython WebAssembly VM, next to a
// reference loop whose time on real boards is published, for the ESP32 estimates in
// docs/esp32.md ("Speed on a real ESP32").        node tests/mpy/speed.mjs
// Prints one JSON line: milliseconds per item on this VM.
import { loadCore } from "./loadcore.mjs";

const { mp, state } = await loadCore();
mp.runPython(`
import time, json, random
from pilecore import ecdsa, jsonc, pinhash

def ms(fn, n=1):
    fn()
    t0 = time.ticks_us()
    for _ in range(n):
        fn()
    return time.ticks_diff(time.ticks_us(), t0) / 1000 / n

def leibniz():
    # the published reference loop (1,000,000 iterations; see docs/esp32.md)
    x = 1
    pi = 1
    for i in range(2, 1000000 + 2):
        x = x * -1
        pi = pi + (x / (2 * i - 1))
    return pi * 4

d = ecdsa.private_key_from_seed(bytes([random.getrandbits(8) for _ in range(48)]))
msg = b"x" * 3000
record = pinhash.make_record("482916", b"saltsalt12345678")
body = {"interval_s": 30, "piles": [{"pile": "P%02d" % i, "serial": "2026%04d" % i, "metered": True,
        "t": 1764150000, "energy_wh": 1234567 + i, "power_w": 7012.5, "voltage_v": [230.1, 229.8, 231.0],
        "current_a": [10.2, 10.1, 10.3], "frequency_hz": 50.01, "power_factor": 0.99} for i in range(16)]}
out = {
    "leibniz_1e6": ms(leibniz),
    "es256_sign": ms(lambda: ecdsa.sign(d, msg), 10),
    "pbkdf2_login": ms(lambda: pinhash.check("482916", record)),
    "telemetry_json_16": ms(lambda: jsonc.dumps(body), 20),
    "iterations": pinhash.DEFAULT_ITERATIONS,
}
print(json.dumps(out))
`);
process.stdout.write(state.output);
