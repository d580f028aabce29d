// Milliseconds per ES256 signature with pilecore's pure-Python ECDSA on the official MicroPython
// WebAssembly build (used by `pilegate bench telemetry`).   node tests/mpy/bench_sign.mjs [N]
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const n = Number(process.argv[2] || 20);
let out = "";
const mp = await loadMicroPython({ heapsize: 64 * 1024 * 1024, stdout: (s) => { out += s + "\n"; } });
mp.FS.mkdirTree("/lib/pilecore");
const src = path.join(root, "firmware", "pilecore");
for (const name of fs.readdirSync(src)) {
  if (name.endsWith(".py")) mp.FS.writeFile("/lib/pilecore/" + name, fs.readFileSync(path.join(src, name)));
}
mp.runPython(`
import sys, time
sys.path.insert(0, "/lib")
from pilecore import ecdsa
d = ecdsa.private_key_from_seed(b"bench seed for the pure python signer, forty+ bytes")
msg = b"x" * 3000
ecdsa.sign(d, msg)
t0 = time.ticks_ms()
for i in range(${n}):
    ecdsa.sign(d, msg)
print("ms_per_sign", time.ticks_diff(time.ticks_ms(), t0) / ${n})
`);
process.stdout.write(out);
