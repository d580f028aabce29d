// Milliseconds per ES256 signature with pilecore's pure-Python ECDSA on the official MicroPython
// WebAssembly build (used by `pilegate bench telemetry`).   node tests/mpy/bench_sign.mjs [N]
import { loadCore } from "./loadcore.mjs";

const n = Number(process.argv[2] || 20);
const { mp, state } = await loadCore();
mp.runPython(`
import time
from pilecore import ecdsa
import random
d = ecdsa.private_key_from_seed(bytes([random.getrandbits(8) for _ in range(48)]))
msg = b"x" * 3000
ecdsa.sign(d, msg)
t0 = time.ticks_ms()
for i in range(${n}):
    ecdsa.sign(d, msg)
print("ms_per_sign", time.ticks_diff(time.ticks_ms(), t0) / ${n})
`);
process.stdout.write(state.output);
