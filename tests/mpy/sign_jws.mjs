// Signs a few chained messages with pilecore's envelope and pure-Python ECDSA on the official
// MicroPython WebAssembly build and prints them as JSON, for a CPython test to verify with
// `cryptography`.   node tests/mpy/sign_jws.mjs
import { loadCore } from "./loadcore.mjs";

const { mp, state } = await loadCore();
mp.runPython(`
import json
from pilecore import ecdsa, envelope
import random
d = ecdsa.private_key_from_seed(bytes([random.getrandbits(8) for _ in range(48)]))
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
process.stdout.write(state.output);
