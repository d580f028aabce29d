// Runs the portable-core test modules (tests/core/test_*.py) on the official MicroPython
// WebAssembly build, the same files pytest runs on CPython.
//
//   node tests/mpy/run.mjs [test_file.py ...]
//
// The core package (firmware/pilecore) and the test modules are copied into MicroPython's
// in-memory file system; every top-level function named test_* is called with no arguments.
// Prints one line per failure (with MicroPython's traceback) and then exactly one summary line:
//   MicroPython <version>: N passed, M failed
// Exit status: 0 when M == 0 and N > 0, 1 otherwise, 2 when the runtime cannot be loaded.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
let loadMicroPython;
try {
  ({ loadMicroPython } = await import("@micropython/micropython-webassembly-pyscript"));
} catch (err) {
  console.error("MicroPython runtime missing: run 'make setup' (npm ci) first: " + err.message);
  process.exit(2);
}

let out = "";
const mp = await loadMicroPython({
  heapsize: 64 * 1024 * 1024,
  stdout: (s) => { out += s + "\n"; process.stdout.write(s + "\n"); },
  stderr: (s) => process.stderr.write(s + "\n"),
});

function copyTree(src, dst, filter) {
  mp.FS.mkdirTree(dst);
  for (const name of fs.readdirSync(src).sort()) {
    const s = path.join(src, name);
    const d = dst + "/" + name;
    if (fs.statSync(s).isDirectory()) {
      if (name !== "__pycache__") copyTree(s, d, filter);
    } else if (filter(name)) {
      mp.FS.writeFile(d, fs.readFileSync(s));
    }
  }
}

const isPy = (n) => n.endsWith(".py");
const isData = (n) => n.endsWith(".py") || n.endsWith(".json") || n.endsWith(".toml");
copyTree(path.join(root, "firmware", "pilecore"), "/lib/pilecore", isPy);
copyTree(path.join(root, "firmware", "pilefw"), "/lib/pilefw", isPy);
copyTree(path.join(root, "tests", "core"), "/tests", isData);

let files = process.argv.slice(2).map((f) => path.basename(f));
if (files.length === 0) {
  files = fs.readdirSync(path.join(root, "tests", "core"))
    .filter((n) => n.startsWith("test_") && n.endsWith(".py")).sort();
}

const driver = `
import sys, gc
sys.path.insert(0, "/tests")
sys.path.insert(0, "/lib")
_passed = 0
_failed = 0
for _fname in ${JSON.stringify(files)}:
    _modname = _fname[:-3]
    try:
        _mod = __import__(_modname)
    except Exception as _e:
        _failed += 1
        print("FAILED %s (import)" % _fname)
        sys.print_exception(_e)
        continue
    for _name in sorted(dir(_mod)):
        if not _name.startswith("test_"):
            continue
        _fn = getattr(_mod, _name)
        if not callable(_fn):
            continue
        try:
            _fn()
            _passed += 1
        except Exception as _e:
            _failed += 1
            print("FAILED %s::%s" % (_fname, _name))
            sys.print_exception(_e)
        gc.collect()
_v = sys.implementation.version
print("MicroPython %d.%d.%d: %d passed, %d failed" % (_v[0], _v[1], _v[2], _passed, _failed))
`;
try {
  mp.runPython(driver);
} catch (err) {
  console.error("MicroPython driver crashed: " + err);
  process.exit(1);
}
const m = out.match(/MicroPython [0-9.]+: (\d+) passed, (\d+) failed/);
if (!m) process.exit(1);
process.exit(Number(m[2]) === 0 && Number(m[1]) > 0 ? 0 : 1);
