// Signs a few chained messages with pilecore's envelope and pure-Python ECDSA on the official
// MicroPython WebAssembly build and prints them as JSON, for a CPython test to verify with
// `cryptography`.   node tests/mpy/sign_jws.mjs
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
let out = "";
const mp = await loadMicroPython({ heapsize: 64 * 1024 * 1024, stdout: (s) => { out += s + "\n"; } });
mp.FS.mkdirTree("/lib/pilecore");
const src = path.join(root, "firmware", "pilecore");
for (const name of fs.readdirSync(src)) {
  if (name.endsWith(".py")) mp.FS.writeFile("/lib/pilecore/" + name, fs.readFileSync(path.join(src, name)));
}
mp.runPython(`
import sys, json
sys.path.insert(0, "/lib")
from pilecore import ecdsa, envelope
d = ecdsa.private_key_from_seed(b"a key made on MicroPython for the interop test, 48+ bytes")
pub = ecdsa.public_key(d)
kid = envelope.key_id(ecdsa.spki_der(pub))
chain = envelope.Chain("ESP-1", "site-x", kid, lambda m: ecdsa.sig_raw(*ecdsa.sign(d, m)), 1)
msgs = []
for i, kind in enumerate(("birth", "telemetry", "event")):
    p = chain.prepare(kind, {"i": i, "power_w": 7012.5, "text": "\\u4e2d"}, 1764150000 + i, "none")
    chain.commit(p)
    msgs.append(p.jws)
print(json.dumps({"pem": ecdsa.spki_pem(pub), "messages": msgs}))
`);
process.stdout.write(out);
